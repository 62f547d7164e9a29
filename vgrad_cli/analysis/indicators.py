"""The symptom checks of `vgrad diagnose`, one function per indicator, reading a loaded Run.

Each returns {"id", "key", "name", "status", "summary", "evidence", "threshold"}; status is
present | absent | not measurable. Thresholds live in THRESHOLDS (docs/diagnose.md explains each);
they were set on the bundled configs so that the healthy ones (03, 05, 06, 08, 15) show nothing.
No torch here: the ablation probe (indicator 5) is in ablation.py.
"""

from __future__ import annotations

import math
import statistics

from . import residual
from .. import vocab as V
from .verdict import (BELOW_FLOAT32, EXPLODING_RATIO, GROWTH, VANISHING_RATIO, cell_profile, ends, ends_label,
                      judged_time_ratio, time_profile, underflowed)

THRESHOLDS = {
    "min_loss_drop": 0.10,        # (1) loss fell by less than 10 % of its step-0 value ...
    "plateau_improvement": 0.05,  # (1) ... or improved < 5 % over the last half while still high
    "high_loss": 0.5,             # (1, 2) "still high": smoothed final loss >= 0.5 x baseline_loss
    "vanishing_ratio": VANISHING_RATIO,  # (3) layer-0/output (or h_0/h_T) delta_norm below 1e-2
    "unresponsive_frac": 0.5,     # (4) an early layer with >= half its units unresponsive
    "ablation_damage": 0.10,      # (5) resetting early layers raises the loss by < 10 %
    "weight_drift": 0.01,         # (6) every early layer moved < 1 % of its initial norm
    "dead_mean": 0.4,             # (7) >= 40 % of hidden units dead on average at the end ...
    "dead_layer": 0.9,            # (7) ... or one layer >= 90 % dead
    "exploding_ratio": EXPLODING_RATIO,  # (8) growth across layers / time above 1e2
    "growth_over_steps": GROWTH,  # (8) grad_norm_total above 1000 x its step-0 value
}
T = THRESHOLDS
RECOVERED_RATIO = 0.1  # (3) "recovered": back in range with a margin of 10x at the last step


def _first_last(steps):
    """(when, step) for the first and the last logged step; one entry when they coincide."""
    return [("first", steps[0])] + ([("last", steps[-1])] if steps[-1] != steps[0] else [])


def indicator(id_, key, name, status, summary, evidence, threshold) -> dict:
    return {"id": id_, "key": key, "name": name, "status": status, "summary": summary,
            "evidence": evidence, "threshold": threshold}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def span(k: int) -> str:
    return "layer 0" if k == 1 else f"layers 0-{k - 1}"


def hidden_rows(run, step) -> list[dict]:
    """The hidden (or stacked recurrent) layers' rows: every layer but the output."""
    rows = run.layer_rows(step)
    return rows[:-1] if len(rows) > 1 else []


def n_early(n_hidden: int) -> int:
    """'Early layers': the first third of the hidden layers (at least one)."""
    return max(1, round(n_hidden / 3))


def smoothed_end_loss(losses: list[float]) -> float:
    w = max(1, len(losses) // 10)  # the mean of the last 10 % of logged losses: one batch is noisy
    return statistics.fmean(losses[-w:])


# --------------------------------------------------------------------------- (1) and (2)

def slow_training(run, baseline: float | None) -> dict:
    name = "slow or stalled training"
    thr = (f"loss drop < {T['min_loss_drop']:.0%} of the step-0 loss, or < {T['plateau_improvement']:.0%} "
           f"improvement over the last half of training while the loss is >= {T['high_loss']} x baseline")
    losses = [m["loss"] for m in run.metrics if _finite(m.get("loss"))]
    if len(losses) < 4:
        return indicator(1, "slow_training", name, "not measurable", f"only {len(losses)} finite logged loss{'' if len(losses) == 1 else 'es'}", {}, thr)
    start, end = losses[0], smoothed_end_loss(losses)
    w = max(1, len(losses) // 10)
    half = len(losses) // 2
    mid = statistics.fmean(losses[half:half + w])
    drop = (start - end) / start if start > 0 else 0.0
    improvement = (mid - end) / mid if mid > 0 else 0.0
    high = baseline is not None and end >= T["high_loss"] * baseline
    steps = [m["step"] for m in run.metrics if _finite(m.get("loss"))]
    ev = {"loss_start": start, "loss_end": end, "relative_drop": drop, "loss_at_half": mid,
          "last_half_improvement": improvement, "baseline_loss": baseline, "min_loss": min(losses),
          "min_loss_step": steps[losses.index(min(losses))], "window_steps": [steps[half], steps[-1]]}
    stalled = drop < T["min_loss_drop"]
    plateau = improvement < T["plateau_improvement"] and high
    present = stalled or plateau
    if stalled:
        summary = f"loss {start:.3g} -> {end:.3g}: " + (f"dropped only {drop:.0%}" if drop > 0.005 else "no drop")
    elif plateau:
        trend = "rose" if improvement < -T["plateau_improvement"] else "stayed flat"
        summary = (f"loss {trend} over steps {steps[half]}-{steps[-1]} ({mid:.3g} -> {end:.3g}) "
                   f"and ends at {end / baseline:.3g}x the baseline")
    else:
        # the change over the last half, signed as the loss moved: "-69%" is a loss that fell
        summary = f"loss {start:.3g} -> {end:.3g} ({drop:.0%} drop); over the last half {mid:.3g} -> {end:.3g} ({-improvement:+.0%})"
    if present and min(losses) < T["high_loss"] * end:
        summary += f"; it had reached {min(losses):.3g} at step {ev['min_loss_step']} and got worse"
    return indicator(1, "slow_training", name, "present" if present else "absent", summary, ev, thr)


def poor_performance(run, baseline: float | None, chance: float | None) -> dict:
    name = "poor performance on the training data"
    thr = (f"regression: smoothed final loss >= {T['high_loss']} x baseline_loss; classification: accuracy "
           "closing < half the gap from chance to 1 (loss >= baseline_loss when no accuracy is logged)")
    losses = [m["loss"] for m in run.metrics if _finite(m.get("loss"))]
    if not losses or baseline is None:
        return indicator(2, "poor_performance", name, "not measurable", "no finite loss or no baseline", {}, thr)
    if len(losses) < 4 and run.status != V.DIVERGED:  # a run of a step or two cannot have learned yet
        return indicator(2, "poor_performance", name, "not measurable", f"only {len(losses)} finite logged loss{'' if len(losses) == 1 else 'es'}", {}, thr)
    end = smoothed_end_loss(losses)
    ev = {"loss_end": end, "baseline_loss": baseline, "loss_over_baseline": end / baseline if baseline else None}
    n = max(1, len(losses) // 10)
    summary = (f"training loss {end:.3g} (mean of the last {f'{n} logged steps' if n > 1 else 'logged step'}) = {end / baseline:.3g}x the "
               f"input-blind baseline {baseline:.3g}")
    if chance is not None:
        # Classification: accuracy decides; the loss can be dominated by a few confident mistakes.
        accs = [m["accuracy"] for m in run.metrics if _finite(m.get("accuracy"))]
        acc = smoothed_end_loss(accs) if accs else None
        ev.update(accuracy_end=acc, chance_accuracy=chance)
        present = acc < chance + 0.5 * (1 - chance) if acc is not None else end >= baseline
        if acc is not None:
            summary += f"; training accuracy {acc:.2f} (majority class {chance:.2f})"
    else:
        present = end >= T["high_loss"] * baseline
    if run.status == V.DIVERGED:
        summary = f"the run diverged at step {run.summary.get('diverged_step')}; " + summary
        present = True
    return indicator(2, "poor_performance", name, "present" if present else "absent", summary, ev, thr)


# --------------------------------------------------------------------------- (3) gradients

def _decay(first, last, n_steps: int) -> dict:
    """Ratio first/last, in orders of magnitude and dB (20 log10, an amplitude) per layer or step."""
    ratio = first / last if _finite(first) and _finite(last) and last > 0 else None
    d = {"ratio": ratio}
    if ratio is not None and ratio > 0 and n_steps > 0:
        orders = math.log10(ratio)
        d.update(orders_of_magnitude=orders, orders_per_step=orders / n_steps, db_per_step=20 * orders / n_steps)
    elif ratio == 0:
        d["note"] = "zero: a layer passes no gradient at all (e.g. an entirely dead ReLU layer)"
    return d


def _across_layers(run, rows) -> bool:
    """Whether 'layer 0 / output' means anything: not for a one-layer recurrent net, whose two rows
    are the recurrent layer and its linear head. There the gradient travels through time, and
    ||dL/dh_0|| / ||dL/dh_T|| is the evidence."""
    return not run.time or len(rows) > 2


def _scale_invariant(rows, per: dict) -> float | None:
    """A residual MLP or CNN without norm: delta's ratio follows the stream's scale (analysis/residual.py),
    so the verdict reads ||dL/dW||/||W|| of layer 0 over the last hidden layer instead."""
    r = residual.relative_grad_ratio(rows)
    per["relative_grad_ratio"] = r
    return r


def _kind(run) -> str | None:
    return (run.config.get("model") or {}).get("kind") if isinstance(run.config, dict) else None


def gradient_decay(run, model: dict | None = None) -> dict:
    name = "early-layer gradients orders of magnitude below later layers"
    thr = (f"delta_norm ratio layer 0 / output (or ||dL/dh_0|| / ||dL/dh_T||, for an lstm with its cell state's "
           f"||dL/dc_0|| / ||dL/dc_T|| too; residual nets without norm: ||dL/dW||/||W|| layer 0 / last hidden; "
           f"a transformer or CNN: first / last block) < {T['vanishing_ratio']:g} at the first or last logged step")
    invariant = residual.applies(model or {})
    steps, kind = run.steps, _kind(run)
    ev, found, parts = {}, [], []
    for when, step in _first_last(steps):
        rows = run.layer_rows(step)
        first, last = ends(rows, kind)
        n = last["layer"] - first["layer"] if isinstance(first.get("layer"), int) else len(rows) - 1
        per = {"step": step,
               "grad_norm": [r.get("grad_norm") for r in rows], "delta_norm": [r.get("delta_norm") for r in rows],
               "delta": _decay(first.get("delta_norm"), last.get("delta_norm"), n),
               "grad": _decay(first.get("grad_norm"), last.get("grad_norm"), n)}
        ev[f"{when}_step"] = per
        r = per["delta"]["ratio"] if _across_layers(run, rows) else None
        for key in ("delta", "grad"):  # float32 lost layer 0's value: no dead layer
            if underflowed(rows, 0, f"{key}_norm"):
                per[key]["note"] = BELOW_FLOAT32
        underflow = underflowed(rows, 0)
        if underflow:  # float64 (if measured) has the value
            f64 = run.float64 if step == 0 and run.float64 else None
            if f64:
                a, b = ends(f64, kind)
                per["delta_float64"] = _decay(a.get("delta_norm"), b.get("delta_norm"), n)
                r = per["delta_float64"]["ratio"] if r is not None else None
            in64 = per.get("delta_float64", {})
            parts.append(f"step {step}: delta_norm {ends_label(rows, kind)} {BELOW_FLOAT32}" + (
                f"; measured in float64: {in64['ratio']:.2g} ({in64['db_per_step']:+.1f} dB/layer)"
                if "db_per_step" in in64 else ""))
        if invariant:
            r = _scale_invariant(rows, per)
            if r is not None:
                parts.append(f"step {step}: ||dL/dW||/||W|| {residual.ends_label(rows, kind)} {r:.2g} (scale-invariant; "
                             f"delta_norm's {per['delta']['ratio'] or 0:.2g} follows the residual stream's scale)")
        if r is not None and r < T["vanishing_ratio"]:
            found.append(("across layers", step))
        if r is not None and not invariant and not underflow:
            per_layer = f" ({per['delta']['db_per_step']:+.1f} dB/layer)" if "db_per_step" in per["delta"] else ""
            parts.append(f"step {step}: delta_norm {ends_label(rows, kind)} {r:.2g}{per_layer}")
        if run.time:
            layer, prof = time_profile(run.time_rows(step))
            if prof:
                td = _decay(prof[0], prof[-1], len(prof) - 1)
                per["time"] = {"layer": layer, "T": len(prof), **td}
                if td["ratio"] is not None:
                    parts.append(f"step {step}: ||dL/dh_0||/||dL/dh_{len(prof) - 1}|| {td['ratio']:.2g}"
                                 + (f" ({td['db_per_step']:+.2f} dB/time step)" if "db_per_step" in td else ""))
                    per["time"]["recovered"] = td["ratio"] >= RECOVERED_RATIO
                    # an LSTM: its cell state is the path back (verdict.judged_time_ratio)
                    cell = _cell_decay(run.time_rows(step), per, parts, step)
                    if judged_time_ratio(td["ratio"], cell) < T["vanishing_ratio"]:
                        found.append(("through time", step))
    ev["vanishing_at"] = [{"where": w, "step": st} for w, st in found]
    # vanished at the start, clearly back in range at the end (ratio >= 0.1, not just over the
    # line): training opened the path, as an LSTM learns to
    last = ev.get("last_step", ev["first_step"])
    ratios_end = [x["ratio"] for x in (last["delta"], last.get("time") or {}) if x.get("ratio") is not None]
    ev["recovered"] = (len(steps) > 1 and any(st == steps[0] for _, st in found)
                       and bool(ratios_end) and min(ratios_end) >= RECOVERED_RATIO)
    status = "present" if found else ("absent" if parts else "not measurable")
    return indicator(3, "gradient_decay", name, status, "; ".join(parts) or "no delta_norm logged", ev, thr)


def _cell_decay(time_rows, per: dict, parts: list, step: int) -> float | None:
    """An LSTM's cell-state ratio ||dL/dc_0|| / ||dL/dc_T-1|| into the evidence; None without one."""
    prof = cell_profile(time_rows)
    if not prof:
        return None
    cd = _decay(prof[0], prof[-1], len(prof) - 1)
    per["cell"] = cd
    if cd["ratio"] is not None:
        parts.append(f"step {step}: cell state ||dL/dc_0||/||dL/dc_{len(prof) - 1}|| {cd['ratio']:.2g}")
    return cd["ratio"]


# --------------------------------------------------------------------------- (4), (6), (7)

def _early(run, step, column):
    rows = hidden_rows(run, step)
    k = n_early(len(rows))
    return [r.get(column) for r in rows[:k]], [r.get(column) for r in rows], k


def unresponsive_units(run) -> dict:
    name = "unresponsive units in early layers"
    thr = f"an early layer (first third of the hidden layers) with act_unresponsive_frac >= {T['unresponsive_frac']} at the last logged step"
    last = run.steps[-1]
    early, every, k = _early(run, last, "act_unresponsive_frac")
    if not early or not all(_finite(v) for v in early):
        return indicator(4, "unresponsive_units", name, "not measurable", "no activation statistics (log.activations off?)", {}, thr)
    dead, _, _ = _early(run, last, "act_dead_frac")
    first_early, _, _ = _early(run, run.steps[0], "act_unresponsive_frac")
    worst = max(range(k), key=lambda i: early[i])
    ev = {"step": last, "early_layers": list(range(k)), "early_frac": early, "early_dead_frac": dead,
          "first_step_early_frac": first_early, "all_layers_frac": every}
    summary = f"early {span(k)}: up to {early[worst]:.0%} unresponsive (layer {worst}" + (
        f", {dead[worst]:.0%} of its units dead)" if _finite(dead[worst]) and dead[worst] > 0 else ")")
    status = "present" if early[worst] >= T["unresponsive_frac"] else "absent"
    return indicator(4, "unresponsive_units", name, status, summary, ev, thr)


def weights_barely_moving(run) -> dict:
    name = "early-layer weights barely moving"
    thr = (f"weight_drift ||W_T - W_0|| / ||W_0|| < {T['weight_drift']:.0%} in every early layer at the last "
           "logged step, and under half of the later hidden layers' largest drift")
    last = run.steps[-1]
    early, every, k = _early(run, last, "weight_drift")
    if last == run.steps[0] or not early or not all(_finite(v) for v in early):
        return indicator(6, "weights_barely_moving", name, "not measurable", "needs a logged step after step 0", {}, thr)
    later = [v for v in every[k:] if _finite(v)]
    ev = {"step": last, "early_layers": list(range(k)), "early_drift": early, "all_layers_drift": every,
          "output_drift": run.layer_rows(last)[-1].get("weight_drift")}
    summary = f"early {span(k)} moved at most {100 * max(early):.3g}% of their initial norm"
    if later:
        summary += f" (later hidden layers up to {max(later):.2%})"
    # The symptom is a contrast: early layers frozen while later ones learn (when there are later ones).
    status = "present" if max(early) < T["weight_drift"] and (not later or max(early) < 0.5 * max(later)) else "absent"
    return indicator(6, "weights_barely_moving", name, status, summary, ev, thr)


def dying_relu(run, activation: str | None) -> dict:
    name = "dying ReLU"
    thr = f"mean act_dead_frac over hidden layers >= {T['dead_mean']} at the last logged step, or one layer >= {T['dead_layer']}"
    steps = run.steps
    trend = []
    for s in steps:
        v = [r.get("act_dead_frac") for r in hidden_rows(run, s)]
        if v and all(_finite(x) for x in v):
            trend.append((s, statistics.fmean(v), max(v)))
    if not trend:
        return indicator(7, "dying_relu", name, "not measurable", "no activation statistics", {}, thr)
    last = [r.get("act_dead_frac") for r in hidden_rows(run, steps[-1])]
    sample = trend[:: max(1, len(trend) // 10)] + ([trend[-1]] if len(trend) > 1 else [])
    ev = {"activation": activation, "last_step_per_layer": last, "mean_first": trend[0][1], "mean_last": trend[-1][1],
          "max_layer_last": max(last), "trend": [{"step": s, "mean": m, "max_layer": x} for s, m, x in sample],
          "fully_dead_layers": [i for i, v in enumerate(last) if v >= 0.999]}
    summary = f"dead units: {trend[0][1]:.0%} at step {steps[0]} -> {trend[-1][1]:.0%} at step {steps[-1]} (mean over hidden layers)"
    if ev["fully_dead_layers"]:
        summary += f"; layer(s) {', '.join(map(str, ev['fully_dead_layers']))} entirely dead: no gradient passes below"
    present = trend[-1][1] >= T["dead_mean"] or max(last) >= T["dead_layer"]
    if not present and max(t[1] for t in trend) == 0:
        summary = f"no unit is dead at any logged step ({activation} cannot output exactly 0 for every input)" \
            if activation not in ("relu", None) else "no unit is dead at any logged step"
    return indicator(7, "dying_relu", name, "present" if present else "absent", summary, ev, thr)


# --------------------------------------------------------------------------- (8) exploding

def exploding(run, baseline: float | None, clip: float | None, model: dict | None = None) -> dict:
    name = "exploding gradients"
    thr = (f"a non-finite loss, or delta_norm / through-time ratio > {T['exploding_ratio']:g} (residual nets without "
           "norm: ||dL/dW||/||W|| layer 0 / last hidden, or the forward stream: branch output RMS last hidden / "
           f"layer 0), or grad_norm_total > "
           f"{T['growth_over_steps']:g} x its step-0 value (loss spikes and clipping: supporting evidence only)")
    s, steps = run.summary, run.steps
    signs, ev = [], {}
    invariant = residual.applies(model or {})
    if run.status == V.DIVERGED:
        signs.append(f"the loss became non-finite at step {s.get('diverged_step')}")
    ev["diverged_step"] = s.get("diverged_step")
    for when, step in _first_last(steps):
        rows = run.layer_rows(step)
        first, last = ends(rows, _kind(run))
        r = _decay(first.get("delta_norm"), last.get("delta_norm"), len(rows) - 1)["ratio"]
        ev[f"delta_ratio_{when}_step"] = r
        if invariant:
            signs[:0] = _forward_stream(rows, step, r, ev, when, _kind(run))
            r = ev[f"relative_grad_ratio_{when}_step"] = residual.relative_grad_ratio(rows)
            if r is not None and r > T["exploding_ratio"]:
                signs.append(f"||dL/dW||/||W|| {residual.ends_label(rows, _kind(run))} {r:.3g} at step {step}")
        elif r is not None and r > T["exploding_ratio"] and _across_layers(run, rows):
            signs.append(f"{ends_label(rows, _kind(run)).replace(' ', '-')} delta_norm {r:.3g} at step {step}")
        if run.time:
            _, prof = time_profile(run.time_rows(step))
            tr = _decay(prof[0], prof[-1], len(prof) - 1)["ratio"] if prof else None
            ev[f"time_ratio_{when}_step"] = tr
            if tr is not None and tr > T["exploding_ratio"]:
                signs.append(f"||dL/dh_0||/||dL/dh_T|| {tr:.3g} at step {step}")
    totals = [(m["step"], m.get("grad_norm_total"), m.get("grad_norm_clipped")) for m in run.metrics]
    totals = [t for t in totals if _finite(t[1])]
    if totals and totals[0][1] > 0:
        growth = max(t[1] for t in totals) / totals[0][1]
        ev.update(grad_norm_total_first=totals[0][1], grad_norm_total_max=max(t[1] for t in totals), growth_over_steps=growth)
        if growth > T["growth_over_steps"]:
            signs.append(f"grad_norm_total grew {growth:.3g}x over step 0")
    losses = [(m["step"], m["loss"]) for m in run.metrics if _finite(m.get("loss"))]
    # a spike: the loss more than doubles between logged steps, by more than a quarter of the baseline
    jump = 0.25 * (baseline or 0)
    spikes = [(b[0], a[1], b[1]) for a, b in zip(losses, losses[1:]) if b[1] > 2 * a[1] and b[1] - a[1] > jump]
    ev["loss_spikes"] = [{"step": st, "from": f, "to": t} for st, f, t in spikes[:10]]
    ev["n_loss_spikes"] = len(spikes)
    support = []
    if spikes:
        big = max(spikes, key=lambda x: x[2])
        support.append(f"{len(spikes)} loss spike(s), the largest to {big[2]:.3g} at step {big[0]}")
    if clip is not None and totals:
        active = [t for t in totals if _finite(t[2]) and t[2] < t[1] * (1 - 1e-6)]
        ratio = statistics.median(t[1] / clip for t in totals)
        ev.update(clip_norm=clip, clipping_active_frac=len(active) / len(totals), median_total_over_clip=ratio)
        if len(active) > len(totals) / 2:
            support.append(f"clipping active on {len(active)}/{len(totals)} logged steps (median norm {ratio:.3g}x the clip)")
    ev["signs"], ev["supporting"] = signs, support
    summary = "; ".join(signs + support) or "no sign of explosion"
    if support and not signs:
        summary += " — without growth across layers or time, or a non-finite loss, these alone are not explosion"
    return indicator(8, "exploding", name, "present" if signs else "absent", summary, ev, thr)


def _forward_stream(rows, step, delta_ratio, ev: dict, when: str, kind: str | None) -> list[str]:
    """The sign of a residual stream that explodes forward (not the gradient): the branch output's
    RMS growing by more than the exploding ratio from layer 0 to the last hidden layer (a CNN: conv0
    to the last conv block; act_mean and act_std pool its channels into the layer's RMS)."""
    g = ev[f"act_rms_growth_{when}_step"] = residual.measured_growth(rows)
    if g is None or g <= T["exploding_ratio"] or ev.get("forward_stream"):
        return []
    ev["forward_stream"] = True
    rms = [residual.act_rms(r) for r in rows[:-1]]
    mirror = (f"; delta_norm's {ends_label(rows, kind).replace(' ', '-')} {delta_ratio:.3g} mirrors it"
              if delta_ratio and delta_ratio > 1 else "")
    start, end = (rows[0].get("name"), rows[-2].get("name")) if kind == "cnn" else ("layer 0", len(rms) - 1)
    return [f"the forward stream explodes, not the gradient (residual branch output RMS x{g:.3g} from {start} "
            f"to {end} at step {step}: {rms[0]:.3g} -> {rms[-1]:.3g}){mirror}"]
