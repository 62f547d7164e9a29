"""The gradient across layers as the verdict and the live warning read it: one reading per stack of a
block view, and the gradient norms where δ was not measured.

Every stack. A model can have several stacks of blocks (an encoder and a decoder; BERT's layers and
a deep MLP head, which measure/blocks.py finds as a chain stack of its own). Each is read by its
first and last trainable blocks, and the worst reading decides: a vanishing head behind a healthy
encoder is vanishing. The summary's `*_ratio_*` keys stay the main stack's (verdict.ends()).

Without δ. A torch.compile'd model has no δ (Monitor cannot hook inside the compiled graph, and it
finds no block view either: that needs the forward order). Its readings take `grad_norm` instead,
with the verdict's thresholds. The ends are then the blocks the module rows' names show
(`transformer.h.3.attn.c_attn` is in block 3 of `transformer.h`; a block's gradient norm is the norm
over its rows' — each parameter is in exactly one row), since a model's first and last module rows
are an embedding and a head, unrelated tensors (GPT-2's `wte`/`ln_f` grad_norm ratio is 45 on a
healthy model, its blocks' 1.3); with no such names, the first and the last rows with a gradient
(an MLP's layer 0 and output). grad_norm also carries each layer's input scale, so it is weaker
evidence than δ: on the bundled healthy configs it stays within 0.02–30 at every logged step where
δ's ratio is 0.05–66 (measured: layer 0/output of configs 03, 06, 08, 19, 21), a factor 2 inside the
thresholds; and it can miss an explosion that δ shows (configs/09: δ ratio 733 at step 0, grad_norm's
0.19: layer 0's input is the small raw input). The text says when a reading comes from grad_norm.
"""

from __future__ import annotations

import math
import re

from .thresholds import finite
from .verdict import ends, ends_label, stacks

DELTA, GRAD = "delta_norm", "grad_norm"
COMPILED = "torch.compile'd model"
_INDEX = re.compile(r"\.(\d+)(?=\.|$)")  # the first ".<k>" of a module path: block k of the stack before it


def compiled(run) -> bool:
    """Whether the run's model was torch.compile'd (Monitor: config.yaml's log.compiled, or the note
    summary.json has carried since before that key)."""
    log = (run.config or {}).get("log") or {}
    return bool(log.get("compiled")) or any(str(n).startswith(COMPILED) for n in run.summary.get("notes") or [])


def no_delta_reason(run) -> str:
    """Why δ is empty where a reading needed it."""
    return COMPILED if compiled(run) else "no delta_norm at these rows"


def ratio(first, last) -> float | None:
    """first / last where both are measured and last > 0 (0 when the first is 0: no gradient passes)."""
    return first / last if finite(first) and finite(last) and last > 0 else None


def _measured(a: dict, b: dict, column: str = DELTA) -> bool:
    """Both ends have a value (a non-finite one too: δ was measured, and is what it is)."""
    return a.get(column) is not None and b.get(column) is not None


def reading(stack, first: dict, last: dict, hops: int, main: bool, column: str | None = None,
            label: str | None = None) -> dict:
    """One stack's reading: δ where both ends have it, else grad_norm."""
    column = column or (DELTA if _measured(first, last) else GRAD)
    return {"stack": stack, "main": main, "first": first.get("name"), "last": last.get("name"),
            "label": label or f"{first.get('name')}/{last.get('name')}", "column": column, "hops": max(1, hops),
            "ratio": ratio(first.get(column), last.get(column))}


def name_blocks(rows: list[dict]) -> tuple[str, list[dict]] | None:
    """Module rows read without hooks, grouped into the blocks their names show: (stack, one row per
    block with its name and grad_norm), for the stack with the most blocks (a tie: the later one);
    None when no name holds a block index. Frozen rows and rows without a gradient (tied, frozen)
    are left out, and so is a block none of whose rows has one."""
    groups: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        m = _INDEX.search(r.get("name") or "")
        if m is None or r.get("note") == "frozen":
            continue
        stack = r["name"][:m.start()]
        block = groups.setdefault(stack, {}).setdefault(int(m.group(1)), [])
        if finite(r.get(GRAD)):
            block.append(r[GRAD])
    groups = {s: {k: v for k, v in g.items() if v} for s, g in groups.items()}
    groups = {s: g for s, g in groups.items() if len(g) >= 2}
    if not groups:
        return None
    order = list(groups)
    stack = max(order, key=lambda s: (len(groups[s]), order.index(s)))
    return stack, [{"name": f"{stack}.{k}", GRAD: math.sqrt(sum(v * v for v in groups[stack][k]))}
                   for k in sorted(groups[stack])]


def readings(rows: list[dict], kind: str | None = None) -> list[dict]:
    """The readings the verdict judges, the main one first: a block view's stacks (the main one by
    verdict.ends(), the others by their first and last trainable blocks), else the rows' ends; where
    δ is missing at the ends of module rows, the blocks their names show, by grad_norm."""
    if not rows:
        return []
    by_stack = stacks(rows)
    first, last = ends(rows, kind)
    if by_stack:
        main = next(iter(by_stack))
        out = [reading(main if by_stack[main] else None, first, last, _hops(by_stack[main], first, last), True)]
        return out + [reading(s, b[0], b[-1], len(b) - 1, False) for s, b in list(by_stack.items())[1:] if len(b) >= 2]
    if _measured(first, last):
        return [reading(None, first, last, len(rows) - 1, True, label=ends_label(rows, kind))]
    measured = [r for r in rows if r.get(DELTA) is not None]  # e.g. a last row of parameters no module called
    if len(measured) >= 2:
        return [reading(None, measured[0], measured[-1], len(measured) - 1, True)]
    named = name_blocks(rows)
    if named is not None:
        stack, blocks = named
        return [reading(stack, blocks[0], blocks[-1], len(blocks) - 1, True, GRAD)]
    graded = [r for r in rows if finite(r.get(GRAD))]
    if len(graded) < 2:
        return []
    ends_named = graded[0] is first and graded[-1] is last
    return [reading(None, graded[0], graded[-1], len(graded) - 1, True, GRAD, ends_label(rows, kind) if ends_named else None)]


def _hops(blocks: list[dict], first: dict, last: dict) -> int:
    """Blocks between the main stack's ends (one block: the stream entering it to the one leaving)."""
    return blocks.index(last) - blocks.index(first) if first in blocks and last in blocks else 1


def judged(items: list[dict]) -> tuple[dict | None, dict | None]:
    """(the lowest, the highest) of the readings that have a ratio: the worst for each threshold."""
    have = [r for r in items if r["ratio"] is not None]
    if not have:
        return None, None
    return min(have, key=lambda r: r["ratio"]), max(have, key=lambda r: r["ratio"])


def text(r: dict, step: int | None = None) -> str:
    """'step 0: delta_norm a/b 0.25 (-0.5 dB/block)', naming the stack when it is not the main one."""
    where = f"step {step}: " if step is not None else ""
    stack = f"stack {r['stack']}: " if r["stack"] and not r["main"] else ""
    per = ""
    if r["ratio"] and r["ratio"] > 0:
        unit = "block" if r["stack"] else "layer"
        per = f" ({20 * math.log10(r['ratio']) / r['hops']:+.1f} dB/{unit})"
    value = f"{r['ratio']:.2g}" if r["ratio"] is not None else "not measured"
    return f"{where}{stack}{r['column']} {r['label']} {value}{per}"
