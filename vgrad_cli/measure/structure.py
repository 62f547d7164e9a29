"""What a model is made of, read once from the discovery pass (the first logged step): its norms and
where each block holds them, residual adds, activations, the scale of the blocks' weights, frozen
parts and adapters. Monitor writes it into config.yaml as `model.structure` (docs/run-format.md);
`vgrad diagnose` advises only what fits it (analysis/own_advice.py).

Everything comes from the forward pass and the autograd graph, never from class names like
"BertLayer" (a norm's own class says only its kind):
- norm placement: a block is Pre-LN when the first module with parameters it calls is a norm, Post-LN
  when its output *is* a norm's output (the residual stream passes through a norm at every block);
- a residual add: a few autograd nodes back from the block's output, an addition one of whose inputs
  is the node that made the block's input (`x + f(x)`). Where the input has no autograd history
  (blocks below frozen ones), only the weaker sign is left: output shape == input shape;
- activations: activation modules by class, functional ones (F.relu) by the autograd node that made
  a layer's input (ReluBackward0, through a dropout at most).
"""

from __future__ import annotations

import math

from torch import nn

from .layers import FROZEN, activation_kind

# autograd nodes of the elementwise activations (F.relu, F.gelu, torch.sigmoid, ...)
GRAPH_ACTIVATIONS = {"ReluBackward0": "relu", "GeluBackward0": "gelu", "SiluBackward0": "silu",
                     "SigmoidBackward0": "sigmoid", "TanhBackward0": "tanh", "LeakyReluBackward0": "leaky_relu",
                     "EluBackward0": "elu", "PreluKernelBackward0": "prelu"}
# between an activation and its consumer: a dropout (on CPU a MulBackward0 by its mask: the first
# operand is the activation's output, as in SwiGLU's act(gate) * up), a copy
PASSTHROUGH = {"NativeDropoutBackward0", "MulBackward0", "CloneBackward0", "ToCopyBackward0"}
SATURATING = ("sigmoid", "tanh")
GRAPH_BUDGET = 400  # autograd nodes searched per block for the residual add (a block's graph is ~10-100 nodes)
SAMPLE = 1 << 16    # elements per weight for its std: enough for the scale, cheap on a large model
MAX_NAMES = 30      # names listed per key; a longer list ends with "... (N more)"


def norm_kind(module) -> str | None:
    """layernorm, rmsnorm (torch's RMSNorm, HF's LlamaRMSNorm, T5LayerNorm: no mean, no bias),
    batchnorm, groupnorm, instancenorm, norm (another class named ...Norm), or None."""
    name = type(module).__name__.lower()
    if isinstance(module, getattr(nn, "RMSNorm", ())) or "rmsnorm" in name or (
            "norm" in name and hasattr(module, "variance_epsilon") and getattr(module, "bias", None) is None):
        return "rmsnorm"
    if isinstance(module, nn.LayerNorm) or "layernorm" in name:
        return "layernorm"
    if isinstance(module, nn.modules.batchnorm._BatchNorm) or "batchnorm" in name:
        return "batchnorm"
    if isinstance(module, nn.GroupNorm) or "groupnorm" in name:
        return "groupnorm"
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return "instancenorm"
    return "norm" if name.endswith("norm") else None


def detect(model, layers: list, view, rec, feeds) -> dict:
    """model.structure: from the discovery pass's recorder `rec` (first-call order, outputs and
    inputs with their autograd graph), the module rows `layers`, the block view (rows, main stack)
    or None, and feeds(a, b): whether module b's input is a's output or one elementwise op of it.
    It only feeds the advice: a model it cannot read gets {"error": ...}, never a stopped training."""
    try:
        return _detect(model, layers, view, rec, feeds)
    except Exception as e:  # noqa: BLE001 - e.g. a tensor subclass without data_ptr
        return {"error": f"not detected: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def _detect(model, layers: list, view, rec, feeds) -> dict:
    names = {id(m): n for n, m in model.named_modules()}
    order = rec.order
    if not rec.out:  # no hooks (a compiled model): the activation modules by class only
        order = order + [m for m in model.modules() if activation_kind(m)]
    out = {"norms": _kinds(norm_kind(m) for m in _norm_modules(model, order)),
           "activations": _activations(order, rec, layers, lambda n: True, names)}
    rows = view[0] if view is not None else []
    stacks = list(dict.fromkeys(r.stack for r in rows if r.role == "block"))
    if stacks:
        out["stacks"] = [_stack(s, [r for r in rows if r.role == "block" and r.stack == s], model, order, rec, layers,
                                names) for s in stacks]
    elif (gain := _weight_gain(list(model.modules()))) is not None:
        out["weight_gain"] = gain  # no blocks: over the whole model's Linear and conv weights
    chain = len(layers) >= 3 and rec.out and all(a.modules and b.modules and feeds(a.modules[0], b.modules[0])
                                                 for a, b in zip(layers, layers[1:]))
    if not stacks and chain:  # no blocks: a chain of layers (an MLP) has no residual add when each feeds the next
        out["residual"] = False
        out["residual_evidence"] = "each layer's input is the previous layer's output, or one elementwise op of it"
    frozen = [r.name for r in rows if r.note == FROZEN] if rows else [x.name for x in layers if x.note == FROZEN]
    partly = [r.name for r in rows if r.note == "partly " + FROZEN]
    if frozen:
        out["frozen"] = _capped(frozen)
    if partly:
        out["partly_frozen"] = _capped(partly)
    adapted = [n.rsplit(".", 1)[0] for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] == "lora_A"]
    if adapted:
        out["adapters"] = {"kind": "lora", "modules": len(adapted), "examples": adapted[:3]}
    return out


def _stack(stack: str, blocks: list, model, order: list, rec, layers: list, names: dict) -> dict:
    modules = [b.delta for b in blocks]
    prefixes = [b.name + "." for b in blocks]

    def inside(name: str) -> bool:  # a module of the stack: in one of its blocks, or between them (a chain's activations)
        return any(name.startswith(p) for p in prefixes) or (stack and name.startswith(stack + "."))

    positions = [_position(b, names, order, rec) for b in modules]
    residual = [adds_input(b, rec) for b in modules]
    by_graph = [r for r in residual if r is not None]
    entry = {"name": stack, "blocks": len(blocks), "block_type": type(modules[0]).__name__,
             "norms": _kinds(norm_kind(m) for m in order if inside(names.get(id(m), "")) and norm_kind(m)),
             "norm_position": positions[0] if len(set(positions)) == 1 else "mixed",
             "activations": _activations(order, rec, layers, inside, names, rec.inp.get(id(modules[0])))}
    if by_graph:
        entry["residual"] = any(by_graph)
        entry["residual_evidence"] = (f"autograd graph: {sum(by_graph)} of {len(by_graph)} blocks add their input "
                                      "to their output")
    else:  # no autograd history at any block's input (below frozen blocks): the weaker sign
        same = [_keeps_shape(b, rec) for b in modules]
        entry["residual"] = all(same) if all(s is not None for s in same) else None
        entry["residual_evidence"] = "shape only: each block's output has its input's shape" if entry["residual"] \
            else "unknown: no autograd history at the blocks' inputs"
    gain = _weight_gain([m for b in modules for m in b.modules()])
    if gain is not None:
        entry["weight_gain"] = gain
    frozen = [b.name for b in blocks if b.note == FROZEN]
    partly = [b.name for b in blocks if b.note == "partly " + FROZEN]
    if frozen:
        entry["frozen_blocks"] = _capped(frozen)
    if partly:
        entry["partly_frozen_blocks"] = _capped(partly)
    return entry


def _norm_modules(model, order: list) -> list:
    """The norms the forward pass called (those with parameters are in `order`), and norms without
    parameters, which no hook watched (placement is not known for those)."""
    called = [m for m in order if norm_kind(m)]
    bare = [m for m in model.modules() if norm_kind(m) and not any(True for _ in m.parameters(recurse=False))]
    return called + bare


def _position(block, names: dict, order: list, rec) -> str:
    """post: the block's output is a norm's output; pre: the first module with parameters it calls
    is a norm; inside: norms elsewhere in it (a conv-BN-ReLU branch); none."""
    prefix = names.get(id(block), "") + "."
    inner = [m for m in order if m is not block and names.get(id(m), "").startswith(prefix)]
    norms = [m for m in inner if norm_kind(m)]
    if not norms:
        return "none"
    y = _first(rec.out.get(id(block)))
    if y is not None and any(_same(o, y) for n in norms for o in rec.out.get(id(n), [])):
        return "post"
    first = next((m for m in inner if any(True for _ in m.parameters(recurse=False))), None)
    return "pre" if first is not None and norm_kind(first) else "inside"


def adds_input(block, rec) -> bool | None:
    """Whether the block's output is computed by an addition of its input (x + f(x)), from the
    autograd graph; None where the input (or the output) has no autograd history."""
    y, x = _first(rec.out.get(id(block))), rec.inp.get(id(block))
    if y is None or x is None or y.grad_fn is None or x.grad_fn is None:
        return None
    target, queue, seen = x.grad_fn, [y.grad_fn], {}
    while queue and len(seen) < GRAPH_BUDGET:
        node = queue.pop(0)
        if node is None or node is target or id(node) in seen:
            continue
        seen[id(node)] = node  # held, so that no other node's wrapper takes its id
        parents = [f for f, _ in node.next_functions]
        if type(node).__name__.startswith("AddBackward") and any(f is target for f in parents):
            return True
        queue += parents
    return False


def _keeps_shape(block, rec) -> bool | None:
    y, x = _first(rec.out.get(id(block))), rec.inp.get(id(block))
    return None if y is None or x is None else tuple(y.shape) == tuple(x.shape)


def _activations(order: list, rec, layers: list, inside, names: dict, entry=None) -> list[str]:
    """Activation kinds in the part of the model `inside` accepts (by module name): activation
    modules by class, functional ones by the autograd node that made a module's input (not the
    `entry` tensor: a stack's input comes from before it, e.g. a pooler's tanh before a head);
    `unknown` where a layer's activation was seen only as an operation (layers.py) of no kind known here."""
    kinds = [activation_kind(m) for m in order if activation_kind(m) and inside(names.get(id(m), ""))]
    for m in order:
        x = rec.inp.get(id(m))
        if x is not None and inside(names.get(id(m), "")) and not (entry is not None and _same(x, entry)):
            kinds.append(_graph_activation(x))
    found = _kinds(k for k in kinds if k and k != "unknown")
    if not found and any(x.activation == "unknown" and inside(x.name) for x in layers):
        return ["unknown"]
    return found


def _graph_activation(x) -> str | None:
    fn = getattr(x, "grad_fn", None)
    for _ in range(2):  # the activation's node, or a dropout over it
        if fn is None:
            return None
        kind = GRAPH_ACTIVATIONS.get(type(fn).__name__)
        if kind is not None:
            return kind
        if type(fn).__name__ not in PASSTHROUGH or not fn.next_functions:
            return None
        fn = fn.next_functions[0][0]
    return None


def _weight_gain(modules: list) -> float | None:
    """The median over the Linear and conv weights (HF's Conv1D, attention's in_proj too) of
    std(W)·sqrt(fan_in): ~0.58 for torch's default init, 1.41 for Kaiming (ReLU), 1 for LeCun;
    GPT-2's std 0.02 gives 0.16 at width 64, 0.55 at 768. Measured once, on a sample of each weight."""
    import torch

    weights = []
    for m in {id(m): m for m in modules}.values():
        w = getattr(m, "in_proj_weight", None) if isinstance(m, nn.MultiheadAttention) else getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() < 2 or w.numel() < 2:
            continue
        if isinstance(m, (nn.Linear, nn.MultiheadAttention)):
            fan_in = w.shape[1]
        elif isinstance(m, nn.modules.conv._ConvNd):
            fan_in = w[0].numel()
        elif type(m).__name__ == "Conv1D":  # transformers' GPT-2 layer: weight is (in, out)
            fan_in = w.shape[0]
        else:
            continue
        weights.append((w, fan_in))
    if not weights:
        return None
    with torch.no_grad():
        stds = torch.stack([w.detach().reshape(-1)[:SAMPLE].float().std() for w, _ in weights]).tolist()
    gains = sorted(s * math.sqrt(f) for s, (_, f) in zip(stds, weights) if math.isfinite(s))
    return round(gains[len(gains) // 2], 4) if gains else None


def _first(tensors):
    return tensors[0] if tensors else None


def _same(a, b) -> bool:
    return a is b or (tuple(a.shape) == tuple(b.shape) and a.data_ptr() == b.data_ptr())


def _kinds(kinds) -> list[str]:
    return sorted({k for k in kinds if k})


def _capped(names: list[str]) -> list[str]:
    return names if len(names) <= MAX_NAMES else names[:MAX_NAMES] + [f"... ({len(names) - MAX_NAMES} more)"]
