"""From measurements to words: first/last-layer ratios and the run's verdict.

The verdict rule (also in docs/run-format.md):
  ratio = (value at layer 0, the input side) / (value at the output layer), for grad_norm and
  delta_norm, at the first and at the last logged step. All four go into summary.json; the
  verdict reads the delta_norm ratios, the back-propagated error signal that theory speaks of.
  (grad_norm = delta x the layer's input, so it also carries the forward signal's scale: a
  residual stream that grows, or a 2-D input, moves it without any gradient vanishing.)
  Recurrent runs add the through-time ratios ||dL/dh_0|| / ||dL/dh_T-1|| of the top stacked
  layer (time_ratio_first_step, time_ratio_last_step), read the same way.
  1. status diverged (a non-finite loss)                             -> exploding
  2. a delta_norm or time ratio > EXPLODING_RATIO (100)              -> exploding
  3. grad_norm_total at a logged step > GROWTH (1000) x its step-0 value -> exploding
  4. a delta_norm or time ratio < VANISHING_RATIO (0.01)             -> vanishing
  5. otherwise                                                       -> healthy
  ("unknown" only when no step was logged at all, e.g. a run that failed before step 0.)
Two orders of magnitude is where early layers learn ~100x slower than late ones.
"""

from __future__ import annotations

import math

VANISHING_RATIO = 1e-2
EXPLODING_RATIO = 1e2
GROWTH = 1e3
VERDICT_KEYS = ("delta_norm_ratio", "time_ratio")  # the back-propagated error: across layers, through time


def first_last_ratio(rows: list[dict], column: str) -> float | None:
    """Layer 0 over the last layer for one logged step's rows (sorted by layer)."""
    if not rows:
        return None
    return _ratio(rows[0].get(column), rows[-1].get(column))


def _ratio(first, last) -> float | None:
    if first is None or last is None:
        return None
    if last == 0:
        return math.inf if first > 0 else None
    return first / last


def ratios(first_rows: list[dict], last_rows: list[dict]) -> dict:
    return {
        f"{col}_ratio_{when}_step": first_last_ratio(rows, col)
        for col in ("grad_norm", "delta_norm")
        for when, rows in (("first", first_rows), ("last", last_rows))
    }


def time_profile(time_rows: list[dict]) -> tuple[int, list[float]]:
    """The top stacked layer's ||dL/dh_t|| over t (the layer the output head reads)."""
    if not time_rows:
        return -1, []
    top = max(r["layer"] for r in time_rows)
    return top, [r["delta_norm"] for r in time_rows if r["layer"] == top]


def time_ratio(time_rows: list[dict]) -> float | None:
    """||dL/dh_first|| / ||dL/dh_last|| of the top layer, for one logged step's time.csv rows."""
    _, prof = time_profile(time_rows)
    return _ratio(prof[0], prof[-1]) if prof else None


def time_ratios(first_time: list[dict], last_time: list[dict]) -> dict:
    """time_ratio at the first and the last logged step."""
    return {f"time_ratio_{when}_step": time_ratio(rows) for when, rows in (("first", first_time), ("last", last_time))}


def sample_profile(first_time: list[dict], last_time: list[dict], points: int = 32) -> dict | None:
    """A few t values of the through-time profile, for the console and summary.json."""
    layer, first = time_profile(first_time)
    _, last = time_profile(last_time)
    if not first:
        return None
    n = len(first)
    ts = sorted({round(i * (n - 1) / (points - 1)) for i in range(points)}) if n > points else list(range(n))
    return {"layer": layer, "t": ts, "first_step": [first[t] for t in ts],
            "last_step": [last[t] for t in ts] if len(last) == n else None}


def verdict(status: str, ratio: dict, diverged_step: int | None, grad_total_growth: float | None) -> tuple[str, str]:
    if status == "diverged":
        return "exploding", f"the loss became non-finite at step {diverged_step}"
    finite = {k: v for k, v in ratio.items() if k.startswith(VERDICT_KEYS) and v is not None and not math.isnan(v)}
    if finite:
        k_hi = max(finite, key=finite.get)
        if finite[k_hi] > EXPLODING_RATIO:
            return "exploding", f"{_label(k_hi)} is {finite[k_hi]:.2g} (> {EXPLODING_RATIO:g})" + _later(k_hi, finite)
    if grad_total_growth is not None and grad_total_growth > GROWTH:
        return "exploding", f"grad_norm_total grew {grad_total_growth:.2g}x over step 0 (> {GROWTH:g}x)"
    if finite:
        k_lo = min(finite, key=finite.get)
        if finite[k_lo] < VANISHING_RATIO:
            return "vanishing", f"{_label(k_lo)} is {finite[k_lo]:.2g} (< {VANISHING_RATIO:g})" + _later(k_lo, finite)
        return "healthy", (
            f"every delta_norm ratio lies in [{VANISHING_RATIO:g}, {EXPLODING_RATIO:g}] "
            f"(lowest: {_label(k_lo)} = {finite[k_lo]:.2g})"
        )
    return "unknown", "nothing was measured (no logged step)"


def _later(key: str, finite: dict) -> str:
    """When the first step decided but training brought the same ratio back into range, say so."""
    last = finite.get(key.replace("_first_step", "_last_step")) if key.endswith("_first_step") else None
    if last is not None and VANISHING_RATIO <= last <= EXPLODING_RATIO:
        return f"; by the last step it is {last:.2g}, back in range"
    return ""


def _label(key: str) -> str:
    col, _, when = key.partition("_ratio_")
    when = when.replace("_", " ")
    if col == "time":
        return f"through-time ||dL/dh_0|| / ||dL/dh_T|| at the {when}"
    return f"layer-0/output {col} at the {when}"


def run_stats(run) -> dict:
    """A loaded run's (rundir.store.Run) summary numbers; for an unfinished run, the same read off its
    tables."""
    s = dict(run.summary)
    steps = run.steps
    if steps:
        s.setdefault("first_logged_step", steps[0])
        s.setdefault("last_logged_step", steps[-1])
        first, last = run.layer_rows(steps[0]), run.layer_rows(steps[-1])
        for col in ("grad_norm", "delta_norm"):
            for when, rows in (("first", first), ("last", last)):
                if s.get(f"{col}_ratio_{when}_step") is None:
                    s[f"{col}_ratio_{when}_step"] = first_last_ratio(rows, col)
    if run.time and steps:
        for when, step in (("first", steps[0]), ("last", steps[-1])):
            if s.get(f"time_ratio_{when}_step") is None:
                s[f"time_ratio_{when}_step"] = time_ratio(run.time_rows(step))
    if run.metrics and s.get("final_loss") is None:
        last = run.metrics[-1]
        s["final_loss"], s["final_accuracy"] = last.get("loss"), last.get("accuracy")
        evals = [m for m in run.metrics if m.get("eval_loss") is not None]
        if evals:
            s["final_eval_loss"], s["final_eval_accuracy"] = evals[-1]["eval_loss"], evals[-1].get("eval_accuracy")
    if run.metrics and s.get("wall_time_s") is None:
        s["wall_time_s"] = run.metrics[-1].get("time_s")
    return s
