"""`vgrad compare`'s output formats: the console tables (rich, at the console's width), markdown,
json and csv, all from compare.build()'s data (compare.py decides what the tables hold)."""

from __future__ import annotations

import csv
import io
import json
import math

from ..vocab import BELOW_KEY
from .compare import Block, blocks, compact_blocks


def _table(b: Block):
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(b.title), title_justify="left", show_edge=False, pad_edge=False, min_width=len(b.title))
    for i, (h, word) in enumerate(zip(b.headers, _longest_words(b))):
        # fold, never an ellipsis: a cut number is a wrong number. On a narrow console rich would
        # squeeze every column alike, folding "completed" and numbers; only long names may fold.
        t.add_column(escape(h), justify="left" if i in b.left else "right", overflow="fold",
                     min_width=word if word <= 20 else None)
    for row in b.rows:
        t.add_row(*map(escape, row))
    return t


def print_blocks(blocks_: list[Block], console) -> None:
    from rich.markup import escape

    for b in blocks_:
        console.print(_table(b))
        if b.caption:  # below the table at the console's width: a table caption wraps to the table's
            console.print(escape(b.caption), style="dim")
        console.print()


def _fits(b: Block, console) -> bool:
    """Whether the table fits the console without breaking a word (a number) of any cell: its
    columns at their longest word, plus 3 characters between columns (padding and rule)."""
    widths = _longest_words(b)
    return sum(widths) + 3 * (len(widths) - 1) <= console.width


def _longest_words(b: Block) -> list[int]:
    return [max((len(w) for cell in col for w in cell.split()), default=0) for col in zip(b.headers, *b.rows)]


def render_table(data: dict, console) -> None:
    """Runs side by side when their tables fit the console. Otherwise (a sweep's many runs) a
    narrower view that says so: delta_norm per layer, one column per run, and one row per run;
    a table that still does not fit is left out rather than squeezed into columns of a few
    characters. Every number is always in --format markdown, csv and json."""
    for short in (False, True):  # long block names (peft's base_model.model....): by their stack's last part
        full = blocks(data, short=short)
        if all(_fits(b, console) for b in full[:-1]):  # the layer tables; the runs table wraps its text
            print_blocks(full, console)
            return
    compact = compact_blocks(data)
    shown = [b for b in compact[:-1] if _fits(b, console)] + compact[-1:]
    left_out = len(compact) - len(shown)
    from .console import print_phrases

    why = ["one row per run" + ("" if left_out else ", delta_norm per layer in one column each")]
    if left_out:
        why.append(f"{left_out} per-layer table{'s are' if left_out > 1 else ' is'} too wide even as delta_norm only")
    print_phrases(console, why + ["every number: --format markdown, csv or json"],
                  head=f"{len(data['runs'])} runs do not fit side by side in {console.width} columns:")
    print_blocks(shown, console)


def render_markdown(data: dict) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    parts = []
    for b in blocks(data):
        parts.append(f"**{cell(b.title)}**\n")
        parts.append("| " + " | ".join(cell(h) for h in b.headers) + " |")
        parts.append("|" + "|".join(":---" if i in b.left else "---:" for i in range(len(b.headers))) + "|")
        parts += ["| " + " | ".join(cell(c) for c in row) + " |" for row in b.rows]
        parts += [f"\n_{cell(b.caption)}_" if b.caption else "", ""]
    return "\n".join(parts)


def _json_safe(v):
    """Strict JSON: NaN and infinities become the strings "nan", "inf", "-inf"."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def render_json(data: dict) -> str:
    return json.dumps(_json_safe(data), indent=2, allow_nan=False)


CSV_COLUMNS = ["kind", "which", "step", "run", "run_name", "layer", "name", "t", "grad_norm", "delta_norm",
               "log10_grad_norm_vs_ref", "log10_delta_norm_vs_ref"]


def render_csv(data: dict) -> str:
    """Long format, one row per (step choice, run, layer) and per through-time point (kind "time");
    the per-run summary lives in the json format."""
    names = {r["label"]: r["name"] for r in data["runs"]}
    ref = data["reference"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for sec in data["sections"]:
        for entry in sec["layers"]:
            for lab, c in entry["runs"].items():
                if c is None:
                    continue
                w.writerow({"kind": "layer", "which": sec["which"], "step": sec["steps"][lab], "run": lab,
                            "run_name": names[lab], "layer": c["layer"], "name": c.get("name"),
                            # below float32 range: an empty cell, not the 0 (or subnormal) float32 kept
                            **{k: None if k in c[BELOW_KEY] else c.get(k) for k in ("grad_norm", "delta_norm")},
                            "log10_grad_norm_vs_ref": c.get(f"log10_grad_norm_vs_{ref}"),
                            "log10_delta_norm_vs_ref": c.get(f"log10_delta_norm_vs_{ref}")})
        for lab, rows in (sec["time"] or {}).items():
            for r in rows:
                w.writerow({"kind": "time", "which": sec["which"], "step": sec["steps"][lab], "run": lab,
                            "run_name": names[lab], "layer": r["layer"], "t": r["t"], "delta_norm": r["delta_norm"]})
    return buf.getvalue()
