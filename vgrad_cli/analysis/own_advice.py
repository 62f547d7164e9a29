"""Advice for a model of your own (a Monitor run): only the changes that apply to what the model and
its training are, each saying which facts it rests on.

The facts are config.yaml's `model.structure` (norms and their placement, residual adds,
activations, the scale of the blocks' weights, frozen parts, adapters: measure/structure.py) and
`train` (the optimizer, its learning rate over the logged steps, warm-up, clipping:
monitor/describe.py), read for the stack the verdict reads (the main stack). What a model already has
is never advised (a norm, a residual add, warm-up, clipping, Pre-LN), nor a change of architecture
to a pretrained base that is frozen or adapted (LoRA). The rules follow the literature in
/work/shared/background.md: a Post-LN stack that collapses needs warm-up, Pre-LN or a lower learning
rate (Xiong et al. 2020), not a new activation; a chain of saturating activations needs ReLU-family
units with Kaiming init, a norm or residual adds (He et al. 2015, 2016; Ioffe & Szegedy 2015).
"""

from __future__ import annotations

from .verdict import EXPLODING_RATIO

RELU_FAMILY = ("relu", "leaky_relu", "prelu", "elu", "gelu", "silu")
SATURATING = {"sigmoid": "its derivative is at most 0.25", "tanh": "its derivative is below 1 away from 0"}
NORM_NAMES = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm", "batchnorm": "BatchNorm", "groupnorm": "GroupNorm",
              "instancenorm": "InstanceNorm"}
# std(W)·sqrt(fan_in) of the blocks' Linear/conv weights: Kaiming (ReLU) is sqrt(2) = 1.41. Above
# LARGE the weights are too large for any activation (GPT-2 with initializer_range=1.0 at width 64:
# 7.9); below SMALL a ReLU stack without norm or residual shrinks the error by gain/1.41 per layer.
LARGE_GAIN, SMALL_GAIN = 2.0, 1.0


class Facts:
    """What config.yaml says about the model and the training, in the terms the rules use."""

    def __init__(self, cfg: dict):
        m, t = cfg.get("model") or {}, cfg.get("train") or {}
        s = m.get("structure") or {}
        stacks = s.get("stacks") or []
        st = next((x for x in stacks if x.get("name") == m.get("main_stack")), None) or (
            max(stacks, key=lambda x: x.get("blocks", 0)) if stacks else {})
        self.stack = st
        self.name = st.get("name") or "the model"
        self.where = f"{st['name']} ({st.get('blocks')} {st.get('block_type')} blocks)" if st else "the model"
        src = st or s  # the main stack's facts, or (a model without blocks) the whole model's
        self.norms = src.get("norms") or []
        self.norm = NORM_NAMES.get(self.norms[0], self.norms[0]) if self.norms else None
        self.position = st.get("norm_position")
        self.residual, self.residual_evidence = src.get("residual"), src.get("residual_evidence")
        self.acts = src.get("activations") or []
        self.gain = src.get("weight_gain")
        # a pretrained base, frozen or adapted where the problem is: its architecture is not yours to change
        base = [f"{len(st[k])} {k.replace('_', ' ')}" for k in ("frozen_blocks", "partly_frozen_blocks") if st.get(k)]
        if not st and s.get("frozen"):
            base.append(f"frozen: {', '.join(s['frozen'][:3])}" + (" ..." if len(s["frozen"]) > 3 else ""))
        if s.get("adapters") and (base or not st):
            base.append(f"LoRA adapters on {s['adapters']['modules']} modules")
        self.fixed = "; ".join(base)
        d = t.get("detected") or {}
        self.opt = t.get("optimizer") or "the optimizer"
        self.lr = d.get("lr_max") if isinstance(d.get("lr_max"), (int, float)) else t.get("lr")
        schedule = d.get("lr_schedule")
        self.warmup = None if schedule in (None, "unknown", "single step") else schedule.startswith("warm-up")
        self.clip_told = [f"{k} {t[k]:g}" for k in ("clip_norm", "clip_value") if isinstance(t.get(k), (int, float))]
        self.clipping = d.get("clipping")
        self.clipped_steps = d.get("clipped_steps")
        self.known = bool(s) and "error" not in s

    @property
    def clipped(self) -> bool:
        return bool(self.clip_told) or self.clipping == "seen"

    def lr_text(self, schedule: bool = True) -> str:
        """'Adam at lr 0.01' and, with schedule, whether it was warmed up."""
        if self.lr is None:
            return f"{self.opt} at an unknown learning rate"
        how = " from the first logged step on (no warm-up)" if self.warmup is False and schedule else \
            " at its largest, after warm-up" if self.warmup else ""
        return f"{self.opt} at lr {self.lr:g}{how}"


def recommend(cfg: dict, verdict: str, by_key: dict) -> list[tuple[str, str]] | None:
    """[(title, why)], most preferred first; None when config.yaml has no detected structure (a
    run recorded before vgrad detected it): the generic advice applies then."""
    f = Facts(cfg)
    if not f.known:
        return None
    trend = _trend(by_key, verdict)
    rules = {"vanishing": _vanishing, "exploding": _exploding, "dying-relu": _dying, "underfitting": _underfitting}
    if verdict not in rules:
        return []
    out, dropped = rules[verdict](f, by_key, trend)
    if dropped and f.fixed and out:
        title, why = out[0]
        out[0] = (title, why + f"; architecture changes left out: the base model is pretrained here ({f.fixed})")
    return out


def _vanishing(f: Facts, by_key: dict, trend: str):
    out, dropped = [], False
    if f.position in ("post", "pre") and f.residual is not False:
        if f.position == "post" and f.warmup is False:
            out.append(("learning-rate warm-up",
                        f"{f.where} is Post-LN (each block's output is its {f.norm}'s output, after the residual add) "
                        f"and ran {f.lr_text()}{trend}: a Post-LN stack's gradients near the output are large at "
                        "the start, and full-size first steps can collapse the gradient that reaches the early "
                        "blocks; warm the learning rate up, e.g. LinearLR(optimizer, start_factor=0.01, "
                        "total_iters=N) over the first few percent of training (Xiong et al. 2020; Liu et al. 2020)"))
        if f.position == "post":
            if f.fixed:
                dropped = True
            else:
                native = (" — nn.TransformerEncoderLayer(norm_first=True), and nn.TransformerEncoder(norm=...)"
                          if f.stack.get("block_type") == "TransformerEncoderLayer" else "")
                out.append(("Pre-LN", f"{f.where} is Post-LN: the residual stream passes through a {f.norm} at every "
                            f"block; with the norm at the start of each residual branch, x + f(norm(x)), and one norm "
                            "after the last block, the identity path carries the gradient to every block unchanged "
                            f"and no warm-up is needed (Xiong et al. 2020){native}"))
        if f.lr is not None:
            out.append(_lower_lr(f, f"keep the first updates from collapsing the gradient through the {f.norm}s"))
        if f.position == "pre" and f.warmup is False:
            out.append(_warmup(f, trend))
        return out, dropped
    sat = [a for a in f.acts if a in SATURATING]
    if f.fixed:
        dropped = True
    else:
        plain = "" if f.norms or f.residual else ", with no norm and no residual add"
        if sat:
            out.append((f"a ReLU-family activation with Kaiming init in {f.name}",
                        f"{f.where} applies {' and '.join(sat)} after its layers{plain}: {SATURATING[sat[0]]}, so the "
                        f"error shrinks at every layer{trend}; ReLU or GELU with Kaiming init (std sqrt(2/fan_in)) "
                        "keeps its size from layer to layer (He et al. 2015)"))
        elif any(a in RELU_FAMILY for a in f.acts) and f.gain is not None and f.gain < SMALL_GAIN and plain:
            out.append((f"Kaiming init in {f.name}",
                        f"{f.where} uses {'/'.join(f.acts)} with weights of std {f.gain:.2g}/sqrt(fan_in) (median over "
                        f"its Linear and conv weights){plain}: below the ReLU family's critical sqrt(2)/sqrt(fan_in) the "
                        f"error shrinks by roughly {f.gain / 2 ** 0.5:.2f} per layer{trend}; Kaiming init (std "
                        "sqrt(2/fan_in)) keeps it (He et al. 2015)"))
        if not f.norms:
            out.append((f"normalization in {f.name}",
                        f"{f.where} has no normalization layer: a LayerNorm or BatchNorm before each activation "
                        "re-centres and re-scales its input, so the error keeps its size (Ioffe & Szegedy 2015; Ba "
                        "et al. 2016)"))
        if f.residual is False:
            out.append((f"residual connections in {f.name}",
                        f"{f.where} has no residual add ({f.residual_evidence}): "
                        "h + f(h) gives the gradient an identity path back through every block (He et al. 2016)"))
    if not out and f.lr is not None:
        out.append(_lower_lr(f, "smaller steps"))
    return out, dropped


def _exploding(f: Facts, by_key: dict, trend: str):
    ev = (by_key.get("exploding") or {}).get("evidence") or {}
    r0 = ev.get("delta_ratio_first_step")
    at_init = isinstance(r0, (int, float)) and r0 > EXPLODING_RATIO
    out, dropped = [], False
    if at_init and f.fixed:
        dropped = True
    elif at_init and f.gain is not None and f.gain > LARGE_GAIN:
        out.append(("a smaller init scale",
                    f"the Linear weights of {f.where} have std {f.gain:.2g}/sqrt(fan_in) (the median, where Kaiming "
                    "for ReLU is 1.41/sqrt(fan_in) and torch's default 0.58): each residual branch's output dwarfs the stream, and "
                    f"the gradient grows block by block going back (block ratio {r0:.3g} at the first logged step); "
                    "initialise with std ~0.02 (GPT-2's and BERT's initializer_range) or 1/sqrt(fan_in), the output "
                    "projection of each branch scaled by 1/sqrt(2 x blocks) (Radford et al. 2019)"))
    elif at_init and not f.norms and f.residual:
        out.append(("scale the residual branches", f"{f.where} adds each branch to the stream with no norm: the "
                    "stream's variance compounds block by block; scale each branch by 1/sqrt(blocks) or zero-initialise "
                    "its last layer (Fixup, Zhang et al. 2019), or add a norm"))
    elif at_init and not f.norms:
        out.append((f"normalization in {f.name}", f"{f.where} has no normalization layer: a norm re-scales each "
                    "block's input, so the gradient cannot compound (Ioffe & Szegedy 2015)"))
    if not at_init and f.lr is not None:  # it grew during training: the steps' size first
        grew = f"the loss became non-finite at step {ev['diverged_step']}" if ev.get("diverged_step") is not None \
            else "the gradient grew during training, not at the first logged step"
        out.append(_lower_lr(f, grew))
        if f.warmup is False:
            out.append(_warmup(f, trend))
    if not f.clipped:
        n = str(f.clipped_steps or "").partition("/")[2]
        seen = f", or seen (grad_norm_clipped < grad_norm_total on none of {n} logged steps)" if n else ""
        out.append(("gradient clipping", f"no clipping told{seen}: torch.nn.utils.clip_grad_norm_(model.parameters(), "
                    "1.0) between backward() and optimizer.step() bounds each step's size (Pascanu et al. 2013); it "
                    "treats the symptom, not the cause"))
    return out, dropped


def _dying(f: Facts, by_key: dict, trend: str):
    out, dropped = [], False
    if f.fixed:
        dropped = True
    elif "relu" in f.acts or not f.acts:
        seen = "uses ReLU" if "relu" in f.acts else "has activations vgrad could not name"
        out.append(("leaky ReLU, GELU or SiLU", f"{f.where} {seen}: a unit whose input is negative for every example "
                    "gets no gradient and cannot recover; a non-zero slope for negative inputs keeps it alive "
                    "(Maas et al. 2013)"))
    if f.lr is not None:
        out.append(_lower_lr(f, "large steps push units into the region where they output 0 for every input"))
    return out, dropped


def _underfitting(f: Facts, by_key: dict, trend: str):
    out = [("train longer", "the gradient reaches every block; the loss is still high")]
    if f.lr is not None:
        out.append(("a larger learning rate", f"{f.lr_text(schedule=False)}: every block learns, but slowly"))
    return out, False


def _lower_lr(f: Facts, because: str) -> tuple[str, str]:
    return ("a lower learning rate", f"{f.lr_text(schedule=False)}: smaller steps, e.g. {f.lr / 10:.3g}, {because}")


def _warmup(f: Facts, trend: str) -> tuple[str, str]:
    return ("learning-rate warm-up", f"{f.lr_text()}{trend}: a warm-up keeps the first steps small while the "
            "optimizer's statistics and the norms' scales settle (Goyal et al. 2017; Liu et al. 2020)")


def _trend(by_key: dict, verdict: str) -> str:
    """The ratio's course, from the indicator's evidence: ' (block ratio 0.25 at step 0, 2e-18 at step 8)'."""
    if verdict != "vanishing":
        return ""
    ev = (by_key.get("gradient_decay") or {}).get("evidence") or {}
    parts = []
    for when in ("first_step", "last_step"):
        per = ev.get(when) or {}
        r = (per.get("delta") or {}).get("ratio")
        if isinstance(r, (int, float)) and per.get("step") is not None:
            parts.append(f"{r:.2g} at step {per['step']}")
    return f" (delta_norm ratio first/last {', '.join(parts)})" if parts else ""
