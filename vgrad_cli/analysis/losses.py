"""Indicators 1 and 2 (slow training, poor performance), read off loss windows of the step span.

One verdict whatever the cadence: the windows are stretches of *steps*, not counts of logged
points, so the same training logged every 1, 5 or 10 steps is judged on the same stretches of it:
  start  the loss at the first logged step (step 0: always logged);
  end    the mean of the logged losses in the last 10 % of the step span (the "smoothed final loss");
  half   the mean of those in the 10 % of the span that begins at its middle.
A window holds every metrics.csv row in it with a finite loss (the logged steps, and unlogged steps
that carry your own figures); an empty one takes the first row after its start. Every=10 reads
fewer rows than every=1 in the same window, so one batch's noise weighs more: the expectation is
the same, not every digit.

How long a run must be. Under MIN_SPAN steps neither indicator is measured: a run of a few steps
cannot have learned yet. Without a task baseline (a Monitor run: vgrad does not know the input-blind
loss of your task) "the loss stays high" has no reference, so poor performance is not measurable,
and slow training reads only the drop from the first loss, over at least MIN_SPAN_NO_BASELINE steps:
a fine-tune can fall by under 10 % in its first tens of steps while it learns (LoRA r 4 on a small
GPT-2 at lr 1e-2: 4 % in 30 steps; BERT with two of four layers frozen at lr 3e-4: 9-19 % in 30 steps,
seeds 0-3), and nothing in a short run tells that from a stall.
"""

from __future__ import annotations

import statistics

from .. import vocab as V
from .thresholds import NOT_MEASURABLE, T, finite, indicator

MIN_SPAN = 10               # steps: under this, no loss indicator is measured
MIN_SPAN_NO_BASELINE = 100  # steps: without a task baseline, slow training is judged over this span at least
WINDOW = 0.10               # a window's share of the step span


def points(run, column: str = "loss") -> list[tuple[int, float]]:
    """(step, value) of the metrics rows with a finite value, one per step, in step order."""
    seen = {m["step"]: m[column] for m in run.metrics if finite(m.get(column)) and isinstance(m.get("step"), int)}
    return sorted(seen.items())


def window(pts: list[tuple[int, float]], lo: float, hi: float) -> list[tuple[int, float]]:
    """The points with lo <= step < hi; if none, the first one at or after lo (else the last one)."""
    inside = [p for p in pts if lo <= p[0] < hi]
    return inside or [next((p for p in pts if p[0] >= lo), pts[-1])]


def end_window(pts: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The last 10 % of the step span, up to its last step: sN - span/10 < step <= sN."""
    sn, span = pts[-1][0], pts[-1][0] - pts[0][0]
    return [p for p in pts if p[0] > sn - WINDOW * span] or pts[-1:]


def smoothed_end(pts: list[tuple[int, float]]) -> float:
    return statistics.fmean(v for _, v in end_window(pts))


def _span_text(pts) -> str:
    n = pts[-1][0] - pts[0][0]
    return f"the logged losses span {n} step{'' if n == 1 else 's'} ({pts[0][0]}-{pts[-1][0]})"


def too_short(pts, need: int) -> str | None:
    """Why a loss indicator cannot be judged on these points, or None."""
    if not pts:
        return "no finite loss logged"
    if pts[-1][0] - pts[0][0] < need:
        return f"{_span_text(pts)}: fewer than {need}, too few to judge"
    return None


# --------------------------------------------------------------------------- (1) and (2)

def slow_training(run, baseline: float | None) -> dict:
    name = "slow or stalled training"
    thr = (f"loss drop < {T['min_loss_drop']:.0%} of the step-0 loss, or < {T['plateau_improvement']:.0%} "
           f"improvement over the last half of training while the loss is >= {T['high_loss']} x baseline "
           f"(windows of the step span; at least {MIN_SPAN} steps, {MIN_SPAN_NO_BASELINE} without a baseline)")
    pts = points(run)
    why = too_short(pts, MIN_SPAN)
    if why is None and baseline is None and pts[-1][0] - pts[0][0] < MIN_SPAN_NO_BASELINE:
        why = (f"{_span_text(pts)}: without a task baseline (a Monitor run) the loss's progress is judged over "
               f"at least {MIN_SPAN_NO_BASELINE} steps — a short run that learns slowly cannot be told from a stall")
    if why:
        return indicator(1, "slow_training", name, NOT_MEASURABLE, why, {}, thr)
    s0, sn = pts[0][0], pts[-1][0]
    half = window(pts, s0 + (sn - s0) / 2, s0 + (sn - s0) * (0.5 + WINDOW))
    end = end_window(pts)
    start, end_loss, mid = pts[0][1], statistics.fmean(v for _, v in end), statistics.fmean(v for _, v in half)
    drop = (start - end_loss) / start if start > 0 else 0.0
    improvement = (mid - end_loss) / mid if mid > 0 else 0.0
    high = baseline is not None and end_loss >= T["high_loss"] * baseline
    best = min(pts, key=lambda p: p[1])
    ev = {"loss_start": start, "loss_end": end_loss, "relative_drop": drop, "loss_at_half": mid,
          "last_half_improvement": improvement, "baseline_loss": baseline, "min_loss": best[1],
          "min_loss_step": best[0], "window_steps": [half[0][0], sn], "end_window_steps": [end[0][0], sn]}
    stalled = drop < T["min_loss_drop"]
    plateau = improvement < T["plateau_improvement"] and high
    present = stalled or plateau
    if stalled:
        summary = f"loss {start:.3g} -> {end_loss:.3g}: " + (f"dropped only {drop:.0%}" if drop > 0.005 else "no drop")
        if baseline is None:
            summary += f" over {sn - s0} steps (no task baseline to compare it with)"
    elif plateau:
        trend = "rose" if improvement < -T["plateau_improvement"] else "stayed flat"
        summary = (f"loss {trend} over steps {half[0][0]}-{sn} ({mid:.3g} -> {end_loss:.3g}) "
                   f"and ends at {end_loss / baseline:.3g}x the baseline")
    else:
        # the change over the last half, signed as the loss moved: "-69%" is a loss that fell
        summary = (f"loss {start:.3g} -> {end_loss:.3g} ({drop:.0%} drop); over the last half {mid:.3g} -> "
                   f"{end_loss:.3g} ({-improvement:+.0%})")
    if present and best[1] < T["high_loss"] * end_loss:
        summary += f"; it had reached {best[1]:.3g} at step {best[0]} and got worse"
    return indicator(1, "slow_training", name, "present" if present else "absent", summary, ev, thr)


def poor_performance(run, baseline: float | None, chance: float | None) -> dict:
    name = "poor performance on the training data"
    thr = (f"regression: smoothed final loss >= {T['high_loss']} x baseline_loss; classification: accuracy "
           "closing < half the gap from chance to 1 (loss >= baseline_loss when no accuracy is logged)")
    pts = points(run)
    if baseline is None:
        return indicator(2, "poor_performance", name, NOT_MEASURABLE,
                         "no task baseline: vgrad knows the input-blind loss only of its own tasks (`vgrad run`), "
                         "so nothing says how high this model's loss is", {}, thr)
    why = too_short(pts, MIN_SPAN) if run.status != V.DIVERGED or not pts else None
    if why:  # a run of a few steps cannot have learned yet
        return indicator(2, "poor_performance", name, NOT_MEASURABLE, why, {}, thr)
    end = end_window(pts)
    loss = statistics.fmean(v for _, v in end)
    ev = {"loss_end": loss, "baseline_loss": baseline, "loss_over_baseline": loss / baseline if baseline else None,
          "end_window_steps": [end[0][0], pts[-1][0]]}
    n = len(end)
    summary = (f"training loss {loss:.3g} (mean of the last {f'{n} logged steps' if n > 1 else 'logged step'}) = "
               f"{loss / baseline:.3g}x the input-blind baseline {baseline:.3g}")
    if chance is not None:
        # Classification: accuracy decides; the loss can be dominated by a few confident mistakes.
        accs = points(run, "accuracy")
        acc = smoothed_end(accs) if accs else None
        ev.update(accuracy_end=acc, chance_accuracy=chance)
        present = acc < chance + 0.5 * (1 - chance) if acc is not None else loss >= baseline
        if acc is not None:
            summary += f"; training accuracy {acc:.2f} (majority class {chance:.2f})"
    else:
        present = loss >= T["high_loss"] * baseline
    if run.status == V.DIVERGED:
        summary = f"the run diverged at step {run.summary.get('diverged_step')}; " + summary
        present = True
    return indicator(2, "poor_performance", name, "present" if present else "absent", summary, ev, thr)
