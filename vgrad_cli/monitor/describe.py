"""What a Monitor run's config.yaml and summary.json say about the model: its class, the layers and
blocks found, which parameters are trainable, frozen or tied, what the model is made of (norms and
their placement, residual adds, activations: measure/structure.py), and the training: the optimizer
and its settings, the learning rate over the logged steps, clipping (not a config that `vgrad run`
can train: the model is the user's)."""

from __future__ import annotations

import math

from .. import vocab as V
from ..measure.distributed import full_numels

OPTIMIZER_KEYS = ("betas", "momentum", "weight_decay")  # an optimizer's settings the advice reads (lr apart)


def structure(mon) -> dict:
    """summary.json's account of the model's parameters and blocks (docs/run-format.md)."""
    layers, whole = mon.probe.layers or [], full_numels(mon.model)  # FSDP1: a rank's views hold a part
    trainable = {id(p): whole.get(id(p), p.numel()) for layer in layers for p in layer.params}
    frozen = {id(p): whole.get(id(p), p.numel()) for p in mon.model.parameters() if not p.requires_grad}
    out = {"parameters_trainable": sum(trainable.values()), "parameters_frozen": sum(frozen.values())}
    tied = [{"module": layer.name, "shares": layer.note[len("tied to "):].split(", ")}
            for layer in layers if layer.note.startswith("tied to ")]
    if tied:
        out["tied"] = tied
    view = mon.probe.view
    if view is not None:
        out["main_stack"] = view.main
        out["n_blocks"] = sum(r.role == "block" and r.stack == view.main for r in view.rows)
    return out


def config(mon) -> dict:
    """config.yaml of a monitored run: what the model and the optimizer were (not a config that
    `vgrad run` can train: the model is the user's)."""
    layers, whole = mon.probe.layers or [], full_numels(mon.model)
    opt = mon.optimizer
    train = {"optimizer": type(opt).__name__ if opt is not None else None, **mon.clip}
    if opt is not None:
        group = opt.param_groups[0]
        train["lr"] = _plain(group.get("lr"))
        train.update({k: _plain(group[k]) for k in OPTIMIZER_KEYS if k in group and _plain(group[k]) is not None})
    if mon.path is not None and mon.status != V.RUNNING:  # at close(): what the logged steps show
        train["detected"] = training(mon.path, mon.clip)
    structure = mon.probe.structure
    every = mon.every if isinstance(mon.every, int) or mon.every == "auto" else None
    return {"name": mon.name, "source": V.SOURCE_MONITOR,
            "model": {"kind": "custom", "class": mon._class,
                      "parameters": sum(whole.get(id(p), p.numel()) for p in mon.model.parameters()),
                      "layers": [{"name": row.name, "type": type(row.delta).__name__ if row.delta is not None else None,
                                  "parameters": sum(whole.get(id(p), p.numel()) for p in row.params),
                                  **({"note": row.note} if row.note else {})}
                                 for row in layers],
                      **_blocks(mon), **({"structure": structure} if structure else {})},
            "train": train, "log": {"every": every, "activations": mon.probe.keep_activations,
                                    **({"compiled": True} if mon.compiled else {})}}


def _blocks(mon) -> dict:
    """The block view found (config.yaml): each view row and the module rows it holds."""
    view = mon.probe.view
    if view is None:
        return {}
    layers = mon.probe.layers
    return {"main_stack": view.main, "blocks": [
        {"name": r.name, "role": r.role, **({"stack": r.stack} if r.stack else {}),
         "modules": [layers[i].name for i in r.members]} for r in view.rows]}


def training(path, clip: dict) -> dict:
    """config.yaml's train.detected: the learning rate over the logged steps (metrics.csv `lr`, the
    optimizer's first group's, read at each logged step) and whether clipping showed. Read once, at
    close()."""
    from ..rundir.files import read_table

    try:
        rows = [r for r in read_table(path, V.METRICS_CSV) if isinstance(r.get("grad_norm_total"), (int, float))]
    except Exception:  # noqa: BLE001 - a table this run could not write: nothing detected, the run still closes
        return {}
    out = lr_schedule([(r["step"], r.get("lr")) for r in rows])
    told = [f"{k} {v:g}" for k, v in clip.items() if isinstance(v, (int, float))]
    pairs = [(r["grad_norm_total"], r.get("grad_norm_clipped")) for r in rows]
    pairs = [(a, b) for a, b in pairs if isinstance(b, (int, float)) and math.isfinite(a) and math.isfinite(b)]
    seen = sum(b < a * (1 - 1e-6) for a, b in pairs)
    if told:
        out["clipping"] = "told: " + ", ".join(told)
    elif pairs:
        out["clipping"] = "seen" if seen else "not seen"
    else:
        out["clipping"] = "unknown"  # no optimizer: the norm after clipping was not measured
    if pairs:
        out["clipped_steps"] = f"{seen}/{len(pairs)}"
    return out


def lr_schedule(lrs: list) -> dict:
    """What the (step, lr) pairs of the logged steps show: lr_schedule constant, warm-up (the lr rises
    from the first logged step to its largest), decay, warm-up then decay, or varying; lr_first,
    lr_max, lr_last, and warmup_until (the first logged step at the largest lr)."""
    lrs = [(s, v) for s, v in lrs if isinstance(v, (int, float)) and math.isfinite(v)]
    if not lrs:
        return {"lr_schedule": "unknown"}
    values = [v for _, v in lrs]
    first, top, last = values[0], max(values), values[-1]
    at_top = values.index(top)
    rises = top > first * 1.01 and all(b >= a for a, b in zip(values, values[1:at_top + 1]))
    falls = last < top * 0.99 and all(b <= a for a, b in zip(values[at_top:], values[at_top + 1:]))
    schedule = ("single step" if len(lrs) == 1 else "constant" if top <= min(values) * 1.01 else
                "warm-up, then decay" if rises and falls else "warm-up" if rises and last >= top * 0.99 else
                "decay" if falls and at_top == 0 else "varying")
    out = {"lr_schedule": schedule, "lr_first": first, "lr_max": top, "lr_last": last}
    if schedule.startswith("warm-up"):
        out["warmup_until"] = lrs[at_top][0]
    return out


def _plain(v):
    """An optimizer setting as YAML can hold it: a number, a list of numbers (betas), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    if hasattr(v, "numel") and v.numel() == 1:  # a tensor lr or beta: read once, at the start and the end
        return float(v)
    if isinstance(v, (tuple, list)) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return list(v)
    return None
