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

from ..vocab import BELOW_KEY
from .verdict import BELOW_SHORT, EXPLODING_RATIO, VANISHING_RATIO, judged_time_ratio



def reading(*ratios: float | None) -> str:
    """How a seed's step-0 ratios (layer-0/output delta ratio, through-time ratio) read by the
    verdict's thresholds (verdict.py): vanishing if one is below, exploding if one is above."""
    known = [r for r in ratios if r is not None and math.isfinite(r)]
    if not known:
        return "unknown"
    if min(known) < VANISHING_RATIO:
        return "vanishing"
    if max(known) > EXPLODING_RATIO:
        return "exploding"
    return "in range"


def _judged(entry: dict) -> list:
    """The ratios the verdict reads for this seed: across layers (not for a one-layer recurrent net,
    whose 'layer 0 / output' is the recurrent layer against its head: indicators.py) and through time."""
    across = entry.get("delta_ratio") if entry.get("across_layers", True) else None
    return [across, judged_time_ratio(entry.get("time_ratio"), entry.get("cell_ratio"))]


def _stats(values: list[float]) -> dict | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None
    return {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
            "median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def summarize(per_seed: list[dict], depth: int, ends: str = "layer 0/output") -> dict:
    """per_seed: [{"seed", "delta_ratio", "factor", "hidden_ratio"}] (factor: the per-layer factor
    theory.measured_factor gives over verdict.factor_span's `depth` hidden rows; hidden_ratio:
    d_0 / d_{depth-1} over them, its (depth-1)-th power); ends: verdict.ends_label, what the delta
    ratio compares. Returns the `init_spread` section of summary.json and diagnosis.json."""
    for s in per_seed:  # a ratio below float32's range is far below VANISHING_RATIO
        s["reading"] = "vanishing" if s.get(BELOW_KEY) else reading(*_judged(s))
    counts: dict[str, int] = {}
    for s in per_seed:
        counts[s["reading"]] = counts.get(s["reading"], 0) + 1
    out = {
        "k": len(per_seed), "seeds": [s["seed"] for s in per_seed], "ends": ends,
        "factor": _stats([s.get("factor") for s in per_seed]),
        "delta_ratio": _stats([s.get("delta_ratio") for s in per_seed]),
        "delta_ratio_below_float32": sum(bool(s.get(BELOW_KEY)) for s in per_seed),
        "time_ratio": _stats([s.get("time_ratio") for s in per_seed]),
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
    odd_seeds = [s for s in spread["per_seed"] if s["reading"] == what]
    pick = min if what == "vanishing" else max  # the ratio that decided each seed's reading
    ratios = [pick(rs) for s in odd_seeds if (rs := [r for r in _judged(s) if r is not None and math.isfinite(r)])]
    recurrent = any(s.get("time_ratio") is not None for s in odd_seeds)
    name = "delta or through-time ratio" if recurrent else "delta ratio"
    span = f" ({name} {min(ratios):.2g}-{max(ratios):.2g})" if ratios else ""
    why = "finite width (Hanin 2018), whose fluctuations grow with depth/width"
    if recurrent:  # the product runs over time steps too: depth/width says less
        why = "finite width (Hanin 2018): a product of random Jacobians, over layers and time steps, fluctuates"
    elif width and depth:
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
    ends = spread.get("ends", "layer 0/output")  # stored before the key existed: an MLP's
    for key, what in (("delta_ratio", f"delta ratio {ends}"), ("time_ratio", "through-time ratio")):
        r, below = spread.get(key), spread.get(f"{key}_below_float32") or 0
        text = f"median {r['median']:.2g} [{r['min']:.2g}–{r['max']:.2g}]" if r else ""
        if below:  # no number for these seeds: float32 lost layer 0's delta, which is not 0
            text = f"{BELOW_SHORT} (float32) for {below} of {spread['k']} seeds" + (f", the others {text}" if r else "")
        if text:
            parts.append(f"{what} {text}")
    counts = ", ".join(f"{n} {what}" for what, n in sorted(spread["readings"].items(), key=lambda x: -x[1]))
    parts.append(f"reading {counts}")
    return f"{head}: " + "; ".join(parts)


def stored(run) -> dict | None:
    """A run's init spread, as `vgrad run --init-seeds` put it into summary.json."""
    s = run.summary.get("init_spread")
    return s if isinstance(s, dict) and "per_seed" in s else None
