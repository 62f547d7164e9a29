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
