"""Which rows of several runs are the same place in the network: `vgrad compare` puts them on one line.

Rows pair by what they are, never by their index (a Post-LN and a Pre-LN layer call `self_attn` and
`norm1` in opposite orders; a deeper MLP has more hidden layers before its `output`):
- module rows (layers.csv, and vgrad's own declared layers) by name: `hidden3` with `hidden3`,
  `output` with `output`, `enc.layers.0.self_attn` with `enc.layers.0.self_attn`;
- rows of a block view (blocks.csv) by role: embedding with embedding, head with head, the k-th block
  of a stack with the k-th block of the matching stack (GPT-2's `transformer.h.3` with Llama's
  `model.layers.3`). Stacks match by name when every run has that stack, the others by their order
  in each run (BERT's encoder with ViT's layers; a second stack only one run has stays alone);
  rows between stacks by name.
A block row never pairs with a module row. A row only some runs have is blank in the others. The
merged order is the first run's; a row only a later run has goes after the furthest row it follows
there (a deeper MLP's hidden3 and hidden4 come before the shared `output`; a Pre-LN encoder's final
`enc.norm` after the last layer's modules, whatever their order).
"""

from __future__ import annotations


def row_key(row: dict, stack_id: dict, seen: dict) -> tuple:
    """What a row is, comparable across runs. seen: blocks counted so far per stack (updated)."""
    role = row.get("role")
    if role == "block":
        stack = row.get("stack")
        k = seen.get(stack, 0)
        seen[stack] = k + 1
        return ("block", stack_id[stack], k)
    if role in ("embedding", "head", "other"):
        return (role,)
    if role:  # "between": the modules between two stacks, by name
        return (role, row.get("name"))
    return ("module", row.get("name"))


def stack_ids(runs_rows: list[list[dict]]) -> list[dict]:
    """Per run, {stack name: its id}: the name itself where every run has that stack, else
    ("#", its position among the run's stacks that not every run has)."""
    stacks = [list(dict.fromkeys(r.get("stack") for r in rows if r.get("role") == "block")) for rows in runs_rows]
    common = set.intersection(*map(set, stacks)) if stacks else set()
    out = []
    for names in stacks:
        rest = [s for s in names if s not in common]
        out.append({s: s if s in common else ("#", rest.index(s)) for s in names})
    return out


def align(runs_rows: list[list[dict]]) -> list[list[dict | None]]:
    """runs_rows: each run's rows of one step, in layer order. Returns the merged rows, each a list
    with one row (or None) per run."""
    ids = stack_ids(runs_rows)
    keyed = []
    for rows, sid in zip(runs_rows, ids):
        seen: dict = {}
        keys = [row_key(r, sid, seen) for r in rows]
        # a key twice in one run (several "(other)" rows): the second is (key, 1), and so on
        keys = [k + (keys[:i].count(k),) if k in keys[:i] else k for i, k in enumerate(keys)]
        keyed.append(list(zip(keys, rows)))
    order: list = []  # merged keys
    for rows in keyed:
        at = -1  # the furthest merged position this run's rows so far have reached
        for key, _ in rows:
            if key in order:
                at = max(at, order.index(key))
            else:
                at += 1
                order.insert(at, key)
    by_key = [{key: r for key, r in rows} for rows in keyed]
    return [[rows.get(key) for rows in by_key] for key in order]
