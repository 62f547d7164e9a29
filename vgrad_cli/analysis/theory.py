"""Mean-field prediction of the per-layer gradient factor of a plain MLP (numpy only, no torch).

Poole et al. 2016, Schoenholz et al. 2017: for a wide MLP with weights N(0, sigma_w^2 / fan_in) and
biases N(0, sigma_b^2), the pre-activation variance follows

    q^l = sigma_w^2 E[phi(sqrt(q^{l-1}) z)^2] + sigma_b^2,   z ~ N(0, 1),

towards a fixed point q*, and the squared back-propagated error ||delta||^2 changes by

    chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]

per layer going backward. So ||delta|| changes by sqrt(chi_1) per layer (the number `delta_norm`
in layers.csv measures), and ||delta||^2 by a factor e every xi = -1/ln(chi_1) layers (the depth
scale; infinite at chi_1 = 1, the critical point).

Approximations, said where they are made:
- only the weight *variance* matters (uniform and orthogonal inits count by their variance);
- vgrad's biases are a constant `model.bias_init`, not random: we use sigma_b^2 = bias_init^2,
  which puts the bias into the second moment of z but treats z as centred;
- the prediction is at the fixed point; a network starts at its input's variance and needs a few
  layers to get there (slowly, like 1/l, where the fixed point is q* = 0, e.g. tanh at sigma_w = 1).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from numpy.polynomial.legendre import leggauss

# Gauss-Hermite (probabilists') nodes and weights: E[f(z)] ~ sum w_i f(x_i) / sqrt(2 pi), exact
# for polynomials and fast for smooth f. Across a kink it converges only like 1/n (ELU: 1e-3 at
# 160 nodes), so activations with a kink at 0 integrate each half-line on its own, where the
# integrand is smooth: Gauss-Legendre on [0, 12] of f(+-x) * pdf(x) (the tail beyond 12 is < 1e-32).
_NODES, _WEIGHTS = hermegauss(120)
_WEIGHTS = _WEIGHTS / math.sqrt(2 * math.pi)
_LX, _LW = leggauss(160)
_HALF_X = 6.0 * (_LX + 1)  # [0, 12]
_HALF_W = 6.0 * _LW * np.exp(-_HALF_X**2 / 2) / math.sqrt(2 * math.pi)
KINKED = ("relu", "leaky_relu", "prelu", "elu", "selu")

SELU_LAMBDA = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))  # overflow-free


def _normal_cdf(x):
    from math import erf

    return 0.5 * (1 + np.vectorize(erf)(x / math.sqrt(2)))


def _leaky(slope):
    return (lambda x: np.where(x > 0, x, slope * x), lambda x: np.where(x > 0, 1.0, slope))


# name -> (phi, phi'), for every activation in activations.py (prelu: its slope at init, 0.25).
PHI = {
    "sigmoid": (_sigmoid, lambda x: _sigmoid(x) * (1 - _sigmoid(x))),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "relu": _leaky(0.0),
    "leaky_relu": _leaky(0.01),
    "prelu": _leaky(0.25),
    "elu": (lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))), lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))),
    "gelu": (lambda x: x * _normal_cdf(x), lambda x: _normal_cdf(x) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    "silu": (lambda x: x * _sigmoid(x), lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x)))),
    "selu": (lambda x: SELU_LAMBDA * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
             lambda x: SELU_LAMBDA * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0)))),
    "linear": (lambda x: x, lambda x: np.ones_like(x)),
}

# torch.nn.init.calculate_gain for each activation's `gain` in activations.py, as numbers so that
# this module needs no torch (tests/test_theory.py checks them against torch).
KAIMING_GAIN = {
    "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)), "prelu": math.sqrt(2.0 / (1 + 0.25**2)),
    "elu": math.sqrt(2.0), "gelu": math.sqrt(2.0), "silu": math.sqrt(2.0), "selu": 1.0, "linear": 1.0,
}
DEFAULT_NORMAL_STD, DEFAULT_UNIFORM_BOUND = 0.01, 0.05  # = inits.py's (no import: it is torch-side)


def gaussian_mean(f, q: float, kinked: bool = False) -> float:
    """E[f(sqrt(q) z)], z ~ N(0, 1): Gauss-Hermite, or per half-line where f has a kink at 0."""
    s = math.sqrt(q)
    if kinked:
        return float(np.dot(_HALF_W, f(s * _HALF_X) + f(-s * _HALF_X)))
    return float(np.dot(_WEIGHTS, f(s * _NODES)))


def sigma_w2(init: str, activation: str, init_std: float | None, fan_in: int, fan_out: int) -> float | None:
    """sigma_w^2 = fan_in * Var(W_ij) for one layer; None where it is not a variance (identity)."""
    if init in ("kaiming_normal", "kaiming_uniform"):
        gain = KAIMING_GAIN[activation] if init_std is None else init_std
        return gain**2
    gain = 1.0 if init_std is None else init_std
    if init in ("xavier_normal", "xavier_uniform"):
        return gain**2 * 2 * fan_in / (fan_in + fan_out)
    if init in ("lecun_normal", "orthogonal"):  # orthogonal: rows of norm gain, so variance gain^2/n
        return gain**2
    if init == "default":  # torch's nn.Linear: kaiming_uniform(a=sqrt(5)) -> Var = 1/(3 fan_in)
        return 1.0 / 3
    if init == "normal":
        std = DEFAULT_NORMAL_STD if init_std is None else init_std
        return std**2 * fan_in
    if init == "uniform":
        b = DEFAULT_UNIFORM_BOUND if init_std is None else init_std
        return b**2 / 3 * fan_in
    return None  # identity (and anything unknown): not a random matrix


def fixed_point(activation: str, sw2: float, sb2: float, q0: float = 1.0, tol: float = 1e-10,
                max_iter: int = 10000) -> tuple[float, str]:
    """Iterate the variance map from q0 towards its fixed point. Returns (q*, how): how is
    'converged', 'to zero' (q* = 0), 'diverges' (q grows without bound; for ReLU-like and linear
    activations chi_1 does not depend on q, so the prediction holds anyway), or 'still rising' /
    'still falling' when q creeps (power-law, not geometric) after max_iter layers: the last q
    is returned, i.e. the state of a very deep network."""
    phi = PHI[activation][0]
    q = q0
    for _ in range(max_iter):
        new = sw2 * gaussian_mean(lambda x: phi(x) ** 2, q, activation in KINKED) + sb2
        if new > 1e12:
            return new, "diverges"
        if new < 1e-12:
            return 0.0, "to zero"
        if abs(new - q) <= tol * max(q, 1e-12):
            return new, "converged"
        q, last_change = new, new - q
    return q, "still rising" if last_change > 0 else "still falling"


def chi_1(activation: str, sw2: float, q: float) -> float:
    dphi = PHI[activation][1]
    if q <= 0:  # z is exactly 0: phi'(0)^2 (ReLU's kink taken as 1/2 of the unit, its mean)
        return sw2 * float(np.mean(dphi(np.array([-1e-12, 1e-12])) ** 2))
    return sw2 * gaussian_mean(lambda x: dphi(x) ** 2, q, activation in KINKED)


def predict(activation: str, sw2: float, sb2: float = 0.0, depth: int | None = None) -> dict:
    """The mean-field numbers for one (activation, sigma_w^2, sigma_b^2)."""
    q, how = fixed_point(activation, sw2, sb2)
    chi = chi_1(activation, sw2, q)
    ln = math.log(chi) if chi > 0 else -math.inf
    out = {
        "sigma_w2": sw2, "sigma_b2": sb2, "q_star": q, "q_star_how": how, "chi_1": chi,
        "factor": math.sqrt(chi),
        # xi = 1/|ln chi_1|: layers over which ||delta||^2 shrinks (chi_1 < 1, Schoenholz's
        # -1/ln chi_1) or grows (chi_1 > 1) by a factor e; None = infinite (critical, chi_1 = 1)
        "depth_scale": (1.0 / abs(ln)) if abs(ln) > 1e-9 else None,
        "regime": "critical" if abs(chi - 1) < 0.02 else ("vanishing" if chi < 1 else "exploding"),
    }
    if depth is not None and depth >= 2:
        out["predicted_first_last_hidden"] = math.sqrt(chi) ** (depth - 1)
    return out


def not_applicable(model: dict) -> str | None:
    """Why mean-field theory (as implemented) does not describe this model, or None if it does."""
    if model.get("kind") == "custom":
        return f"a model of your own ({model.get('class', '?')}): vgrad does not know its architecture"
    if model.get("kind") == "transformer":
        return ("model.kind transformer: mean-field theory here follows one random matrix and a pointwise "
                "activation per layer; attention mixes time steps with data-dependent softmax weights and "
                "LayerNorm re-scales every block, so no per-layer factor is predicted (Xiong et al. 2020 "
                "bound a Transformer's gradients at init instead)")
    if model.get("kind", "mlp") != "mlp":
        return f"model.kind {model.get('kind')}: the theory here is for plain MLPs (recurrent weights are shared across time)"
    if model.get("norm", "none") not in (None, "none"):
        return f"model.norm {model.get('norm')}: normalization re-scales every layer, the variance map no longer applies"
    if model.get("residual"):
        return "model.residual: skip connections add an identity path the plain-MLP theory does not have"
    if model.get("activation") not in PHI:
        return f"activation {model.get('activation')!r} has no phi/phi' here"
    if sigma_w2(model.get("init", "default"), model["activation"], model.get("init_std"), 2, 2) is None:
        return f"model.init {model.get('init')}: not a random init, so no weight variance"
    return None


def for_model(model: dict) -> dict:
    """The prediction for a resolved `model:` config section (hidden layers: fan_in = fan_out = width)."""
    reason = not_applicable(model)
    if reason:
        return {"applicable": False, "reason": reason}
    width, act = int(model.get("width", 64)), model["activation"]
    sw2 = sigma_w2(model.get("init", "default"), act, model.get("init_std"), width, width)
    sb2 = float(model.get("bias_init") or 0.0) ** 2
    return {"applicable": True, "activation": act, "init": model.get("init", "default"),
            **predict(act, sw2, sb2, int(model.get("depth", 1)))}


def measured_factor(rows: list[dict], depth: int) -> float | None:
    """Geometric mean of delta_norm ratios between consecutive hidden layers (layer l over layer
    l+1, so < 1 means it shrinks going backward): (d_0 / d_{depth-1})^(1/(depth-1))."""
    d = [r.get("delta_norm") for r in sorted(rows, key=lambda r: r["layer"])][:depth]
    if depth < 2 or len(d) < depth or any(v is None or not v > 0 or not math.isfinite(v) for v in (d[0], d[-1])):
        return None
    return (d[0] / d[-1]) ** (1.0 / (depth - 1))


def theory_for_run(run_dir) -> dict | None:
    """Predicted and measured per-layer factor of a run (for diagnose, compare, sweep).

    Returns None when the run has no readable config.yaml or layers.csv; otherwise a dict with
    `applicable` (False + `reason` for norm/residual/recurrent models), the prediction (`factor` =
    sqrt(chi_1), `depth_scale`, `chi_1`, `q_star`, ...), `measured_factor` at the first logged step
    and `measured_over_predicted`."""
    import yaml

    from ..rundir.files import read_table

    run = Path(run_dir)
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
        rows = read_table(run, "layers.csv")
    except Exception:  # noqa: BLE001 - a reader for tables: an unreadable run has no theory row
        return None
    model = cfg.get("model") or {}
    out = for_model(model)
    if not out["applicable"]:
        return out
    steps = [r["step"] for r in rows if isinstance(r.get("step"), int)]
    first = [r for r in rows if r.get("step") == min(steps)] if steps else []
    m = measured_factor(first, int(model.get("depth", 1)))
    out.update(measured_step=min(steps) if steps else None, measured_factor=m,
               measured_over_predicted=(m / out["factor"]) if m is not None and out["factor"] > 0 else None)
    return out


def theory_columns(path) -> dict:
    """Mean-field prediction next to the measured per-layer delta_norm factor at step 0 (plain MLPs)."""
    th = theory_for_run(path) or {}
    if not th.get("applicable"):
        return {}
    return {"theory_factor": th.get("factor"), "measured_factor": th.get("measured_factor"),
            "theory_depth_scale": th.get("depth_scale")}
