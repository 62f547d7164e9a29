"""The symptom checks of `vgrad diagnose`, one function per indicator, reading a loaded Run.

Each returns {"id", "key", "name", "status", "summary", "evidence", "threshold"}; status is
present | absent | not measurable, and a "not measurable" summary says why. Thresholds live in
thresholds.py (docs/diagnose.md explains each). Here: the gradient across layers and through time
(3) and explosion (8); the loss indicators (1, 2) are in losses.py, the unit and weight indicators
(4, 6, 7) in units.py, the ablation probe (5, torch) in ablation.py.
"""

from __future__ import annotations

import math
import statistics

from . import residual
from .. import vocab as V
from .across import GRAD, no_delta_reason, readings, text
from .losses import poor_performance, slow_training
from .thresholds import NOT_MEASURABLE, THRESHOLDS, T, indicator, span
from .thresholds import finite as _finite
from .units import dying_relu, unresponsive_units, weights_barely_moving
from .verdict import BELOW_FLOAT32, cell_profile, ends, ends_label, judged_time_ratio, time_profile, underflowed

__all__ = ["THRESHOLDS", "indicator", "span", "slow_training", "poor_performance", "gradient_decay",
           "unresponsive_units", "weights_barely_moving", "dying_relu", "exploding"]
RECOVERED_RATIO = 0.1  # (3) "recovered": back in range with a margin of 10x at the last step


def _first_last(steps):
    """(when, step) for the first and the last logged step; one entry when they coincide."""
    return [("first", steps[0])] + ([("last", steps[-1])] if steps[-1] != steps[0] else [])


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
           f"a transformer or CNN: first / last block; a block view: each stack's first / last trainable block; "
           f"without δ: grad_norm) < {T['vanishing_ratio']:g} at the first or last logged step")
    invariant = residual.applies(model or {})
    steps, kind = run.steps, _kind(run)
    ev, found, parts, alarms, judged = {}, [], [], [], {}
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
        items = readings(rows, kind) if _across_layers(run, rows) and not invariant else []
        # the ends have no δ: the first and last rows that have it, else (a compiled model) grad_norm
        other_ends = bool(items) and (first.get("delta_norm") is None or last.get("delta_norm") is None)
        if other_ends:
            r = items[0]["ratio"]
            per["reading"] = items[0]
            if items[0]["column"] == GRAD:
                ev["no_delta"] = no_delta_reason(run)
            parts.append(text(items[0], step))
        main_end = r if other_ends else per["delta"]["ratio"]  # what "recovered" reads at the last step
        judged[when] = [x for x in [main_end, *(o["ratio"] for o in items[1:])] if x is not None]
        for other in items[1:]:  # every other stack, by its first and last trainable blocks
            per.setdefault("stacks", {})[other["stack"]] = other
            if other["ratio"] is not None and other["ratio"] < T["vanishing_ratio"]:
                found.append((f"stack {other['stack']}", step))
                alarms.append(text(other, step))
        if r is not None and r < T["vanishing_ratio"]:
            found.append(("across layers", step))
        if r is not None and not invariant and not underflow and not other_ends:
            unit = "block" if items and items[0]["stack"] else "layer"
            per_layer = f" ({per['delta']['db_per_step']:+.1f} dB/{unit})" if "db_per_step" in per["delta"] else ""
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
    ratios_end = judged.get("last", judged["first"]) + [x for x in [(last.get("time") or {}).get("ratio")] if x is not None]
    ev["recovered"] = (len(steps) > 1 and any(st == steps[0] for _, st in found)
                       and bool(ratios_end) and min(ratios_end) >= RECOVERED_RATIO)
    ev["read_from"] = GRAD if "no_delta" in ev else "delta_norm"
    status = "present" if found else ("absent" if parts or any(judged.values()) else NOT_MEASURABLE)
    summary = "; ".join(alarms + parts) or f"neither delta_norm nor grad_norm at two layers ({no_delta_reason(run)})"
    if "no_delta" in ev and parts:
        summary = f"δ was not measured ({ev['no_delta']}): read from grad_norm: {summary}"
    return indicator(3, "gradient_decay", name, status, summary, ev, thr)


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
    found = s.get("first_nonfinite") or {}
    bad = [m["step"] for m in run.metrics if m.get("grad_norm_total") is not None and not _finite(m["grad_norm_total"])
           and not m.get("skipped")]
    if run.status != V.DIVERGED and (found or bad):  # a NaN or infinite gradient under a finite loss
        where = found.get("message") or f"grad_norm_total non-finite at step {bad[0]}"
        signs.append(f"a non-finite gradient while the loss stayed finite ({where})")
        ev["nonfinite_gradient_steps"] = bad[:10]
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
        elif _across_layers(run, rows):
            items = readings(rows, _kind(run))
            if items and (first.get("delta_norm") is None or last.get("delta_norm") is None):
                main = items[0]  # the ends have no δ: the rows that have it, else (compiled) grad_norm
                r = ev[f"{main['column'][:-5]}_ratio_{when}_step"] = main["ratio"]
                if r is not None and r > T["exploding_ratio"]:
                    signs.append(f"{main['label']} {main['column']} {r:.3g} at step {step}" + (
                        f" (δ was not measured ({no_delta_reason(run)}): read from grad_norm)"
                        if main["column"] == GRAD else ""))
            elif r is not None and r > T["exploding_ratio"]:
                signs.append(f"{ends_label(rows, _kind(run)).replace(' ', '-')} delta_norm {r:.3g} at step {step}")
            for other in items[1:]:  # every other stack
                if other["ratio"] is not None and other["ratio"] > T["exploding_ratio"]:
                    signs.append(f"stack {other['stack']}: {other['label']} {other['column']} {other['ratio']:.3g} "
                                 f"at step {step}")
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
