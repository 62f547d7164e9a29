"""Indicators 4, 6 and 7 (unresponsive units, early weights barely moving, dying ReLU): which rows
they read, and why one is not measurable when it is not.

Units are the module rows' (layers.csv): a block row (blocks.csv) has no activation statistics. A
module row has them when its output passes through an activation vgrad sees — an activation module
(nn.ReLU, nn.GELU, ...) or an elementwise function between two modules — so a transformer has them
on its MLP's first Linear (GPT-2's `mlp.c_fc`), not on its projections or norms. The indicators read
the rows that have them; a row without them is not a reason to give up on the run.

"Early layers": vgrad's own models and models without repeated blocks, the first third of the
hidden rows (every row but the output); a block view, the module rows inside the first third of the
main stack's trainable blocks (at least one block). The embedding is left out: it is the model's
input layer, not its first hidden one, as an MLP's early layers start at its first hidden layer.
weights_barely_moving on a block view compares those blocks' weight_drift (blocks.csv: the drift
of all their weights together) with the main stack's later blocks. Frozen rows are never read.
"""

from __future__ import annotations

import statistics

from .. import vocab as V
from .across import COMPILED, compiled
from .thresholds import NOT_MEASURABLE, T, finite, indicator, n_early, span
from .verdict import main_blocks

FROZEN = "frozen"


def hidden_rows(run, step) -> list[dict]:
    """The hidden module rows: every row of layers.csv but the output (the last), frozen ones left out."""
    rows = run.module_layer_rows(step)
    return [r for r in rows[:-1] if r.get("note") != FROZEN] if len(rows) > 1 else []


def early_rows(run, step) -> tuple[list[dict], str]:
    """The early layers' module rows, and how to name them."""
    blocks = main_blocks(run.layer_rows(step)) if run.modules is not None else []
    if not blocks:
        rows = hidden_rows(run, step)
        k = n_early(len(rows))
        if not rows or not _own(run):
            return rows[:k], f"early {span(k)}"
        return rows[:k], f"early rows {rows[0]['name']}" + (f"-{rows[k - 1]['name']}" if k > 1 else "")
    early = blocks[:n_early(len(blocks))]
    names = [b["name"] for b in early]
    inside = [r for r in run.module_layer_rows(step) if r.get("note") != FROZEN and any(
        r["name"] == n or r["name"].startswith(n + ".") for n in names)]
    return inside, f"early blocks ({names[0]}{f'-{names[-1]}' if len(names) > 1 else ''}: first third of the trainable blocks)"


def _own(run) -> bool:
    """A model of the user's own (Monitor): rows are named by module, not by index."""
    return (run.config or {}).get("source") == V.SOURCE_MONITOR


def label(run, row: dict, index: int) -> str:
    return f"'{row['name']}'" if _own(run) else str(index)


def no_units_reason(run, step, looked: str | None = None) -> str:
    """Why no activation statistics are there to read: the true reason."""
    log = (run.config or {}).get("log") or {}
    if compiled(run):
        return f"{COMPILED}: activation statistics need hooks inside the compiled graph"
    if log.get("activations") is False:
        return "activation statistics are off (log.activations: false; Monitor(activations=False))"
    rows = run.module_layer_rows(step)
    frozen = sum(r.get("note") == FROZEN for r in rows)
    if rows and frozen == len(rows):
        return "every module is frozen: no row is measured"
    having = [r["name"] for r in rows if r.get("note") != FROZEN and finite(r.get("act_dead_frac"))]
    if not having:
        sees = ("(it sees an activation module such as nn.ReLU or nn.GELU called after a module, or one elementwise "
                "operation between two modules: F.relu then dropout, as in nn.TransformerEncoderLayer, is two)")
        if frozen:
            return (f"vgrad found no activation after a trainable module; {frozen} of the {len(rows)} module rows are "
                    f"frozen and not measured {sees}")
        return f"vgrad found no activation after any module of this model {sees}"
    shown = ", ".join(having[:3]) + (f" and {len(having) - 3} more" if len(having) > 3 else "")
    return f"none of the {looked or 'hidden'} layers' modules has activation statistics (the rows that have them: {shown})"


# --------------------------------------------------------------------------- (4), (6), (7)

def unresponsive_units(run) -> dict:
    name = "unresponsive units in early layers"
    thr = (f"an early layer (first third of the hidden layers; a block view: the modules of the first third of the "
           f"main stack's blocks) with act_unresponsive_frac >= {T['unresponsive_frac']} at the last logged step")
    last = run.steps[-1]
    rows, where = early_rows(run, last)
    measured = [r for r in rows if finite(r.get("act_unresponsive_frac"))]
    if not measured:
        return indicator(4, "unresponsive_units", name, NOT_MEASURABLE, no_units_reason(run, last, "early"), {}, thr)
    first = {r["name"]: r.get("act_unresponsive_frac") for r in early_rows(run, run.steps[0])[0]}
    early = [r["act_unresponsive_frac"] for r in measured]
    dead = [r.get("act_dead_frac") for r in measured]
    worst = max(range(len(measured)), key=lambda i: early[i])
    ev = {"step": last, "early_layers": [r["layer"] for r in measured], "early_names": [r["name"] for r in measured],
          "early_frac": early, "early_dead_frac": dead,
          "first_step_early_frac": [first.get(r["name"]) for r in measured],
          "all_layers_frac": [r.get("act_unresponsive_frac") for r in hidden_rows(run, last)]}
    summary = f"{where}: up to {early[worst]:.0%} unresponsive (layer {label(run, measured[worst], worst)}" + (
        f", {dead[worst]:.0%} of its units dead)" if finite(dead[worst]) and dead[worst] > 0 else ")")
    status = "present" if early[worst] >= T["unresponsive_frac"] else "absent"
    return indicator(4, "unresponsive_units", name, status, summary, ev, thr)


def weights_barely_moving(run) -> dict:
    name = "early-layer weights barely moving"
    thr = (f"weight_drift ||W_T - W_0|| / ||W_0|| < {T['weight_drift']:.0%} in every early layer (a block view: "
           "the first third of the main stack's trainable blocks) at the last logged step, and under half of the "
           "later layers' (blocks') largest drift")
    last = run.steps[-1]
    if last == run.steps[0]:
        return indicator(6, "weights_barely_moving", name, NOT_MEASURABLE, "needs a logged step after step 0", {}, thr)
    blocks = main_blocks(run.layer_rows(last))
    rows = blocks or hidden_rows(run, last)
    k = n_early(len(rows))
    early = [r for r in rows[:k] if finite(r.get("weight_drift"))]
    if not early:
        why = "no trainable hidden layer" if not rows else (
            f"weight_drift is empty for {', '.join(r['name'] for r in rows[:k])}: weights that start at 0 have no "
            "initial norm to compare with")
        return indicator(6, "weights_barely_moving", name, NOT_MEASURABLE, why, {}, thr)
    drift = [r["weight_drift"] for r in early]
    later = [r["weight_drift"] for r in rows[k:] if finite(r.get("weight_drift"))]
    every = [r.get("weight_drift") for r in rows]
    ev = {"step": last, "early_layers": [r["layer"] for r in early], "early_names": [r["name"] for r in early],
          "early_drift": drift, "all_layers_drift": every,
          "output_drift": run.module_layer_rows(last)[-1].get("weight_drift")}
    what = (f"early blocks {early[0]['name']}-{early[-1]['name']}" if len(early) > 1 else f"early block {early[0]['name']}") \
        if blocks else f"early {span(k)}"
    summary = f"{what} moved at most {100 * max(drift):.3g}% of {'its' if len(early) == 1 and blocks else 'their'} initial norm"
    if later:
        summary += f" (later {'blocks' if blocks else 'hidden layers'} up to {max(later):.2%})"
    # The symptom is a contrast: early layers frozen while later ones learn (when there are later ones).
    status = "present" if max(drift) < T["weight_drift"] and (not later or max(drift) < 0.5 * max(later)) else "absent"
    return indicator(6, "weights_barely_moving", name, status, summary, ev, thr)


def dying_relu(run, activation: str | None) -> dict:
    name = "dying ReLU"
    thr = f"mean act_dead_frac over hidden layers >= {T['dead_mean']} at the last logged step, or one layer >= {T['dead_layer']}"
    steps = run.steps
    trend = []
    for s in steps:
        v = [r["act_dead_frac"] for r in hidden_rows(run, s) if finite(r.get("act_dead_frac"))]
        if v:
            trend.append((s, statistics.fmean(v), max(v)))
    last_rows = [r for r in hidden_rows(run, steps[-1]) if finite(r.get("act_dead_frac"))]
    if not trend or not last_rows:
        return indicator(7, "dying_relu", name, NOT_MEASURABLE, no_units_reason(run, steps[-1]), {}, thr)
    last = [r["act_dead_frac"] for r in last_rows]
    sample = trend[:: max(1, len(trend) // 10)] + ([trend[-1]] if len(trend) > 1 else [])
    dead = [i for i, v in enumerate(last) if v >= 0.999]
    model = (run.config or {}).get("model") or {}
    stacks = ((model.get("structure") or {}).get("stacks") or []) if isinstance(model.get("structure"), dict) else []
    ev = {"residual": bool(model.get("residual") or any(st.get("residual") for st in stacks if isinstance(st, dict))),
          "activation": activation, "last_step_per_layer": last, "mean_first": trend[0][1], "mean_last": trend[-1][1],
          "max_layer_last": max(last), "trend": [{"step": s, "mean": m, "max_layer": x} for s, m, x in sample],
          "fully_dead_layers": dead if not _own(run) else [last_rows[i]["name"] for i in dead]}
    summary = f"dead units: {trend[0][1]:.0%} at step {steps[0]} -> {trend[-1][1]:.0%} at step {steps[-1]} (mean over hidden layers)"
    if dead:
        summary += (f"; layer(s) {', '.join(label(run, last_rows[i], i) for i in dead)} entirely dead: "
                    "no gradient passes below")
    present = trend[-1][1] >= T["dead_mean"] or max(last) >= T["dead_layer"]
    if not present and max(t[1] for t in trend) == 0:
        summary = f"no unit is dead at any logged step ({activation} cannot output exactly 0 for every input)" \
            if activation not in ("relu", None) else "no unit is dead at any logged step"
    return indicator(7, "dying_relu", name, "present" if present else "absent", summary, ev, thr)
