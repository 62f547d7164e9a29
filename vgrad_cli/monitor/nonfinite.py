"""The first non-finite value of a run: its step, the module and the direction.

On a logged step, from what the probe measured anyway: the forward finiteness of each row's
outputs (measure/finite.py), then the loss, then, going backward from the loss, the first row whose
δ (the gradient at its output: the NaN came from above it) or gradient (its own backward made it:
the parameter is named) is non-finite. Between logged steps only the step is known — a non-finite
loss, or a non-finite gradient (one fused norm per step) — and the next logged step says where the
model is non-finite by then. Steps a loss scaler skipped are the scaler's business, not this.
"""

from __future__ import annotations

import math


def _bad(v) -> bool:
    return isinstance(v, (int, float)) and not math.isfinite(v)


def locate(host: dict, probe, model) -> tuple[str, str | None, str] | None:
    """(direction, module or parameter path, where) of the first non-finite value of a measured
    step, or None when everything measured is finite."""
    names = [layer.name for layer in probe.layers]
    first = next((i for i, v in enumerate(host.get("_out") or []) if v), None)
    if first is not None:
        return "forward", names[first], f"forward output of `{names[first]}`"
    if _bad(host.get("loss")):
        return "forward", None, "the loss (every measured module's output is finite)"
    grads, deltas = host.get("grad_norm") or [], host.get("delta_norm") or []
    for i in reversed(range(len(names))):
        if i < len(deltas) and _bad(deltas[i]) and i not in probe.missing_delta:
            return "backward", names[i], f"the gradient at the output of `{names[i]}`"
        if i < len(grads) and _bad(grads[i]):
            name = _parameter(probe, model, i)
            return "backward", name, f"the gradient of `{name}`"
    return None


def _parameter(probe, model, row: int) -> str:
    """The first parameter of a row whose gradient norm is non-finite (a host read of this rank's
    norms, on this bad step only); the row's name when this rank's shards are all finite."""
    from ..measure.distributed import clean_name

    idx = (probe.param_layer == row).nonzero().flatten()
    norms = probe.param_grad_norms[idx].tolist() if probe.param_grad_norms is not None else []
    bad = next((k for k, v in zip(idx.tolist(), norms) if not math.isfinite(v)), None)
    if bad is None:
        return probe.layers[row].name
    names = {id(p): clean_name(n) for n, p in model.named_parameters()}
    return names.get(id(probe.params[bad]), probe.layers[row].name)


def find(step: int, host: dict | None, probe, model, earlier: list, checks: list, skipped: set,
         at_close: bool = False) -> dict | None:
    """summary.json's `first_nonfinite`, from a logged step (host: its figures; None: not measured,
    a skipped step, or close()) and the steps since the previous one: earlier (step, loss), checks
    (step, gradient check)."""
    losses = dict(earlier)
    between = sorted({s for s, v in list(earlier) + list(checks) if _bad(v) and s not in skipped})
    here = locate(host, probe, model) if host is not None else None
    if between:
        s = between[0]
        finite_loss = not _bad(losses.get(s))
        what = "a non-finite gradient with a finite loss" if finite_loss else "a non-finite loss"
        at = "close()" if at_close else f"the next logged step {step}"
        there = f"; at step {step} the first non-finite value is in {here[2]}" if here else ""
        return {"step": s, "direction": "backward" if finite_loss else "forward", "module": here[1] if here else None,
                "found_at_step": None if at_close else step, "finite_loss": finite_loss,
                "message": f"step {s}: {what} (between logged steps: found at {at}{there})"}
    if here is None:
        return None
    direction, module, where = here
    finite_loss = not _bad(host.get("loss"))
    return {"step": step, "direction": direction, "module": module, "found_at_step": step, "finite_loss": finite_loss,
            "message": f"step {step}: first non-finite in {where}"
                       + (" while the loss is finite" if finite_loss else "")}

