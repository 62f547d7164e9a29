"""Mean-field prediction of the per-layer gradient factor of a plain MLP (numpy only, no torch).

Poole et al. 2016, Schoenholz et al. 2017: for a wide MLP with weights N(0, sigma_w^2 / fan_in) and
biases N(0, sigma_b^2), the pre-activation variance follows

    q^l = sigma_w^2 E[phi(sqrt(q^{l-1}) z)^2] + sigma_b^2,   z ~ N(0, 1),

towards a fixed point q*, and the squared back-propagated error ||delta||^2 changes by

    chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]

per layer going backward. So ||delta|| changes by sqrt(chi_1) per layer (the number `delta_norm`
in layers.csv measures), and ||delta||^2 by a factor e every xi = -1/ln(chi_1) layers (the depth
scale; infinite at chi_1 = 1, the critical point).

Constant biases. vgrad's `model.bias_init` is one number b for every unit, not a random N(0, sigma_b^2)
draw. Unit i of layer l+1 sees z_i = sum_j W_ij phi(z_j) + b: over the (zero-mean, independent)
weights of row i that is Gaussian with mean b and variance (sigma_w^2 / n) sum_j phi(z_j)^2 =
sigma_w^2 E[phi(z)^2] -- the second moment of the activation, not its variance: the activation's
mean reaches the next layer only through zero-mean weights, so it adds variance, never a mean. Hence

    z^l ~ N(b, q^l),   q^{l+1} = sigma_w^2 E[phi(b + sqrt(q^l) u)^2],   chi^l = sigma_w^2 E[phi'(b + sqrt(q^l) u)^2].

Treating b as a centred variable of variance b^2 (q + b^2 inside a centred Gaussian) is wrong by up
to 26 % at b = 0.3 (ReLU, torch's default init: 0.408 instead of 0.555 per layer).

Finite depth. The first hidden layer sees the data: q^0 = sigma_w0^2 * m_x, with m_x the mean of x^2
over the training inputs (per input unit) and sigma_w0^2 the first layer's weight scale at fan-in =
the input's dimension. `trajectory` iterates the map for the run's `depth` layers; the at-depth
factor is the geometric mean of sqrt(chi^l) over l = 0 .. depth-2, which is exactly what the
measured factor (d_0 / d_{depth-1})^(1/(depth-1)) estimates, since d_l / d_{l+1} = sqrt(chi^l) (the
derivative at layer l, the weights of layer l+1). Where q* = 0 (tanh + Xavier, GELU/SiLU + Kaiming)
q approaches it slowly and a finite net never gets there: trust the at-depth figure for the net
you have, the fixed point for the limit of a very deep one.

Batch norm has its own map: theory_bn.py (for_model picks it).

Approximations, said where they are made:
- only the weight *variance* matters (uniform and orthogonal inits count by their variance);
- wide layers (Hanin 2018: fluctuations grow like depth/width), one Gaussian per layer with the
  input's mean second moment (examples whose norms differ much follow different trajectories).
"""

from __future__ import annotations

import math
from pathlib import Path

from .gaussian import KINKED, PHI, gaussian_mean  # noqa: F401 - PHI, gaussian_mean: also this module's API
from .theory_bn import bn_chi, small_batch_note
from .. import vocab as V

# torch.nn.init.calculate_gain for each activation's `gain` in activations.py, as numbers so that
# this module needs no torch (tests/test_theory.py checks them against torch).
KAIMING_GAIN = {
    "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)), "prelu": math.sqrt(2.0 / (1 + 0.25**2)),
    "elu": math.sqrt(2.0), "gelu": math.sqrt(2.0), "silu": math.sqrt(2.0), "selu": 1.0, "linear": 1.0,
}
DEFAULT_NORMAL_STD, DEFAULT_UNIFORM_BOUND = 0.01, 0.05  # = inits.py's (no import: it is torch-side)


def sigma_w2(init: str, activation: str, init_std: float | None, fan_in: int, fan_out: int) -> float | None:
    """sigma_w^2 = fan_in * Var(W_ij) for one layer; None where it is not a variance (identity)."""
    if init in ("kaiming_normal", "kaiming_uniform"):
        gain = KAIMING_GAIN[activation] if init_std is None else init_std
        return gain**2
    gain = 1.0 if init_std is None else init_std
    if init in ("xavier_normal", "xavier_uniform"):
        return gain**2 * 2 * fan_in / (fan_in + fan_out)
    if init == "lecun_normal":
        return gain**2
    if init == "orthogonal":  # orthonormal rows (or columns, if fewer): entry variance gain^2 / max(fan)
        return gain**2 * min(1.0, fan_in / fan_out)
    if init == "default":  # torch's nn.Linear: kaiming_uniform(a=sqrt(5)) -> Var = 1/(3 fan_in)
        return 1.0 / 3
    if init == "normal":
        std = DEFAULT_NORMAL_STD if init_std is None else init_std
        return std**2 * fan_in
    if init == "uniform":
        b = DEFAULT_UNIFORM_BOUND if init_std is None else init_std
        return b**2 / 3 * fan_in
    return None  # identity (and anything unknown): not a random matrix


def variance_map(activation: str, sw2: float, q: float, bias: float = 0.0, sb2: float = 0.0) -> float:
    """q^{l+1} from q^l: z ~ N(bias, q) in, the next layer's pre-activation variance out."""
    return sw2 * gaussian_mean(lambda x: PHI[activation][0](x) ** 2, q, activation in KINKED, bias) + sb2


def fixed_point(activation: str, sw2: float, sb2: float, q0: float = 1.0, tol: float = 1e-10,
                max_iter: int = 10000, bias: float = 0.0) -> tuple[float, str]:
    """Iterate the variance map from q0 towards its fixed point. Returns (q*, how): how is
    'converged', 'to zero' (q* = 0), 'diverges' (q grows without bound; for ReLU-like and linear
    activations chi_1 does not depend on q, so the prediction holds anyway), or 'still rising' /
    'still falling' when q creeps (power-law, not geometric) after max_iter layers: the last q
    is returned, i.e. the state of a very deep network."""
    q = q0
    for _ in range(max_iter):
        new = variance_map(activation, sw2, q, bias, sb2)
        if new > 1e12:
            return new, "diverges"
        if new < 1e-12:
            return 0.0, "to zero"
        if abs(new - q) <= tol * max(q, 1e-12):
            return new, "converged"
        q, last_change = new, new - q
    return q, "still rising" if last_change > 0 else "still falling"


def chi_1(activation: str, sw2: float, q: float, bias: float = 0.0) -> float:
    """sigma_w^2 E[phi'(z)^2], z ~ N(bias, q) (at q = 0 and a kink: ReLU's phi'(0)^2 taken as 1/2)."""
    dphi = PHI[activation][1]
    return sw2 * gaussian_mean(lambda x: dphi(x) ** 2, q, activation in KINKED, bias)


def regime(chi: float) -> str:
    return "critical" if abs(chi - 1) < 0.02 else ("vanishing" if chi < 1 else "exploding")


def regime_over(factor: float | None, depth: int) -> str | None:
    """The regime of a net of this depth: critical while ||delta|| changes by less than a factor e
    over its hidden layers (its depth is within twice the depth scale), else vanishing/exploding."""
    if factor is None:
        return None
    change = (depth - 1) * (math.log(factor) if factor > 0 else -math.inf)
    return "critical" if abs(change) <= 1 else ("vanishing" if change < 0 else "exploding")


def depth_scale(chi: float) -> float | None:
    """xi = 1/|ln chi_1|: layers over which ||delta||^2 shrinks (chi_1 < 1, Schoenholz's -1/ln chi_1)
    or grows (chi_1 > 1) by a factor e; None = infinite (critical, chi_1 = 1)."""
    ln = math.log(chi) if chi > 0 else -math.inf
    return (1.0 / abs(ln)) if abs(ln) > 1e-9 else None


def predict(activation: str, sw2: float, sb2: float = 0.0, depth: int | None = None, bias: float = 0.0) -> dict:
    """The fixed-point numbers for one (activation, sigma_w^2, random-bias variance sigma_b^2,
    constant bias)."""
    q, how = fixed_point(activation, sw2, sb2, bias=bias)
    return {"sigma_w2": sw2, "sigma_b2": sb2, "bias": bias, "q_star": q, "q_star_how": how,
            **_numbers(chi_1(activation, sw2, q, bias), depth or 0)}


def trajectory(activation: str, sw2: float, q0: float, depth: int, bias: float = 0.0, sb2: float = 0.0) -> dict:
    """The variance map iterated from the first hidden layer's q0 for `depth` layers: q^l and the
    per-layer factor sqrt(chi^l) = d_l / d_{l+1} for l = 0 .. depth-2, and their geometric mean
    `factor_at_depth` (None for depth 1: no ratio between hidden layers)."""
    qs, factors = [q0], []
    for _ in range(depth - 1):
        factors.append(math.sqrt(chi_1(activation, sw2, qs[-1], bias)))
        qs.append(min(variance_map(activation, sw2, qs[-1], bias, sb2), 1e300))
    logs = [math.log(f) if f > 0 else -math.inf for f in factors]
    at = math.exp(sum(logs) / len(logs)) if logs else None  # exp(-inf) = 0: a layer that passes nothing
    return {"factor_at_depth": at, "regime_at_depth": regime_over(at, depth),
            "q_in": q0, "q_trajectory": qs, "factor_trajectory": factors}


def not_applicable(model: dict) -> str | None:
    """Why mean-field theory (as implemented) does not describe this model, or None if it does."""
    if model.get("kind") == "custom":
        return f"a model of your own ({model.get('class', '?')}): vgrad does not know its architecture"
    if model.get("kind") == "transformer":
        return ("model.kind transformer: mean-field theory here follows one random matrix and a pointwise "
                "activation per layer; attention mixes time steps with data-dependent softmax weights and "
                "LayerNorm re-scales every block, so no per-layer factor is predicted (Xiong et al. 2020 "
                "bound a Transformer's gradients at init instead)")
    if model.get("kind", "mlp") not in ("mlp", "cnn"):
        return f"model.kind {model.get('kind')}: the theory here is for plain MLPs and CNNs (recurrent weights are shared across time)"
    if model.get("norm", "none") not in (None, "none", "batch"):
        return (f"model.norm {model.get('norm')}: normalization re-scales every layer, the variance map no longer "
                "applies (vgrad's theory covers plain MLPs and batch norm)")
    if model.get("residual"):
        return "model.residual: skip connections add an identity path the plain-MLP theory does not have"
    if model.get("activation") not in PHI:
        return f"activation {model.get('activation')!r} has no phi/phi' here"
    if sigma_w2(model.get("init", "default"), model["activation"], model.get("init_std"), 2, 2) is None:
        return f"model.init {model.get('init')}: not a random init, so no weight variance"
    return None


def for_model(model: dict, data: dict | None = None) -> dict:
    """The prediction for a resolved `model:` config section (hidden layers: fan_in = fan_out = width;
    a CNN's 3x3 convolutions: 9 x width each, the same theory with that fan, zero-padded borders aside).

    data (run_data(): the task's `input_dim` and `input_second_moment`, the `batch_size`) adds the
    prediction at the model's depth; without it only the fixed point is known."""
    reason = not_applicable(model)
    if reason:
        return {"applicable": False, "reason": reason}
    data = data or {}
    width, act, init = int(model.get("width", 64)), model["activation"], model.get("init", "default")
    depth = int(model.get("depth", 1))
    head = {"applicable": True, "activation": act, "init": init}
    if model.get("norm") == "batch":
        chi = bn_chi(act)
        return {**head, **_numbers(chi, depth), "theory": "batch norm at large batch, Yang et al. 2019",
                "factor_at_depth": math.sqrt(chi) if depth >= 2 else None,
                "regime_at_depth": regime_over(math.sqrt(chi), depth) if depth >= 2 else None,
                "note": _join(small_batch_note(data.get("batch_size")), _conv_bn_note(model))}
    kernel = 9 if model.get("kind") == "cnn" else 1  # a conv weight's fan counts its 3x3 kernel
    sw2 = sigma_w2(init, act, model.get("init_std"), kernel * width, kernel * width)
    bias = float(model.get("bias_init") or 0.0)
    net = "plain CNN, fan_in 9 x channels" if kernel == 9 else "plain MLP"
    out = {**head, "theory": f"mean field, {net} (Poole et al. 2016; Schoenholz et al. 2017)",
           **predict(act, sw2, 0.0, depth, bias)}
    m_x, n_in = data.get("input_second_moment"), data.get("input_dim")
    if m_x is None or n_in is None:
        return {**out, "factor_at_depth": None,
                "note": "the run does not record its input's second moment: only the fixed point is predicted"}
    sw2_in = sigma_w2(init, act, model.get("init_std"), kernel * int(n_in), kernel * width)  # the first layer sees the data
    out.update(trajectory(act, sw2, sw2_in * float(m_x), depth, bias))
    if out["factor_trajectory"]:  # d_0 / d_{depth-1} along the net's own trajectory, not the fixed point's
        out["predicted_first_last_hidden"] = math.prod(out["factor_trajectory"])
        out["predicted_first_last_hidden_from"] = "trajectory"
    out["note"] = _which_to_trust(out, depth)
    return out


def _conv_bn_note(model: dict) -> str | None:
    """BatchNorm2d averages over the batch *and* the pixels, and neighbouring pixels of a conv output are
    correlated; the theory treats every normalised value as independent."""
    if model.get("kind") != "cnn":
        return None
    return ("a CNN: BatchNorm2d normalises each channel over the batch and every pixel, and neighbouring "
            "pixels are correlated, which this theory does not model: measured at step 0, 1 % below it for "
            "ReLU (configs/20) but 8-11 % below for sigmoid (configs/18 with batch norm, width 64)")


def _join(*notes) -> str | None:
    return "; ".join(n for n in notes if n) or None


def _numbers(chi: float, depth: int) -> dict:
    out = {"chi_1": chi, "factor": math.sqrt(chi), "depth_scale": depth_scale(chi), "regime": regime(chi)}
    if depth >= 2:  # for_model replaces it by the at-depth trajectory's product where it has the data
        out["predicted_first_last_hidden"] = math.sqrt(chi) ** (depth - 1)
        out["predicted_first_last_hidden_from"] = "fixed point"
    return out


def _which_to_trust(th: dict, depth: int) -> str | None:
    """Where the fixed point and the at-depth prediction disagree by more than 5 %, which to believe."""
    at, fixed = th.get("factor_at_depth"), th["factor"]
    if at is None or fixed <= 0 or abs(at / fixed - 1) <= 0.05:
        return None
    qs = th["q_trajectory"]
    return (f"the fixed point ({fixed:.3f}, q* {th['q_star']:.3g}) and the prediction for this depth ({at:.3f}) "
            f"differ by {100 * abs(at / fixed - 1):.0f} %: trust {at:.3f} for this {depth}-layer net, whose "
            f"pre-activation variance goes from {qs[0]:.3g} (the data) to {qs[-1]:.3g}, not to q*; the fixed "
            "point describes the limit of a much deeper net")


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
    sqrt(chi_1), `depth_scale`, `chi_1`, `q_star`, ..., `factor_at_depth`), `measured_factor` at
    the first logged step, `measured_over_predicted` and `measured_over_at_depth`."""
    import json

    import yaml

    from ..rundir.files import read_table

    run = Path(run_dir)
    try:
        cfg = yaml.safe_load((run / V.CONFIG_YAML).read_text(encoding="utf-8")) or {}
        rows = read_table(run, V.LAYERS_CSV)
    except Exception:  # noqa: BLE001 - a reader for tables: an unreadable run has no theory row
        return None
    try:
        summary = json.loads((run / V.SUMMARY_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {}  # the prediction at depth needs it; the fixed point does not
    model = cfg.get("model") or {}
    out = for_model(model, run_data(cfg, summary if isinstance(summary, dict) else {}))
    if not out["applicable"]:
        return out
    steps = [r["step"] for r in rows if isinstance(r.get("step"), int)]
    first = [r for r in rows if r.get("step") == min(steps)] if steps else []
    first = _float64_if_underflowed(run, sorted(first, key=lambda r: r["layer"]))
    m = measured_factor(first, int(model.get("depth", 1)))
    at = out.get("factor_at_depth")
    out.update(measured_step=min(steps) if steps else None, measured_factor=m,
               measured_over_predicted=(m / out["factor"]) if m is not None and out["factor"] > 0 else None,
               measured_over_at_depth=(m / at) if m is not None and at else None)
    return out


def _float64_if_underflowed(run: Path, first: list[dict]) -> list[dict]:
    """Step 0's rows, from layers_float64.csv where float32 lost layer 0's delta (as diagnose does)."""
    from ..rundir.files import read_table
    from .verdict import underflowed

    if not first or first[0].get("step") != 0 or not underflowed(first, 0):
        return first
    try:
        return sorted(read_table(run, V.FLOAT64_CSV), key=lambda r: r["layer"])
    except Exception:  # noqa: BLE001 - not measured again (or unreadable): no factor, as before
        return first


def run_data(cfg: dict, summary: dict) -> dict:
    """What the theory needs from a run besides its model: the data its first layer sees (written
    to summary.json by the runner) and the batch size."""
    return {"input_dim": summary.get("input_dim"), "input_second_moment": summary.get("input_second_moment"),
            "batch_size": (cfg.get("train") or {}).get("batch_size")}


def theory_columns(path) -> dict:
    """Theory's per-layer factor (fixed point; at the run's depth) next to the measured delta_norm
    factor at step 0 (plain and batch-norm MLPs)."""
    th = theory_for_run(path) or {}
    if not th.get("applicable"):
        return {}
    return {"theory_factor": th.get("factor"), "measured_factor": th.get("measured_factor"),
            "theory_depth_scale": th.get("depth_scale"), "theory_factor_at_depth": th.get("factor_at_depth")}
