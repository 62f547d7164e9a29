"""Dynamical isometry at init (Pennington, Schoenholz & Ganguli 2017), for `vgrad diagnose`.

chi_1 (theory.py) is the mean of s^2 over the singular values s of the network's Jacobian; two nets
with the same chi_1 = 1 can still differ completely: an orthogonal tanh net keeps every s near its
mean, a Gaussian one spreads them over ~45 orders of magnitude at depth 30 (s_min ~ 1e-46), so most
input directions are lost and training is slow (Pennington et al., Fig. 1; Saxe et al. 2014 for
linear nets). This reports the spectrum of the run's model *at init* (rebuilt from its config and
seed: the weights model.pt["init"] holds), on the first few training inputs.

J = d h_{depth-1} / d h_0: from the first hidden block's output to the last hidden block's output,
L = depth - 1 square (width x width) layer maps, as in Pennington et al.; the input layer
(input_dim -> width) and the head are not square and are left out. MLPs only: a recurrent net's
Jacobian through time is another object (its through-time ratio is in time.csv), a conv block's or
a transformer block's map is (positions x width) square, not implemented here, and batch norm
in training mode couples the examples of a batch, so a per-example Jacobian is not the map
training differentiates.
"""

from __future__ import annotations

EXAMPLES = 4          # inputs whose Jacobian spectra are pooled
MAX_WIDTH = 1024      # each layer costs ~2 width^3 per example: above this, not computed
ISOMETRY_BAND = 10.0  # "near isometry": every singular value within a factor 10 of 1


def not_applicable(cfg) -> str | None:
    """Why the spectrum is not computed for this (validated) config, or None."""
    m = cfg.model
    if m.kind in ("rnn", "lstm", "gru"):
        return (f"model.kind {m.kind}: the input-output Jacobian here is an MLP's; a recurrent net's gradient "
                "through time is in time.csv")
    if m.kind == "cnn":
        return ("model.kind cnn: the Jacobian here is a product of an MLP's width x width layer maps; a conv block "
                "maps a whole width x H x W feature map (a width·H·W-square matrix per example), not built here")
    if m.kind == "transformer":
        return ("model.kind transformer: not implemented; attention mixes a sequence's positions, so a block's map "
                "per example is (seq_len x width) square, not width x width")
    if m.kind != "mlp":
        return f"model.kind {m.kind}: the Jacobian here is an MLP's"
    if m.norm == "batch":
        return "model.norm batch: batch norm couples the examples of a batch, so there is no per-example Jacobian"
    if m.depth < 2:
        return "model.depth 1: no square hidden-to-hidden layer map (J runs from hidden block 0 to the last)"
    if m.width > MAX_WIDTH:
        return f"model.width {m.width} > {MAX_WIDTH}: too costly (each layer ~2 width^3 per example)"
    return None


def jacobian_at_init(cfg) -> dict:
    """The `jacobian` section of diagnosis.json for a validated Config."""
    reason = not_applicable(cfg)
    if reason:
        return {"applicable": False, "reason": reason}
    import torch

    from ..measure.jacobian import spectrum
    from ..models import build_model
    from ..threads import torch_threads

    with torch_threads(1):  # as the ablation probe: small matrices, a shared machine
        task = cfg.task.make(cfg.seed)
        model = build_model(cfg.model, task, cfg.seed).double().train()  # the initial weights, in float64
        x = task.x_train[:EXAMPLES].to(torch.float64)
        with torch.no_grad():
            h0 = model.block_step(0, x)
        # batch norm is excluded above, so a block treats the rows of a batch independently
        steps = [lambda h, i=i: model.block_step(i, h) for i in range(1, cfg.model.depth)]
        out = spectrum(steps, h0)
    out.update(applicable=True, dtype="float64", inputs=f"the first {len(x)} training examples",
               isometric=near_isometry(out))
    return out


def near_isometry(sp: dict) -> bool:
    """Every singular value within ISOMETRY_BAND of 1: the signal keeps every input direction."""
    return 1 / ISOMETRY_BAND <= sp["s_min"] and sp["s_max"] <= ISOMETRY_BAND


def jacobian_line(j: dict | None) -> str | None:
    """One console line for diagnose; None when there is no section."""
    if not j:
        return None
    if not j.get("applicable"):
        return f"jacobian spectrum at init: not applicable ({j.get('reason')})"
    cond = j["log10_condition_median"]
    cond_text = ("infinite" if cond is None or cond == float("inf") else
                 f"{10 ** cond:.3g}" if cond < 3 else f"1e{cond:.0f}")
    if j.get("isometric"):
        verdict = (f"near isometry: every input direction passes with a gain within a factor "
                   f"{ISOMETRY_BAND:g} of 1 (s_max/s_min {cond_text}, the median over the inputs)")
    elif j.get("singular_examples", j["s_min"] == 0):
        verdict = ("not isometric: J is singular (a layer map has rank < width, e.g. ReLU units at 0), "
                   "some input directions do not pass at all")
    else:
        verdict = (f"not isometric: the gains of input directions differ by a factor {cond_text} (s_max/s_min "
                   f"of one input, the median over the {j['examples']}; s_max and s_min above are over all of them)")
    s_min = f"{j['s_min']:.2g}"
    if j.get("s_min_underflow") and not j.get("singular_examples"):  # below float64's range: its log is exact
        s_min = f"1e{j['log10_s_min']:.0f} (below float64's range; computed as a log)"
    return (f"jacobian spectrum at init (L = {j['layers']} layer maps, {j['examples']} inputs, float64): "
            f"mean s^2 {j['mean_s2']:.3g}, s_max {j['s_max']:.3g}, s_min {s_min} — {verdict}")
