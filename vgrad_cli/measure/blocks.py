"""The block view of a model: its repeated blocks, and what comes before and after them.

A modern network is an embedding, a stack of identical blocks (transformer layers, ResNet blocks,
Mamba layers) each adding to a residual stream, and a head. The gradient that travels through depth
is the one at the stream between blocks; the modules inside a block (q/k/v projections, norm gains,
MLP halves) differ by orders of magnitude for reasons unrelated to depth. So for such a model vgrad
reads one row per block (blocks.csv) beside the module rows (layers.csv).

A *stack* is an nn.ModuleList or nn.Sequential whose children (two or more) share one class and feed
each other in the forward pass: child k+1's first input is child k's first output, directly or
through one elementwise operation (dropout). MoE experts share a class but read routed tokens, not
each other's output: not a stack. Stacks nested in the blocks of another stack (a ResNet's stages
hold stacks of bottleneck layers) give the finer blocks: the view's blocks are the children of the
innermost stacks, and each belongs to its outermost stack. The *main* stack, whose first and last
trainable blocks the verdict compares, is the one with the most blocks (a tie: the later one, nearer
the loss).

Rows, in forward order: `embedding` (the modules called before the first block), one row per block
(role `block`, with its stack), rows for the modules between stacks (role `between`), and `head`
(the modules after the last block). A block's δ is the gradient at its output (the residual stream
after it); the embedding's is the gradient at the first block's input (the stream entering the
stack); the other rows' δ is that of their last module. Parameters, weight norms, drift and update
ratios are those of the module rows a view row holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .distributed import clean_name
from .layers import FROZEN, OTHER

ROLES = ("embedding", "block", "between", "head", "other")


@dataclass
class ViewRow:
    name: str
    role: str
    stack: str = ""               # the stack's module path (blocks only)
    members: list = field(default_factory=list)  # indices of the module rows it holds
    delta: Any = None             # module whose output's gradient is the row's δ ...
    delta_input_of: Any = None    # ... or the module whose input's gradient is (the embedding)
    note: str = ""


def block_candidates(model) -> list:
    """Children of ModuleList/Sequential containers that have a sibling of their class: what a
    discovery pass must also watch (their outputs and inputs) to find the stacks."""
    return [c for _, run in _runs(model) for c in run]


def _runs(model):
    """(container name, run): each maximal run of two or more consecutive children of one class in
    an nn.ModuleList or nn.Sequential (a classifier `Sequential(*pairs, Linear)` has one: the pairs)."""
    for name, m in model.named_modules():
        name = clean_name(name)
        if not isinstance(m, (nn.ModuleList, nn.Sequential)):
            continue
        run: list = []
        for child in list(m.children()) + [None]:
            if run and (child is None or type(child) is not type(run[0])):
                if len(run) >= 2 and any(True for _ in run[0].parameters()):
                    yield name, run
                run = []
            if child is not None:
                run.append(child)


def find_view(model, layers: list, names: dict, order: list, feeds, keeps_shape,
              adds_input=lambda m: None) -> tuple[list[ViewRow], str] | None:
    """The view rows and the main stack's name, or None when the model has no stack of blocks.
    feeds(a, b): whether b's first input is a's output (or one elementwise op of it);
    keeps_shape(m): whether m's output has its input's shape (a block on a residual stream);
    adds_input(m): whether m's output adds its input back (x + f(x): a residual block)."""
    called = {id(m) for m in order}
    stacks = []  # (container name, children): runs whose members feed each other, in call order
    for cname, run in _runs(model):
        if all(id(c) in called for c in run) and all(feeds(a, b) for a, b in zip(run, run[1:])) \
                and _in_call_order(run, order):
            stacks.append((cname, run))
    if not stacks:
        return None

    def inside(s, t) -> bool:  # stack s lies within one of stack t's members
        return s is not t and any(names[id(c)].startswith(names[id(m)] + ".") for c in s[1][:1] for m in t[1])

    # The blocks: members of the innermost stacks that carry a stream (most members keep the shape of
    # their input: not a bottleneck's 1x1/3x3/1x1 convolutions); each counted in its outermost stack.
    stream = [s for s in stacks if 2 * sum(bool(keeps_shape(c)) for c in s[1]) >= len(s[1])]
    # A stack of residual blocks wins over a plain stack inside its blocks: a basic ResNet block's
    # two convolutions share a class and keep the shape too, but the stream runs through the blocks.
    residual = [s for s in stream if 2 * sum(bool(adds_input(c)) for c in s[1]) >= len(s[1])]
    stream = [s for s in stream if s in residual or not any(inside(s, t) for t in residual)]
    inner = [s for s in stream if not any(inside(t, s) for t in stream)]
    blocks = []
    for s in inner:
        outer = min((t for t in stacks if t is s or inside(s, t)), key=lambda t: len(t[0]))
        blocks += [(outer[0], names[id(c)], c) for c in s[1]]
    blocks += _chains(layers, blocks, feeds)
    blocks.sort(key=lambda b: order.index(b[2]))
    size, last = {}, {}
    for i, (stack, _, _) in enumerate(blocks):
        size[stack], last[stack] = size.get(stack, 0) + 1, i
    main = max(size, key=lambda s: (size[s], last[s]))
    return _rows(layers, blocks, order), main


def _chains(layers: list, blocks: list, feeds) -> list:
    """Outside the blocks, runs of three or more modules of one class that feed each other (an MLP
    head of Linear + activation pairs): each is a stack of its own, whose blocks are the modules."""
    def in_block(layer) -> bool:
        return any(layer.name == b or layer.name.startswith(b + ".") for _, b, _ in blocks)

    out, run = [], []
    for layer in [x for x in layers if x.modules and not in_block(x)] + [None]:
        if run and (layer is None or type(layer.modules[0]) is not type(run[-1].modules[0])
                    or not feeds(run[-1].modules[0], layer.modules[0])):
            if len(run) >= 3:
                stack = _common_prefix([x.name for x in run])
                out += [(stack, x.name, x.modules[0]) for x in run]
            run = []
        if layer is not None:
            run.append(layer)
    return out


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common) or f"{names[0]}..{names[-1]}"


def _in_call_order(children, order) -> bool:
    pos = [order.index(c) for c in children]
    return pos == sorted(pos)


def _rows(layers: list, blocks: list, order: list) -> list[ViewRow]:
    """The view rows in forward order. `order` lists modules as their forward calls complete (a
    block after the modules inside it), and `layers` follows it: each module row goes into the block
    whose path holds it, else into the segment of consecutive modules no block completes between."""
    view = {k: ViewRow(bname, "block", stack, delta=block) for k, (stack, bname, block) in enumerate(blocks)}
    events = [(order.index(block), "block", k) for k, (_, _, block) in enumerate(blocks)]
    others = []
    for i, layer in enumerate(layers):
        k = next((k for k, (_, bname, _) in enumerate(blocks)
                  if layer.name == bname or layer.name.startswith(bname + ".")), None)
        if k is not None:
            view[k].members.append(i)
        elif layer.name == OTHER or not layer.modules or layer.modules[0] not in order:
            others.append(ViewRow(OTHER, "other", members=[i]))
        elif any(bname.startswith(layer.name + ".") for _, bname, _ in blocks) or layer.name == "(model)":
            # a module that holds blocks and parameters of its own (the root's position embedding): its
            # call completes after the head's, but its output is no stream (the root's is the loss)
            others.append(ViewRow(layer.name, "other", members=[i]))
        else:
            events.append((order.index(layer.modules[0]), "module", i))
    first_block, last_block = order.index(blocks[0][2]), order.index(blocks[-1][2])
    rows, segment = [], None
    for at, kind, i in sorted(events):
        if kind == "block":
            rows.append(view[i])
            segment = None
            continue
        if segment is None:
            role = "embedding" if at < first_block else "head" if at > last_block else "between"
            segment = ViewRow(role if role != "between" else layers[i].name, role)
            if role == "embedding":  # its δ: the stream entering the first block
                segment.delta_input_of = blocks[0][2]
            rows.append(segment)
        segment.members.append(i)
        if segment.role != "embedding":
            segment.delta = layers[i].delta  # δ at the segment's last module's output
    for r in rows + others:
        notes = {layers[i].note for i in r.members}
        trainable = any(layers[i].params for i in r.members)
        # frozen: nothing of it trains (LoRA's head: a frozen ln_f and an lm_head tied to the frozen wte)
        r.note = FROZEN if FROZEN in notes and not trainable else "partly frozen" if FROZEN in notes else ""
    return rows + others


class BlockView:
    """The view rows' statistics, summed from the module rows' (sqrt of sums of squares, so a
    block's gradient norm is that of all its parameters), and δ where each row's stream is."""

    def __init__(self, rows: list[ViewRow], main: str, layers: list, device):
        import torch

        self.rows, self.main, self.n = rows, main, len(rows)
        where = {i: k for k, r in enumerate(rows) for i in r.members}
        self.layer_view = torch.tensor([where[i] for i in range(len(layers))], device=device)
        self.empty = {k for k, r in enumerate(rows) if not any(layers[i].params for i in r.members)}
        self.no_drift: set | None = None  # rows whose weights start at 0, known at the first logged step

    def delta_modules(self) -> list:
        return [r.delta for r in self.rows if r.role == "block"]

    def delta_inputs(self) -> list:
        return [r.delta_input_of for r in self.rows if r.delta_input_of is not None]

    def _sum(self, per_layer):
        from .norms import per_layer_norm

        return per_layer_norm(per_layer, self.layer_view, self.n)

    def stats(self, s: dict, w0_norm, rec) -> dict:
        """From the module rows' statistics `s` of this step and the recorder's tensors."""
        import torch

        from .norms import norms64

        w0 = self._sum(w0_norm).float()
        if self.no_drift is None:
            self.no_drift = {k for k, v in enumerate(w0.tolist()) if v == 0}
        out = {"view_grad_norm": self._sum(s["grad_norm"]), "view_weight_norm": self._sum(s["weight_norm"]).float(),
               "view_weight_drift": self._sum(s["_drift"]).float() / w0,
               "view_grad_max_abs": torch.zeros_like(s["grad_max_abs"][:1]).expand(self.n).clone().scatter_reduce_(
                   0, self.layer_view, s["grad_max_abs"], "amax", include_self=False)}
        zs, index = [], []
        for k, r in enumerate(self.rows):
            if r.note == "frozen":
                continue
            if r.delta_input_of is not None:  # the embedding: the stream entering the first block
                tensors = [rec.inp[id(r.delta_input_of)]] if id(r.delta_input_of) in rec.inp else []
            else:
                tensors = rec.out.get(id(r.delta), []) if r.delta is not None else []
            tensors = [t for t in tensors if t.requires_grad]
            zs += tensors
            index += [k] * len(tensors)
        self.missing_delta = set(range(self.n)) - set(index)
        device = self.layer_view.device
        deltas = [z.grad if z.grad is not None else torch.zeros_like(z) for z in zs]
        out["view_delta_norm"] = self._sum_rows(norms64(deltas), index) if zs else \
            torch.zeros(self.n, dtype=torch.float64, device=device)
        return out

    def _sum_rows(self, values, index):
        import torch

        from .norms import per_layer_norm

        return per_layer_norm(values, torch.tensor(index, device=self.layer_view.device), self.n)

    def update(self, upd, old) -> dict:
        return {"view_update_ratio": self._sum(upd) / self._sum(old), "view_old": self._sum(old)}

    def table(self, step: int, host: dict, columns: list) -> list[dict]:
        old = host.get("view_old")
        out = []
        for k, r in enumerate(self.rows):
            row = {"step": step, "layer": k, "name": r.name, "role": r.role, "stack": r.stack or None, "note": r.note or None}
            for col in columns:
                if col in row:
                    continue
                vals = host.get(f"view_{col}")
                empty = (r.note == "frozen" or k in self.empty) and col != "delta_norm"
                if vals is None or empty or (col == "delta_norm" and k in self.missing_delta) or (
                        col == "weight_drift" and k in (self.no_drift or ())) or (
                        col == "update_ratio" and (old is None or old[k] == 0)):
                    row[col] = None
                else:
                    row[col] = vals[k]
            out.append(row)
        return out
