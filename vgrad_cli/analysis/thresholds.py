"""The indicators' thresholds and the shape of one indicator's result (indicators.py, losses.py,
units.py and ablation.py all return it).

Thresholds live in THRESHOLDS (docs/diagnose.md explains each); they were set on the bundled configs
so that the healthy ones (03, 05, 06, 08, 15) show nothing.
"""

from __future__ import annotations

import math

from .verdict import EXPLODING_RATIO, GROWTH, VANISHING_RATIO

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
NOT_MEASURABLE = "not measurable"


def indicator(id_, key, name, status, summary, evidence, threshold) -> dict:
    return {"id": id_, "key": key, "name": name, "status": status, "summary": summary,
            "evidence": evidence, "threshold": threshold}


def finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def span(k: int) -> str:
    return "layer 0" if k == 1 else f"layers 0-{k - 1}"


def n_early(n_hidden: int) -> int:
    """'Early layers': the first third of the hidden layers (at least one)."""
    return max(1, round(n_hidden / 3))
