"""What a Monitor run's config.yaml and summary.json say about the model: its class, the layers and
blocks found, which parameters are trainable, frozen or tied, and the optimizer (not a config that
`vgrad run` can train: the model is the user's)."""

from __future__ import annotations

from .. import vocab as V


def structure(mon) -> dict:
    """summary.json's account of the model's parameters and blocks (docs/run-format.md)."""
    layers = mon.probe.layers or []
    trainable = {id(p): p.numel() for layer in layers for p in layer.params}
    frozen = {id(p): p.numel() for p in mon.model.parameters() if not p.requires_grad}
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
    layers = mon.probe.layers or []
    opt = mon.optimizer
    train = {"optimizer": type(opt).__name__ if opt is not None else None, **mon.clip}
    if opt is not None:
        train["lr"] = opt.param_groups[0].get("lr") if isinstance(opt.param_groups[0].get("lr"), (int, float)) else None
    every = mon.every if isinstance(mon.every, int) else None
    return {"name": mon.name, "source": V.SOURCE_MONITOR,
            "model": {"kind": "custom", "class": mon._class,
                      "parameters": sum(p.numel() for p in mon.model.parameters()),
                      "layers": [{"name": row.name, "type": type(row.delta).__name__ if row.delta is not None else None,
                                  "parameters": sum(p.numel() for p in row.params), **({"note": row.note} if row.note else {})}
                                 for row in layers],
                      **_blocks(mon)},
            "train": train, "log": {"every": every, "activations": mon.probe.keep_activations}}


def _blocks(mon) -> dict:
    """The block view found (config.yaml): each view row and the module rows it holds."""
    view = mon.probe.view
    if view is None:
        return {}
    layers = mon.probe.layers
    return {"main_stack": view.main, "blocks": [
        {"name": r.name, "role": r.role, **({"stack": r.stack} if r.stack else {}),
         "modules": [layers[i].name for i in r.members]} for r in view.rows]}
