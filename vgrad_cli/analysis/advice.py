"""Recommendations of `vgrad diagnose`, derived from the run's config and the evidence, and the
suggested config of `--try`.

Each recommendation names the config keys to change and their values ({"model.init": "kaiming_normal"};
None means "back to the default", i.e. `--set key=null`), so it can be run as is. The order is the
order of preference: the cause first (activation, init), then structural remedies (norm, residual,
gates), then the ones that treat the symptom (clipping, learning rate).
"""

from __future__ import annotations

import copy
import shlex

import yaml

from . import residual, theory
from ..config import branch_scale

RELU_FAMILY = ("relu", "leaky_relu", "prelu", "elu", "gelu", "silu")
LAYERED = ("mlp", "cnn")  # a stack of blocks of one kind: the MLP's advice (activation, init, norm, residual) applies


def rec(title: str, why: str, changes: dict) -> dict:
    return {"title": title, "why": why, "set": changes}


def _mlp_vanishing(m: dict, lr: float | None = None, optimizer: str | None = None) -> list[dict]:
    act, init, out = m.get("activation"), m.get("init"), []
    plain = m.get("norm", "none") == "none" and not m.get("residual")
    if act in RELU_FAMILY and (not init.startswith("kaiming") or m.get("init_std") is not None):
        out.append(rec("Kaiming init for the ReLU-family activation",
                       "He et al. 2015: weight variance 2/fan_in keeps the error signal's size from layer to layer",
                       {"model.init": "kaiming_normal", "model.init_std": None}))
    elif act == "selu" and init != "lecun_normal":
        out.append(rec("LeCun-normal init for SELU", "SELU's self-normalising fixed point needs variance 1/fan_in",
                       {"model.init": "lecun_normal", "model.init_std": None}))
    elif act not in RELU_FAMILY:
        change = {"model.activation": "relu", "model.init": "kaiming_normal", "model.init_std": None}
        why = f"{act}'s derivative shrinks the error at every layer; ReLU with Kaiming init is critical (factor 1.00)"
        if lr is not None and optimizer != "adam":
            # the early layers now get the full gradient: configs/01 switched to ReLU at its lr 0.1
            # diverged (step 115); at 0.05 it is configs/03, which trains
            change["train.lr"] = float(f"{lr / 2:.3g}")
            why += "; half the learning rate, since every layer now gets the full gradient"
        out.append(rec("a non-saturating activation with Kaiming init", why, change))
    if m.get("norm", "none") == "none":
        out.append(rec("batch normalization", "re-centres and re-scales each layer's pre-activations (Ioffe & Szegedy 2015)",
                       {"model.norm": "batch"}))
    if not m.get("residual"):
        out.append(rec("residual connections", "an identity path carries the gradient back unshrunk (He et al. 2016)",
                       {"model.residual": True}))
    if not plain and not out:
        out.append(rec("fewer layers", "the gradient still vanishes with norm and residual in place",
                       {"model.depth": max(2, int(m.get("depth", 8)) // 2)}))
    return out


def _recurrent_vanishing(m: dict, seq_len) -> list[dict]:
    kind, out = m.get("kind"), []
    if kind == "lstm" and m.get("chrono_init") is None and isinstance(seq_len, int) and seq_len >= 3:
        # the strongest of the LSTM remedies at init: configs/25 vs 14, cell-state ratio 0.22 vs 4e-4
        out.append(rec(f"chrono init for T = {seq_len}",
                       "forget bias log U(1, T-1): each cell remembers for 1..T steps, so the cell state carries "
                       "the gradient back through the whole sequence (Tallec & Ollivier 2018)",
                       {"model.chrono_init": seq_len, "model.forget_bias": None}))
    if kind == "rnn":
        out.append(rec("an LSTM with forget-gate bias 1.0",
                       "its cell state is updated additively through a learned forget gate (Hochreiter & Schmidhuber 1997; "
                       "Jozefowicz et al. 2015)",
                       {"model.kind": "lstm", "model.activation": None, "model.forget_bias": 1.0}))
        if m.get("activation") == "relu":
            out.append(rec("identity recurrent init (IRNN)", "Le, Jaitly & Hinton 2015: h_t is carried forward unchanged at init",
                           {"model.recurrent_init": "identity", "model.recurrent_std": None}))
        else:
            out.append(rec("orthogonal recurrent init", "an orthogonal W_hh preserves norms through time (Saxe et al. 2014)",
                           {"model.recurrent_init": "orthogonal", "model.recurrent_std": None}))
        out.append(rec("a GRU", "gated like the LSTM, one state vector (Cho et al. 2014)",
                       {"model.kind": "gru", "model.activation": None}))
    elif kind == "lstm" and (m.get("forget_bias") or 0.0) < 1.0 and m.get("chrono_init") is None:
        out.append(rec("forget-gate bias 1.0", "f = sigmoid(1) = 0.73 per step at init instead of 0.5 (Jozefowicz et al. 2015)",
                       {"model.forget_bias": 1.0}))
    if kind in ("lstm", "gru") and m.get("recurrent_init") != "orthogonal":
        out.append(rec("orthogonal recurrent init", "an orthogonal W_hh per gate keeps the through-time path from shrinking",
                       {"model.recurrent_init": "orthogonal", "model.recurrent_std": None}))
    return out


def _forward_stream(m: dict) -> list[dict]:
    """A residual MLP or CNN without norm whose forward stream explodes: scale the branches, or normalise."""
    depth, out = int(m.get("depth", 1)), []
    now, after = residual.predicted_growth(m), residual.predicted_growth(m, 1 / depth**0.5)
    theory_says = (f"; theory: the stream's RMS grows x{now:.3g} over the residual blocks now, x{after:.3g} with "
                   f"s = 1/sqrt({depth})" if now is not None and after is not None else "")
    if branch_scale(m.get("residual_scale", 1.0), depth) > 1.01 / depth**0.5:
        out.append(rec("scale the residual branches", "h + s*F(h) with s = 1/sqrt(depth) adds ~1/depth of the stream's "
                       "variance per block instead of compounding it (Fixup, Zhang et al. 2019, also zero-initialises "
                       "each branch's last layer)" + theory_says, {"model.residual_scale": "1/sqrt(depth)"}))
    out.append(rec("batch normalization", "normalises each branch's pre-activation, so every block adds O(1) to the "
                   "stream: linear, not exponential growth (Ioffe & Szegedy 2015; He et al. 2016)", {"model.norm": "batch"}))
    return out


def _transformer(m: dict, t: dict) -> list[dict]:
    """A transformer that vanishes or explodes: Post-LN's large steps at the start (Xiong et al. 2020;
    Liu et al. 2020) are the usual cause, so warm-up and Pre-LN come first."""
    out = []
    if m.get("norm_position") == "post":
        out.append(rec("Pre-LN", "LayerNorm inside each residual branch keeps the identity path clean: the gradient "
                       "is about the same at every block at init, and no warm-up is needed (Xiong et al. 2020)",
                       {"model.norm_position": "pre"}))
    if not t.get("warmup_steps"):
        out.append(rec("learning-rate warm-up", "small steps while Adam's moment estimates and the LayerNorm scales "
                       "settle (Xiong et al. 2020: what a Post-LN Transformer needs)",
                       {"train.warmup_steps": max(1, int(t["steps"]) // 2)}))
    out.append(rec("a lower learning rate", "smaller steps at the start", {"train.lr": float(f"{t['lr'] / 10:.3g}")}))
    return out


def _exploding(cfg: dict, forward_stream: bool = False) -> list[dict]:
    m, t, out = cfg["model"], cfg["train"], []
    if m["kind"] == "transformer":
        return _transformer(m, t)
    if forward_stream and residual.applies(m):
        out += _forward_stream(m)
    elif m["kind"] in LAYERED:
        act = m.get("activation")
        pred = theory.for_model(m)
        # a plain MLP's growth is set by the init's scale; batch norm's (theory_bn.py) is not
        if pred.get("applicable") and "sigma_w2" in pred and pred["chi_1"] > 1.05:
            fix = {"model.init_std": None} if m.get("init", "").startswith("kaiming") else {"model.init": "kaiming_normal", "model.init_std": None}
            if act not in RELU_FAMILY:
                fix = {"model.activation": "relu", "model.init": "kaiming_normal", "model.init_std": None}
            out.append(rec("a critical init", f"theory: per-layer factor {pred['factor']:.2f} now; the activation's own Kaiming gain gives ~1.00",
                           fix))
        if m.get("norm") == "batch" and not m.get("residual"):
            # batch norm's own growth (Yang et al. 2019) compounds along the only path there is
            out.append(rec("residual connections", "batch norm makes the gradient grow at every block of a plain stack; "
                           "identity shortcuts give it a path around each block (He et al. 2016; configs/20 vs 21)",
                           {"model.residual": True}))
    elif m.get("recurrent_std") is not None and m.get("recurrent_std") > 1:
        out.append(rec("recurrent gain 1", f"W_hh scaled by {m['recurrent_std']:g} multiplies the gradient by up to that per time step",
                       {"model.recurrent_std": None}))
    elif m.get("recurrent_init") != "orthogonal":
        out.append(rec("orthogonal recurrent init", "an orthogonal W_hh has every singular value 1: no growth through time",
                       {"model.recurrent_init": "orthogonal", "model.recurrent_std": None}))
    if t.get("clip_norm") is None and t.get("clip_value") is None:
        out.append(rec("gradient clipping", "limits each step's size (Pascanu et al. 2013); it treats the symptom, not the cause",
                       {"train.clip_norm": 1.0}))
    if m["kind"] == "rnn":
        out.append(rec("an LSTM", "gates bound the through-time Jacobian",
                       {"model.kind": "lstm", "model.activation": None, "model.forget_bias": 1.0, "model.recurrent_std": None,
                        "model.recurrent_init": "default"}))
    out.append(rec("a lower learning rate", "smaller steps where the gradient is large", {"train.lr": float(f"{t['lr'] / 10:.3g}")}))
    return out


# A model of the user's own (Monitor runs): no config key to set, so the advice is in words.
OWN_MODEL = {
    "exploding": [("gradient clipping", "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0) before optimizer.step() "
                   "limits each step's size (Pascanu et al. 2013)"),
                  ("a lower learning rate, or warm-up", "smaller steps where the gradient is large"),
                  ("a critical init", "Kaiming init for ReLU-family layers (He et al. 2015); scale residual branches "
                   "down (e.g. by 1/sqrt(depth), Fixup) or add normalization")],
    "dying-relu": [("leaky ReLU (or GELU/SiLU)", "a non-zero slope for negative inputs: no unit can die (Maas et al. 2013)"),
                   ("a lower learning rate", "large steps push units into the region where they output 0 for every input")],
    "vanishing": [("a non-saturating activation with Kaiming init", "sigmoid/tanh shrink the error at every layer; "
                   "ReLU-family activations with Kaiming init keep it (He et al. 2015)"),
                  ("normalization or residual connections", "batch/layer norm re-scale each layer; an identity path "
                   "carries the gradient back unshrunk (Ioffe & Szegedy 2015; He et al. 2016)")],
    "underfitting": [("train longer or with a larger learning rate", "no gradient problem was found (see the evidence); the loss is still high")],
}


def recommend(cfg: dict, verdict: str, indicators: dict, recovered: bool, data: dict | None = None) -> list[dict]:
    """cfg: the resolved config as a dict (config.yaml); data: theory.run_data() of the run, for the
    predictions at the model's depth. Ordered, most preferred first."""
    m, t = cfg["model"], cfg["train"]
    if m.get("kind") == "custom":
        from .own_advice import recommend as fitted

        advice = fitted(cfg, verdict, indicators)  # from what the model and its training are (own_advice.py)
        if advice is not None:
            return [{**rec(title, why, {}), "optional": recovered, "command": None} for title, why in advice]
        advice = list(OWN_MODEL.get(verdict, []))  # a run recorded before vgrad detected the model's structure
        if verdict == "vanishing" and any("RNN" in str(layer.get("type")) or str(layer.get("type")) in ("LSTM", "GRU")
                                          for layer in m.get("layers") or []):
            advice.insert(0, ("gated units, or an orthogonal recurrent init",
                              "an LSTM or GRU can learn to keep the path back in time open (Hochreiter & Schmidhuber 1997)"))
        return [{**rec(title, why, {}), "optional": recovered, "command": None} for title, why in advice]
    if verdict == "exploding":
        out = _exploding(cfg, bool(indicators.get("exploding", {}).get("evidence", {}).get("forward_stream")))
    elif verdict == "dying-relu":
        out = [rec("leaky ReLU", "a slope of 0.01 for negative inputs: the gradient is never exactly 0, no unit can die (Maas et al. 2013)",
                   {"model.activation": "leaky_relu"}),
               rec("a lower learning rate", "large steps push units into the region where they output 0 for every input",
                   {"train.lr": float(f"{t['lr'] / 10:.3g}")})]
    elif verdict == "vanishing":
        if m["kind"] == "transformer":
            out = _transformer(m, t)
        else:
            out = (_mlp_vanishing(m, t.get("lr"), t.get("optimizer")) if m["kind"] in LAYERED
                   else _recurrent_vanishing(m, (cfg.get("task") or {}).get("seq_len")))
    elif verdict == "underfitting":
        out = [rec("train longer", "the gradient reaches every layer; the loss is still falling or the budget was short",
                   {"train.steps": int(t["steps"]) * 3}),
               rec("a larger learning rate", "every layer learns, but slowly", {"train.lr": float(f"{t['lr'] * 3:.3g}")})]
    else:
        out = []
    for r in out:
        r["optional"] = recovered  # the problem was there at init, but training overcame it
        r["command"] = "--set " + " --set ".join(shlex.quote(f"{k}={_yaml_scalar(v)}") for k, v in r["set"].items())
        pred = _predicted(cfg, r["set"], data)
        if pred is not None:
            r["theory_factor_after"] = pred
    return out


def _yaml_scalar(v) -> str:
    return "null" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))


def apply(cfg: dict, changes: dict) -> dict:
    new = copy.deepcopy(cfg)
    for key, value in changes.items():
        node = new
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return new


def _predicted(cfg: dict, changes: dict, data: dict | None = None) -> float | None:
    """The per-layer factor theory predicts after the change, at the model's depth where the run's
    data allows it (else the fixed point); None when the change cannot move it (a learning rate,
    clipping, training longer: theory at init knows nothing of those)."""
    if not any(k.startswith("model.") for k in changes):
        return None
    p = theory.for_model(apply(cfg, changes)["model"], data)
    if not p.get("applicable"):
        return None
    return p["factor_at_depth"] if p.get("factor_at_depth") is not None else p["factor"]


def suggested_config(cfg: dict, recommendation: dict, source: str) -> str:
    """The run's resolved config with the recommendation applied, as YAML that load_config accepts."""
    from ..config import applicable, validate

    new = apply(cfg, recommendation["set"])
    if new.get("name"):
        new["name"] = (str(new["name"])[:76] + "-fix")
    validated = validate(new, "suggested config").to_dict()  # never print a config that would not load
    validated["model"] = applicable(validated["model"])  # e.g. no recurrent_init in an MLP's config
    header = (f"# suggested by `vgrad diagnose {source}`: {recommendation['title']}\n"
              f"# changed: {', '.join(f'{k}={_yaml_scalar(v)}' for k, v in recommendation['set'].items())}\n"
              f"# why: {recommendation['why']}\n")
    return header + yaml.safe_dump(validated, sort_keys=False, default_flow_style=False)
