"""Hook handles that are made together and removed together."""

from __future__ import annotations


class Hooks:
    """A group of torch hook handles (torch.utils.hooks.RemovableHandle, the handles of optimizer
    step hooks): `add` them as they are made, `remove()` them all at once, or `with hooks:` to
    remove them when the block ends, however it ends."""

    def __init__(self, handles=()):
        self._handles = list(handles)

    def add(self, handle):
        self._handles.append(handle)
        return handle

    def remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __len__(self):
        return len(self._handles)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


def when_update_begins(args: tuple, kwargs: dict, begins):
    """An optimizer step pre-hook (register_step_pre_hook) that calls begins() when the update begins:
    at once, or for step(closure) (Lightning, LBFGS), where forward, backward and clipping all run
    inside the optimizer's step, once the closure has returned the first time. Returns what a
    pre-hook returns: None, or the (args, kwargs) with the closure wrapped."""
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    if closure is None:
        begins()
        return None
    started = []

    def closure_then_begin(*a, **kw):
        result = closure(*a, **kw)
        if not started:
            started.append(True)
            begins()
        return result

    if "closure" in kwargs:
        return args, {**kwargs, "closure": closure_then_begin}
    return (args[0], closure_then_begin, *args[2:]), kwargs
