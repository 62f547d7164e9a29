"""What a row of layers.csv is, and how the layers of any torch.nn.Module are found.

A layer is a ProbeLayer: its parameters (grad_norm, update_ratio), its main weight (weight_norm,
weight_drift), the module whose output's gradient is its δ, and where its activation statistics
come from. vgrad's own models declare theirs (models/); for any other model, `discover` finds them
from one forward pass: every module that holds parameters (Linear, Conv, Embedding, RNN/LSTM/GRU,
MultiheadAttention, the norms, ...), in the order the forward pass first calls it, named by its
module path. Activations: the output of an activation module (nn.ReLU, ...) called after the layer,
else the input the next layer receives (that catches F.relu), unless that input is the layer's own
output untouched.
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


@dataclass
class ProbeLayer:
    name: str
    params: list     # every parameter of the layer: grad_norm and update_ratio cover all of them
    weight: Any      # the layer's main weight: weight_norm and weight_drift
    delta: Any = None            # module: δ = dL/d(its output); None: the model records δ itself
    act: Any = None              # module whose output is the layer's activation ...
    act_input_of: Any = None     # ... or the module whose input is (an activation without a module)
    activation: str | None = None  # its name in activations.py, UNKNOWN, or None: the probe's default
    channel_dim: int = -1        # the axis of the output that holds the units
    recurrent: bool = False      # weight is a W_hh (one H x H block per gate): its rho and sigma_max are measured
    modules: list = field(default_factory=list)  # every module of the layer (hooks, grouping)


def is_activation(module) -> bool:
    return type(module).__name__ in ACTIVATION_TYPES


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


def discover(model, order: list, same_tensor, calls, layers=None) -> tuple[list[ProbeLayer], list[str]]:
    """Layers from the first-call `order` of the watched modules (a recording of one forward pass).
    same_tensor(a, b): whether module b's input was module a's output untouched; calls(m): how
    often m ran. Returns (layers, notes about parameters no layer holds)."""
    names = {id(m): n or "(model)" for n, m in model.named_modules()}
    called = [m for m in order if _holds_params(m)]
    owner = {}  # parameter -> the called module that holds it: itself, or its nearest called ancestor
    called_ids = {id(m) for m in called}
    for module in model.modules():
        if id(module) not in called_ids:
            continue
        for p in module.parameters():
            key = id(p)
            # the deepest called module wins: named_modules goes parents first
            owner[key] = module
    notes = []
    loose = [n for n, p in model.named_parameters() if id(p) not in owner and p.requires_grad]
    if loose:
        notes.append(f"{len(loose)} parameter(s) belong to no module the forward pass called (e.g. {loose[0]}): not in any row")
    found = []
    for k, m in enumerate(called):
        params = [p for p in m.parameters() if owner.get(id(p)) is m]
        if not params:
            continue
        weight = main_weight(m, params)
        layer = ProbeLayer(names[id(m)], params, weight, delta=m, modules=[m],
                           channel_dim=1 if isinstance(m, CHANNEL_FIRST) else -1,
                           # a projected LSTM's W_hh (4H x proj) has no square gate blocks
                           recurrent=weight is getattr(m, "weight_hh_l0", None) and not getattr(m, "proj_size", 0))
        nxt = called[k + 1] if k + 1 < len(called) else None
        start = order.index(m)
        stop = order.index(nxt) if nxt is not None else len(order)
        # an activation module shared by several places (a ResNet block's one self.relu) cannot
        # say which output is this layer's: read the next layer's input instead
        acts = [a for a in order[start + 1:stop] if is_activation(a)]
        if acts and calls(acts[0]) == 1:
            layer.act, layer.activation = acts[0], ACTIVATION_TYPES[type(acts[0]).__name__]
        elif nxt is not None and not same_tensor(m, nxt):
            layer.act_input_of, layer.activation = nxt, UNKNOWN
        found.append(layer)
    return (group(found, layers, names) if layers is not None else found), notes


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
                                  channel_dim=last.channel_dim, modules=[m for f in members for m in f.modules]))
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
