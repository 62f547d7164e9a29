"""What a row of layers.csv is, and how the layers of any torch.nn.Module are found.

A layer is a ProbeLayer: its trainable parameters (grad_norm, update_ratio), its main weight
(weight_norm, weight_drift), the module whose output's gradient is its δ, and where its activation
statistics come from. vgrad's own models declare theirs (models/); for any other model, `discover`
finds them from one forward pass: every module that holds parameters (Linear, Conv, Embedding,
RNN/LSTM/GRU, MultiheadAttention, the norms, ...), in the order the forward pass first calls it,
named by its module path.

Every trainable parameter is in exactly one row. A parameter several modules hold (tied weights:
GPT-2's token embedding and LM head) is measured in the row of the module the forward pass calls
first; the others keep their row (their δ is measured) and say what they are tied to. A module whose
parameters are all frozen (requires_grad False: a partial fine-tune, LoRA's base weights) keeps a row
that says `frozen` and measures nothing. Parameters of modules the forward pass never calls (the root
module of a model that returns a dict, for one) go to the nearest called ancestor, or to a row
`(other)`.

Activations: the output of an activation module (nn.ReLU, transformers' GELUActivation, ...) called
once after the layer; else the next layer's input when it is computed from this layer's output by
one elementwise operation (F.relu, dropout: the autograd graph says so). Otherwise none: the next
layer's input may be another branch's tensor (Llama's q_proj and k_proj read the same input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

# activation modules whose statistics vgrad knows (their saturated regions: activations.py)
ACTIVATION_TYPES = {"ReLU": "relu", "LeakyReLU": "leaky_relu", "PReLU": "prelu", "Sigmoid": "sigmoid",
                    "Tanh": "tanh", "GELU": "gelu", "SiLU": "silu", "ELU": "elu", "SELU": "selu"}
UNKNOWN = "unknown"  # an activation seen only as the next layer's input (e.g. F.relu): no saturation stat
# modules whose outputs hold their units (channels) on axis 1, not the last axis
CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                 nn.GroupNorm)
FROZEN = "frozen"
OTHER = "(other)"


@dataclass
class ProbeLayer:
    name: str
    params: list     # its trainable parameters: grad_norm and update_ratio cover all of them
    weight: Any      # the layer's main weight: weight_norm and weight_drift (None: no trainable weight)
    delta: Any = None            # module: δ = dL/d(its output); None: the model records δ itself
    act: Any = None              # module whose output is the layer's activation ...
    act_input_of: Any = None     # ... or the module whose input is (an activation without a module)
    activation: str | None = None  # its name in activations.py, UNKNOWN, or None: the probe's default
    channel_dim: int = -1        # the axis of the output that holds the units
    recurrent: bool = False      # weight is a W_hh (one H x H block per gate): its rho and sigma_max are measured
    modules: list = field(default_factory=list)  # every module of the layer (hooks, grouping)
    weights: list | None = None  # several main weights (a group of modules): weight_norm over all of them
    note: str = ""               # "frozen", "tied to ...": what the row's empty cells mean

    def __post_init__(self):
        if self.weights is None:
            self.weights = [self.weight] if self.weight is not None else []


def activation_kind(module) -> str | None:
    """The activations.py name of an activation module, UNKNOWN for one vgrad has no rule for
    (transformers' own activation classes), None for a module that is no activation."""
    name = type(module).__name__
    if name in ACTIVATION_TYPES:
        return ACTIVATION_TYPES[name]
    if type(module).__module__.startswith("transformers.activations") or name.endswith("Activation"):
        # GELUActivation, NewGELUActivation, SiLUActivation, ...: saturation like their family's
        return next((ACTIVATION_TYPES[k] for k in ("GELU", "SiLU", "ReLU", "Tanh", "Sigmoid") if k in name), UNKNOWN)
    return None


def is_activation(module) -> bool:
    return activation_kind(module) is not None


def _holds_params(module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def hook_candidates(model) -> list:
    """The modules a discovery pass watches: those holding parameters, and activation modules."""
    return [m for m in model.modules() if _holds_params(m) or is_activation(m)]


def main_weight(module, params: list):
    for attr in ("weight", "weight_hh_l0", "in_proj_weight"):
        w = getattr(module, attr, None)
        if isinstance(w, nn.Parameter) and any(w is p for p in params):
            return w
    return max(params, key=lambda p: p.numel())


def owners(model, called: list) -> tuple[dict, dict]:
    """(id(parameter) -> the module whose row holds it, id(module) -> [names it shares with an
    earlier module]). A parameter held directly by several called modules belongs to the first
    called; one no called module holds directly, to its deepest called ancestor."""
    names = {id(m): n for n, m in model.named_modules()}
    owner, direct, tied = {}, set(), {}
    for m in called:
        for pname, p in m.named_parameters(recurse=False):
            if id(p) not in owner:
                owner[id(p)] = m
                direct.add(id(p))
            elif owner[id(p)] is not m:
                tied.setdefault(id(m), []).append(f"{names[id(owner[id(p)])]}.{pname}")
    called_ids = {id(m) for m in called}
    for module in model.modules():  # parents first: the deepest called ancestor wins
        if id(module) in called_ids:
            for p in module.parameters():
                if id(p) not in direct:
                    owner[id(p)] = module
    return owner, tied


def discover(model, order: list, feeds, calls, layers=None) -> tuple[list[ProbeLayer], list[str]]:
    """Layers from the first-call `order` of the watched modules (a recording of one forward pass).
    feeds(a, b): "same" when module b's input is module a's output, "op" when it is computed from it
    by one elementwise operation, else None; calls(m): how often m ran. Returns (layers, notes)."""
    names = {id(m): n or "(model)" for n, m in model.named_modules()}
    called = [m for m in order if _holds_params(m)]
    owner, tied = owners(model, called)
    notes = []
    found = []
    for k, m in enumerate(called):
        held = [p for p in m.parameters() if owner.get(id(p)) is m]
        params = [p for p in held if p.requires_grad]
        if not held and id(m) not in tied:
            continue
        note = FROZEN if held and not params else (f"tied to {', '.join(tied[id(m)])}" if id(m) in tied else "")
        weight = main_weight(m, params) if params else None
        layer = ProbeLayer(names[id(m)], params, weight, delta=m, modules=[m], note=note,
                           channel_dim=1 if isinstance(m, CHANNEL_FIRST) else -1,
                           # a projected LSTM's W_hh (4H x proj) has no square gate blocks
                           recurrent=weight is not None and weight is getattr(m, "weight_hh_l0", None)
                           and not getattr(m, "proj_size", 0))
        if note != FROZEN:
            _find_activation(layer, m, called[k + 1] if k + 1 < len(called) else None, order, feeds, calls)
        found.append(layer)
    loose = [(n, p) for n, p in model.named_parameters() if id(p) not in owner and p.requires_grad]
    if loose:  # every trainable parameter is in exactly one row (and in grad_norm_total)
        found.append(ProbeLayer(OTHER, [p for _, p in loose], main_weight(model, [p for _, p in loose])))
        notes.append(f"{len(loose)} parameter(s) belong to no module the forward pass called "
                     f"(e.g. {loose[0][0]}): measured in the row '{OTHER}', without δ")
    return (group(found, layers, names) if layers is not None else found), notes


def _find_activation(layer: ProbeLayer, m, nxt, order: list, feeds, calls):
    start = order.index(m)
    stop = order.index(nxt) if nxt is not None else len(order)
    # an activation module shared by several places (a ResNet block's one self.relu) cannot say
    # which output is this layer's: read the next layer's input instead
    acts = [a for a in order[start + 1:stop] if is_activation(a)]
    if acts and calls(acts[0]) == 1:
        layer.act, layer.activation = acts[0], activation_kind(acts[0])
    elif nxt is not None and feeds(m, nxt) == "op":
        layer.act_input_of, layer.activation = nxt, UNKNOWN


def group(found: list[ProbeLayer], layers, names: dict) -> list[ProbeLayer]:
    """`layers=`: a list of module names (or prefixes) narrows the rows to those; a dict
    {row name: [module names or prefixes]} makes one row of several modules (δ at the last one
    the forward pass calls, activation that of the last one)."""
    def matches(layer, pattern: str) -> bool:
        return layer.name == pattern or layer.name.startswith(pattern.rstrip(".") + ".")

    if isinstance(layers, dict):
        out = []
        for row, patterns in layers.items():
            members = [f for f in found if any(matches(f, p) for p in ([patterns] if isinstance(patterns, str) else patterns))]
            if not members:
                raise ValueError(f"layers={{{row!r}: ...}} matches no module with parameters; found: "
                                 + ", ".join(f.name for f in found[:12]))
            last = members[-1]
            params = [p for f in members for p in f.params]
            out.append(ProbeLayer(row, params, members[0].weight, delta=last.delta, act=last.act,
                                  act_input_of=last.act_input_of, activation=last.activation,
                                  channel_dim=last.channel_dim, modules=[m for f in members for m in f.modules],
                                  weights=[w for f in members for w in f.weights],  # the whole group's
                                  note=FROZEN if not params else ""))
        return out
    kept = [f for f in found if any(matches(f, p) for p in layers)]
    if not kept:
        raise ValueError(f"layers={list(layers)!r} matches no module with parameters; found: "
                         + ", ".join(f.name for f in found[:12]))
    return kept


def static_order(model) -> list:
    """The modules holding parameters in definition order: the layer order when no forward pass may
    be watched (a torch.compile'd model, whose graph a hook would break)."""
    return [m for m in model.modules() if _holds_params(m)]
