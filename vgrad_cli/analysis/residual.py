"""Residual MLPs (and CNNs) without normalisation: the forward stream's growth (theory and
measurement) and a scale-invariant gradient ratio for the verdict (numpy only, no torch).

vgrad's residual MLP (models/mlp.py): h_1 = phi(W_0 x + b) (block 0 has no skip), then for blocks
l = 1 .. depth-1

    h_{l+1} = h_l + s * a_l,   a_l = phi(z_l),   z_l = W_l h_l + b,   W_l ~ (0, sigma_w^2 / width),

s = model.residual_scale. In the wide limit (Yang & Schoenholz 2017, here for vgrad's block: no
output weight on the branch, a constant bias b), z_l given the stream is N(b, sigma_w^2 m_l) with
m_l = E[h_l^2], the stream's second moment per unit, and z_l is independent of the same unit's h_l.
So, with mu_l = E[h_l],

    m_{l+1}  = m_l + 2 s mu_l E[phi(z_l)] + s^2 E[phi(z_l)^2]
    mu_{l+1} = mu_l + s E[phi(z_l)].

Unlike a plain net's variance map this has no fixed point: every block adds to the stream. For
ReLU + Kaiming (sigma_w^2 = 2), s = 1: m grows by 2 + 2 mu/sqrt(pi m) per block (2.6 at first, then
2.9: x1.7 in RMS), so 19 blocks multiply the stream's RMS by ~2e4. s = 1/sqrt(depth) makes a centred
branch add m/depth per block (a factor e over the whole depth); ReLU's positive mean adds more, x9
in RMS over 19 blocks at depth 20.

Where the stream grows, delta = dL/dz shrinks toward the output in proportion (z scales with the
stream), so delta's layer-0/output ratio measures the stream, not the gradient. ||dL/dW|| / ||W||
(the relative gradient, grad_norm / weight_norm in layers.csv; it is what an SGD step changes a
layer by, relative to its size, per unit of learning rate) does not depend on the stream's scale:
it is the ratio the verdict uses for these nets (layer 0 over the last hidden layer: the output
layer's weights have another gain and fan-in, and it reads the whole stream).

A residual CNN without norm (models/cnn.py: h <- h + s * phi(conv(h) + b)) gets the same reading:
the ratio runs conv0 / last conv block (verdict.ends()), and act_mean / act_std, though measured per
channel, pool into the layer's mean and total variance (measure/probes.py), so act_rms is the RMS
over batch, channels and pixels. The *prediction* stays MLP-only: a 3x3 conv has the same recursion
with fan_in = 9 x channels, but zero padding feeds border pixels fewer inputs, and on the real net
it overshoots (CNN_PREDICTION says by how much), so diagnose says so instead of quoting it.
"""

from __future__ import annotations

import math


from . import theory
from .gaussian import KINKED, PHI, gaussian_mean
from ..kinds import branch_scale

def applies(model: dict) -> bool:
    """A residual MLP or CNN without normalisation: the case where delta is not scale-invariant."""
    return (model.get("kind", "mlp") in ("mlp", "cnn") and bool(model.get("residual"))
            and model.get("norm", "none") in (None, "none"))


# Measured (docs/diagnose.md): `vgrad run configs/19_cnn_relu_residual_batchnorm.yaml --set model.norm=none
# --set model.depth=30 --set model.width=W --seed S --steps 1`, W = 32 and 64, seeds 0-2: the branch
# output's RMS growth conv0 -> conv29 is 0.33-0.61 (W = 32) and 0.59-0.67 (W = 64) of the MLP recursion's.
CNN_PREDICTION = ("the forward-stream prediction is derived for the MLP block h + s*phi(Wh + b); a 3x3 conv with "
                  "zero padding grows the stream less at the image border (measured 0.59-0.67 of it at width 64, "
                  "depth 30), so none is given for a CNN: the verdict and advice still apply")


def stream(activation: str, sw2: float, b: float, scale: float, blocks: int, mu0: float, m0: float) -> dict:
    """Iterate the stream's (mean, second moment) through `blocks` residual blocks from the output
    of block 0 (mean mu0, second moment m0). Returns the predicted E[a_l^2] of each branch output
    (block 0's is m0), and the stream's second moment fed to the output layer."""
    phi = PHI[activation][0]
    kinked = activation in KINKED
    mu, m, act_ms = mu0, m0, [m0]
    for _ in range(blocks):
        q = sw2 * m
        e1, e2 = gaussian_mean(phi, q, kinked, b), gaussian_mean(lambda x: phi(x) ** 2, q, kinked, b)
        act_ms.append(e2)
        m, mu = m + 2 * scale * mu * e1 + scale**2 * e2, mu + scale * e1
        if not math.isfinite(m) or m > 1e300:
            break
    return {"act_second_moment": act_ms, "stream_second_moment": m}


def relative_grad(row: dict) -> float | None:
    """||dL/dW|| / ||W|| of one layers.csv row: grad_norm (every parameter of the layer) / weight_norm."""
    g, w = row.get("grad_norm"), row.get("weight_norm")
    if g is None or w is None or not (math.isfinite(g) and math.isfinite(w)) or w <= 0:
        return None
    return g / w


def relative_grad_ratio(rows: list[dict]) -> float | None:
    """Layer 0's relative gradient over the last hidden layer's (rows: one logged step, by layer)."""
    if len(rows) < 3:
        return None
    first, last = relative_grad(rows[0]), relative_grad(rows[-2])
    return first / last if first is not None and last else None


def ends_label(rows: list[dict], kind: str | None) -> str:
    """How the text names the scale-invariant ratio's ends: 'layer 0/last hidden', a CNN's 'conv0/conv29'."""
    if kind == "cnn" and len(rows) >= 3:
        return f"{rows[0].get('name')}/{rows[-2].get('name')}"
    return "layer 0/last hidden"


def act_rms(row: dict) -> float | None:
    """sqrt(E[a^2]) of a layer's activation from act_mean and act_std (over the batch and units)."""
    mean, std = row.get("act_mean"), row.get("act_std")
    if mean is None or std is None or not (math.isfinite(mean) and math.isfinite(std)):
        return None
    return math.sqrt(mean * mean + std * std)


def measured_growth(rows: list[dict]) -> float | None:
    """The branch output's RMS at the last hidden layer over layer 0's (one logged step)."""
    hidden = [act_rms(r) for r in rows[:-1]]
    if len(hidden) < 2 or hidden[0] is None or hidden[-1] is None or hidden[0] <= 0:
        return None
    return hidden[-1] / hidden[0]


def section(model: dict, rows: list[dict]) -> dict | None:
    """diagnosis.json's theory.residual: the stream's growth predicted from the measured output of
    block 0 at the first logged step, beside the measured one. None where it does not apply."""
    if not applies(model) or len(rows) < 3:
        return None
    depth, act = int(model.get("depth", 1)), model.get("activation")
    scale = branch_scale(model.get("residual_scale", 1.0), depth)
    out = {"scale": scale, "relative_grad_ratio": relative_grad_ratio(rows),
           "ends": ends_label(rows, model.get("kind")),
           "act_rms_measured": [act_rms(r) for r in rows[:-1]], "act_rms_growth_measured": measured_growth(rows)}
    if model.get("kind") == "cnn":
        return {**out, "applicable": False, "reason": CNN_PREDICTION}
    sw2 = theory.sigma_w2(model.get("init", "default"), act, model.get("init_std"),
                          int(model.get("width", 64)), int(model.get("width", 64)))
    first = rows[0]
    if act not in PHI or sw2 is None or act_rms(first) is None:
        return {**out, "applicable": False,
                "reason": "no phi for the activation, no weight variance, or no activation statistics at layer 0"}
    mu0, m0 = first["act_mean"], act_rms(first) ** 2
    pred = stream(act, sw2, float(model.get("bias_init") or 0.0), scale, depth - 1, mu0, m0)
    rms = [math.sqrt(v) for v in pred["act_second_moment"]]
    growth = math.sqrt(pred["stream_second_moment"] / m0)
    out.update(applicable=True, sigma_w2=sw2, act_rms_predicted=rms, act_rms_growth_predicted=rms[-1] / rms[0],
               stream_rms_growth=growth, stream_factor_per_block=growth ** (1 / max(1, depth - 1)))
    m = out["act_rms_growth_measured"]
    out["measured_over_predicted"] = m / out["act_rms_growth_predicted"] if m is not None else None
    return out


def line(sec: dict) -> str:
    """One console line for diagnose."""
    m, ends = sec.get("act_rms_growth_measured"), sec.get("ends", "layer 0/last hidden")
    text = f"residual stream (branch scale {sec['scale']:.3g}): "
    if sec.get("applicable"):
        text += (f"predicted RMS growth x{sec['stream_rms_growth']:.3g} over the residual blocks "
                 f"(x{sec['stream_factor_per_block']:.3g} per block; Yang & Schoenholz 2017); branch output RMS "
                 f"layer 0 -> last hidden: predicted x{sec['act_rms_growth_predicted']:.3g}")
        text += f", measured x{m:.3g}" if m is not None else ""
    elif m is not None:
        text += f"branch output RMS {ends.replace('/', ' -> ')}: measured x{m:.3g}"
    r = sec.get("relative_grad_ratio")
    if r is not None:
        text += f"; scale-invariant ||dL/dW||/||W|| {ends.replace('/', ' / ')} {r:.3g}"
    if not sec.get("applicable") and sec.get("reason") == CNN_PREDICTION:
        text += f"\n({CNN_PREDICTION})"
    return text


def predicted_growth(model: dict, scale: float | None = None) -> float | None:
    """The stream's predicted RMS growth over the residual blocks for a config alone (advice: no run
    needed), starting block 0 from an input of unit second moment per feature; `scale` overrides
    model.residual_scale. None where the theory has no numbers for the activation or init."""
    depth, act, b = int(model.get("depth", 1)), model.get("activation"), float(model.get("bias_init") or 0.0)
    width = int(model.get("width", 64))
    sw2 = theory.sigma_w2(model.get("init", "default"), act, model.get("init_std"), width, width)
    if act not in PHI or sw2 is None or depth < 2 or model.get("kind") == "cnn":  # CNN_PREDICTION
        return None
    phi, kinked = PHI[act][0], act in KINKED
    mu0, m0 = gaussian_mean(phi, sw2, kinked, b), gaussian_mean(lambda x: phi(x) ** 2, sw2, kinked, b)
    s = branch_scale(model.get("residual_scale", 1.0), depth) if scale is None else scale
    return math.sqrt(stream(act, sw2, b, s, depth - 1, mu0, m0)["stream_second_moment"] / m0) if m0 > 0 else None
