"""Spread over seeds at init: what K fresh initialisations of one config measure at step 0.

One run's step-0 factor is one draw. At finite width the per-layer factors fluctuate, and the
fluctuation of their product grows with depth / width (Hanin 2018): ReLU + Kaiming at width 16,
depth 50 is critical in mean field, yet single seeds read anywhere from "vanishing" to healthy.
training/initspread.py measures the seeds (step 0 of the run each seed would give: its data, its
init, its first batch, through the same measurement engine); this module, numpy-free and torch-free,
summarises them: the per-layer factor as mean +- sd and [min-max], the layer-0/output delta ratio,
how each seed reads by the verdict's thresholds, and one sentence for the verdict when they disagree.
"""

from __future__ import annotations

import math
import statistics

from .verdict import EXPLODING_RATIO, VANISHING_RATIO

CSV_NAME = "init_spread.csv"


def reading(ratio: float | None) -> str:
    """How a layer-0/output delta ratio reads by the verdict's thresholds (verdict.py)."""
    if ratio is None or not math.isfinite(ratio):
        return "unknown"
    if ratio < VANISHING_RATIO:
        return "vanishing"
    if ratio > EXPLODING_RATIO:
        return "exploding"
    return "in range"


def _stats(values: list[float]) -> dict | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None
    return {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
            "median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def summarize(per_seed: list[dict], depth: int) -> dict:
    """per_seed: [{"seed", "delta_ratio", "factor", "hidden_ratio"}] (factor: the per-layer factor
    theory.measured_factor gives, over the hidden layers; hidden_ratio: d_0 / d_{depth-1}, its
    (depth-1)-th power). Returns the `init_spread` section of summary.json and diagnosis.json."""
    for s in per_seed:
        s["reading"] = reading(s.get("delta_ratio"))
    counts: dict[str, int] = {}
    for s in per_seed:
        counts[s["reading"]] = counts.get(s["reading"], 0) + 1
    out = {
        "k": len(per_seed), "seeds": [s["seed"] for s in per_seed],
        "factor": _stats([s.get("factor") for s in per_seed]),
        "delta_ratio": _stats([s.get("delta_ratio") for s in per_seed]),
        "readings": counts, "agree": len(counts) == 1,
        "per_seed": per_seed,
    }
    # Mean field predicts E[||delta_0||^2 / ||delta_{L-1}||^2] = chi_1^(L-1): the mean over draws of
    # the *squared* ratio, not the typical (median) draw. Its per-layer root is what to set
    # against theory's sqrt(chi_1); at finite width it sits above the median draw's factor.
    sq = [s["hidden_ratio"] ** 2 for s in per_seed if _ok(s.get("hidden_ratio"))]
    if sq and depth >= 2:
        out["factor_rms"] = statistics.fmean(sq) ** (1 / (2 * (depth - 1)))
    return out


def _ok(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def note(spread: dict | None, width: int | None = None, depth: int | None = None) -> str | None:
    """A sentence for the verdict when the seeds read differently at step 0, else None."""
    if not spread or spread.get("agree", True) or spread.get("k", 0) < 2:
        return None
    counts, k = spread["readings"], spread["k"]
    odd = sorted((n, r) for r, n in counts.items() if r != "in range") or [(0, "")]
    n, what = odd[-1]
    ratios = [s["delta_ratio"] for s in spread["per_seed"] if s["reading"] == what and s.get("delta_ratio") is not None]
    span = f" (delta ratio {min(ratios):.2g}-{max(ratios):.2g})" if ratios else ""
    why = "finite width (Hanin 2018), whose fluctuations grow with depth/width"
    if width and depth:
        why += f" = {depth}/{width}"
    text = f"at init {n} of {k} seeds read {what}{span}: {why}"
    rms = spread.get("factor_rms")
    if rms is not None:
        text += f" — theory predicts the average over draws (rms per-layer factor {rms:.3f}), not one draw"
    return text


def line(spread: dict | None) -> str | None:
    """One console line: the per-layer factor over the seeds and how they read."""
    if not spread:
        return None
    seeds = spread["seeds"]
    head = f"init spread over {spread['k']} seed{'s' if spread['k'] != 1 else ''} ({seeds[0]}-{seeds[-1]})"
    parts = []
    f = spread.get("factor")
    if f:
        parts.append(f"per-layer factor {f['mean']:.3f} ± {f['sd']:.3f} [{f['min']:.3f}–{f['max']:.3f}]")
    if spread.get("factor_rms") is not None:
        parts.append(f"root-mean-square {spread['factor_rms']:.3f}")
    r = spread.get("delta_ratio")
    if r:
        parts.append(f"delta ratio layer 0/output median {r['median']:.2g} [{r['min']:.2g}–{r['max']:.2g}]")
    counts = ", ".join(f"{n} {what}" for what, n in sorted(spread["readings"].items(), key=lambda x: -x[1]))
    parts.append(f"reading {counts}")
    return f"{head}: " + "; ".join(parts)


def stored(run) -> dict | None:
    """A run's init spread, as `vgrad run --init-seeds` put it into summary.json."""
    s = run.summary.get("init_spread")
    return s if isinstance(s, dict) and "per_seed" in s else None
