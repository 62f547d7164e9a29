"""The pieces of vgrad's HTML (report.html, a notebook's display): styles, tables, inlined figures.

Everything a page needs is inside it — no script, no font, no stylesheet or image from elsewhere —
so a report opens offline, in a mail attachment, years later. Figures are the run's PNGs, reduced
to 256 colours (a third of the bytes; plots are flat colours and lines) and inlined as base64.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from .compare import Block

VERDICT_COLOR = {"exploding": "#c62828", "dying-relu": "#d84315", "vanishing": "#b26a00", "underfitting": "#1565c0",
                 "healthy": "#2e7d32", "unknown": "#616161"}

# A phone (< 600 px) gets the same page in one column: tables scroll sideways inside their box, figures
# shrink to the width. Print: no scroll boxes (every column on paper), no page break inside a figure.
CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #d9dce1; --bg-alt: #f5f6f8; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1180px; padding: 12px 20px 40px; color: var(--fg); background: #fff;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 1.6em; margin: .4em 0 .1em; } h2 { font-size: 1.3em; margin: 1.6em 0 .3em;
  padding-top: .6em; border-top: 2px solid var(--line); } h3 { font-size: 1.05em; margin: 1.2em 0 .3em; }
p, li { overflow-wrap: anywhere; } .muted { color: var(--muted); } .small { font-size: .88em; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .88em; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: var(--bg-alt); padding: 8px 10px; border-radius: 4px; }
.verdict { border-left: 6px solid var(--c); background: var(--bg-alt); padding: 8px 12px; margin: .6em 0;
  border-radius: 0 4px 4px 0; }
.verdict b { color: var(--c); font-size: 1.15em; text-transform: uppercase; letter-spacing: .02em; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; max-width: 100%; margin: .3em 0 .8em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: .9em; }
th, td { padding: 3px 9px; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; }
th { background: var(--bg-alt); font-weight: 600; white-space: pre-line; }
td { white-space: nowrap; } td.t, th.t { text-align: left; } td.t { white-space: normal; }
td.w { min-width: 12em; }  /* numbers stay on one line; text wraps between words (a layer's name has none) */
tr:nth-child(even) td { background: #fafbfc; }
.bar { display: inline-block; height: .7em; background: #4a78b5; border-radius: 2px; vertical-align: middle; }
.present { color: #c62828; font-weight: 600; } .absent { color: #2e7d32; } .not-measurable { color: var(--muted); }
figure { margin: .8em 0; } figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { font-size: .85em; color: var(--muted); }
nav ul { padding-left: 1.2em; } .caption { font-size: .85em; color: var(--muted); margin-top: -.4em; }
@media (max-width: 600px) {
  body { padding: 8px 10px 30px; font-size: 14px; } h1 { font-size: 1.3em; } th, td { padding: 2px 6px; }
  /* a table of prose (the indicators) becomes one card per row: nothing to scroll sideways */
  table.stack, table.stack tbody, table.stack tr, table.stack td { display: block; width: 100%; }
  table.stack thead { display: none; } table.stack tr { border-bottom: 1px solid var(--line); padding: 4px 0; }
  table.stack td { border: none; text-align: left; white-space: normal; min-width: 0; padding: 1px 4px; }
  table.stack td:not(:last-child) { display: inline; width: auto; }  /* the short cells on one line, the prose below */
  table.stack tr:nth-child(even) td { background: none; }
}
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; } .scroll { overflow: visible; }
  table { font-size: 8pt; } h2 { break-before: auto; break-after: avoid; } figure, tr, .verdict { break-inside: avoid; }
  .verdict, .bar, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


# A notebook cell: the page's look for the verdict box and the table, scoped to vgrad's own <div>.
NOTEBOOK_CSS = (".vgrad .scroll{overflow-x:auto;max-width:100%} .vgrad table{border-collapse:collapse}"
                " .vgrad th,.vgrad td{padding:2px 8px;text-align:right;white-space:pre-line;border-bottom:1px solid #ddd}"
                " .vgrad td.t,.vgrad th.t{text-align:left} .vgrad .bar{display:inline-block;height:.7em;background:#4a78b5}"
                " .vgrad .verdict{border-left:6px solid var(--c);padding:4px 10px;margin:4px 0}"
                " .vgrad .verdict b{color:var(--c)}")


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def table(headers: list[str], rows: list[list[str]], text_columns=(), wrap_columns=(), raw: bool = False,
          stack: bool = False) -> str:
    """A table in a sideways-scrolling box. Cells are escaped unless raw (the caller built HTML).
    stack: on a phone, one card per row instead (a table of prose)."""
    def cls(i: int) -> str:
        names = (["t"] if i in text_columns else []) + (["w"] if i in wrap_columns else [])
        return f' class="{" ".join(names)}"' if names else ""

    head = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c if raw else esc(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    kind = ' class="stack"' if stack else ""
    return f'<div class="scroll"><table{kind}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def block(b: Block) -> str:
    """A compare.py Block (the console's and markdown's tables) as HTML."""
    caption = f'<p class="caption">{esc(b.caption)}</p>' if b.caption else ""
    return f"<h3>{esc(b.title)}</h3>" + table(b.headers, b.rows, text_columns=b.left) + caption


def bar(value, lo: float, hi: float) -> str:
    """A bar as long as log10(value) is far up the shared range [lo, hi]: decades at a glance."""
    if not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        return ""
    x = (math.log10(value) - lo) / (hi - lo) if hi > lo else 1.0
    return f'<span class="bar" style="width:{max(2, round(60 * x))}px"></span>'


def log_range(values) -> tuple[float, float]:
    logs = [math.log10(v) for v in values if isinstance(v, (int, float)) and v > 0 and math.isfinite(v)]
    return (min(logs), max(logs)) if logs else (0.0, 0.0)


def png(path: Path, alt: str) -> str:
    """A PNG as an <img> with its bytes inside: reduced to 256 colours, base64."""
    from PIL import Image

    with Image.open(path) as im:
        buf = io.BytesIO()
        im.convert("RGB").quantize(colors=256).save(buf, "PNG", optimize=True)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}" loading="eager">'


def figure(path: Path, caption: str) -> str:
    return f"<figure>{png(path, caption)}<figcaption>{esc(caption)}</figcaption></figure>"


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n")
