"""What a story shows: per chapter, its headline figures over the seeds as median, min and max.

story.csv has every figure for every chapter (exact numbers, empty where a figure does not apply or
no run gave it); story.md (markdown.py) and the console show the headline ones as `median [min–max]`.
A figure is taken only from the runs where it means something: end-of-run figures from completed
runs (a diverged run's "last" values are from just before it blew up), step-0 figures from every run
that finished (completed or diverged), the divergence step from diverged runs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..report.console import VERDICT_STYLE, fmt, print_table
from ..rundir.files import read_summary
from .chapters import Chapter
from .. import vocab as V

COMPLETED = (V.COMPLETED,)
FIGURES = {  # summary.json key -> the statuses of the runs it is taken from
    "delta_norm_ratio_first_step": V.FINAL,   # layer 0 / output layer delta_norm
    "delta_norm_ratio_last_step": COMPLETED,
    "time_ratio_first_step": V.FINAL,         # ||dL/dh_0|| / ||dL/dh_T-1||, recurrent only
    "time_ratio_last_step": COMPLETED,
    "final_eval_accuracy": COMPLETED,                # classification tasks only
    "final_eval_loss": COMPLETED,
    "diverged_step": (V.DIVERGED,),
    "wall_time_s": V.FINAL,
    "chance_accuracy": V.FINAL,               # the eval set's majority class (classification)
    "baseline_loss": V.FINAL,                 # the best input-blind prediction's eval loss
}
STATS = ("median", "min", "max")
COUNTS = (V.COMPLETED, V.DIVERGED, V.FAILED, V.INTERRUPTED)
COLUMNS = (["chapter", "config", "kind", "task_loss", "shows", "seeds", *COUNTS, "verdicts"]
           + [f"{f}_{s}" for f in FIGURES for s in STATS])


# ----------------------------------------------------------------------------- numbers


def median(values: list[float], ratio: bool) -> float:
    """The median; for an even count of ratios the geometric mean of the middle two, since ratios
    are read in decades (1e-13 and 1e-11 have 1e-12 between them, not 5e-12)."""
    xs = sorted(values)
    n = len(xs)
    a, b = xs[(n - 1) // 2], xs[n // 2]
    if a == b:
        return a
    return math.sqrt(a * b) if ratio and a > 0 and b > 0 and math.isfinite(a * b) else (a + b) / 2


def _numbers(values) -> list[float]:
    """Numbers for statistics: None and NaN dropped, inf kept (a ratio over an output delta of 0)."""
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)]


def chapter_stats(chapter: Chapter, seeds: int, runs: list[tuple[dict, dict]]) -> dict:
    """One story.csv row. `runs`: (sweep.csv row, its summary.json or {}) for each run of the chapter."""
    g: dict = {"chapter": chapter.stem, "config": str(chapter.path), "kind": chapter.kind, "shows": chapter.shows,
               "seeds": seeds, "_chapter": chapter}
    g["task_loss"] = next((s.get("task_loss") for _, s in runs if s.get("task_loss")), None)
    for status in COUNTS:
        g[status] = sum(r["status"] == status for r, _ in runs)
    verdicts = [s.get("verdict") for r, s in runs if r["status"] in V.FINAL and s.get("verdict")]
    g["verdicts"] = ", ".join(f"{v} ({verdicts.count(v)}/{seeds})" for v in dict.fromkeys(verdicts)) or None
    for figure, statuses in FIGURES.items():
        values = _numbers(s.get(figure) for r, s in runs if r["status"] in statuses)
        g[f"{figure}_n"] = len(values)  # for "(n=3)" in the tables; not a CSV column
        for stat in STATS:
            g[f"{figure}_{stat}"] = None
        if values:
            g[f"{figure}_median"] = median(values, "_ratio_" in figure)
            g[f"{figure}_min"], g[f"{figure}_max"] = min(values), max(values)
    return g


def story_stats(story_dir: Path, chapters: list[Chapter], seeds: int, rows: list[dict]) -> list[dict]:
    """Per chapter, in story order, from the sweep.csv rows and each run's summary.json."""
    out = []
    for chapter in chapters:
        runs = []
        for r in rows:
            if r["chapter"] == chapter.stem:
                summary = {}
                if r.get("run_dir") and (story_dir / r["run_dir"] / V.SUMMARY_JSON).is_file():
                    summary = read_summary(story_dir / r["run_dir"])
                runs.append((r, summary))
        g = chapter_stats(chapter, seeds, runs)
        g["_versions"] = next((s["versions"] for _, s in runs if s.get("versions")), {})  # torch's, for story.md
        out.append(g)
    return out


# ----------------------------------------------------------------------------- table cells


def num(v: float) -> str:
    """Two significant digits, trailing zeros kept (0.50, 1.0, 690): the precision the seeds support.
    Plain decimals from 1e-3 to 1e4, else 4.2e-13; integers (a step) as they are."""
    if isinstance(v, int):
        return str(v)
    if v == 0 or not math.isfinite(v):
        return fmt(v)
    e = math.floor(math.log10(abs(v)))
    if not -3 <= e < 4:
        return f"{v:.1e}"
    decimals = 1 - e
    return f"{round(v, decimals):.{max(0, decimals)}f}"


def span(g: dict, figure: str) -> str:
    """`median [min–max]`; the median alone when every run gave the same (to the digits shown);
    `(n=3)` when fewer runs than seeds gave it; an em dash when none did."""
    n = g[f"{figure}_n"]
    if not n:
        return "—"
    mid, lo, hi = (num(g[f"{figure}_{s}"]) for s in STATS)
    text = mid if lo == mid == hi else f"{mid} [{lo}–{hi}]"
    return text + (f" (n={n})" if n < g["seeds"] else "")


def runs_cell(g: dict) -> str:
    parts = []
    if g["completed"]:
        parts.append(f"{g['completed']} completed")
    if g["diverged"]:
        # a step is a whole number: the median of an even count (1.5) is shown rounded half up
        mid, lo, hi = (g[f"diverged_step_{s}"] for s in STATS)
        mid = math.floor(mid + 0.5)
        step = f"{mid}" if lo == hi else f"{mid} [{int(lo)}–{int(hi)}]"
        parts.append(f"{g['diverged']} diverged at step {step}")
    parts += [f"{g[s]} {s}" for s in (V.FAILED, V.INTERRUPTED) if g[s]]
    missing = g["seeds"] - sum(g[s] for s in COUNTS)
    if missing:
        parts.append(f"{missing} not run")
    return ", ".join(parts)


def tables(groups: list[dict]) -> list[dict]:
    """The chapters split into tables that share their columns: layered chapters (MLP; CNN and
    Transformer apart, their ratio compares first and last blocks) and recurrent ones (through-time
    ratio), and within each by task (eval accuracy or eval loss).
    Each: title, note, headers, rows of plain-text cells; markdown.py and the console render them."""
    split: dict[tuple, list[dict]] = {}
    for g in groups:
        classify = g["task_loss"] == "cross_entropy" or (g["task_loss"] is None and not g["_chapter"].recurrent)
        blocks = g["_chapter"].kind if g["_chapter"].kind in ("transformer", "cnn") else None  # ratio: first/last block
        split.setdefault((g["_chapter"].recurrent, classify, blocks), []).append(g)
    out = []
    for (recurrent, classify, blocks), members in split.items():
        ratio = "time_ratio" if recurrent else "delta_norm_ratio"
        what = "through-time ratio" if recurrent else "delta ratio"
        end, base = ("final_eval_accuracy", "chance_accuracy") if classify else ("final_eval_loss", "baseline_loss")
        loss = "accuracy" if classify else ("MSE" if members[0]["task_loss"] == "mse" else "loss")
        bases = {span(g, base).split(" (n=")[0] for g in members if g[f"{base}_n"]}
        common = f"{'chance' if classify else 'baseline'} {next(iter(bases))}" if len(bases) == 1 else ""
        rows = []
        for g in members:
            cell = span(g, end)
            if len(bases) > 1 and g[f"{base}_n"]:
                cell += f" ({'chance' if classify else 'baseline'} {span(g, base).split(' (n=')[0]})"
            rows.append([g["chapter"], g["shows"], span(g, f"{ratio}_first_step"), span(g, f"{ratio}_last_step"),
                         g["verdicts"] or "—", cell, runs_cell(g)])
        note = ("through-time ratio = ||dL/dh_0|| / ||dL/dh_T-1|| of the top recurrent layer (time.csv)" if recurrent
                else "delta ratio = layer-0 / output-layer delta_norm, the back-propagated error")
        if blocks == "transformer":
            note = "delta ratio = block0 / last-block delta_norm, the gradient at the residual stream"
        elif blocks == "cnn":
            note = ("delta ratio = conv0 / last-conv-block delta_norm (the head reads the last block's global "
                    "average, which alone puts it at ~1/sqrt(H·W) of the output layer's)")
        note += ("; chance = always predicting the eval set's majority class" if classify
                 else "; baseline = the best input-blind prediction's eval loss")
        title = "Recurrent chapters" if recurrent else {"transformer": "Transformer chapters", "cnn": "CNN chapters",
                                                         None: "Layered chapters (MLP)"}[blocks]
        if classify == recurrent:  # not the usual task of its kind: say which, the other table has the usual
            title += f", eval {loss}"
        out.append({"title": title, "note": note,
                    "headers": ["chapter", "what it shows", f"{what}, step 0", f"{what}, end", "verdict",
                                f"final eval {loss}", "runs"], "common": common, "rows": rows})
    return out


# ----------------------------------------------------------------------------- writing


def print_tables(console, parts: list[dict]):
    """The tables without "what it shows". A terminal too narrow for `median [min–max]` gets the
    medians alone (story.md has the ranges), and so does COLUMNS; a pipe or a log gets whole lines,
    however wide."""
    from rich.markup import escape

    from ..report.console import print_lines, width_chosen

    for part in parts:
        t = _console_table(part, compact=False)
        if width_chosen(console) and _width(console, t) > console.width:
            t = _console_table(part, compact=True)
        print_table(console, t)
        note = part["note"] + (f"; {part['common']} for every chapter here" if part["common"] else "")
        if width_chosen(console):
            print_lines(console, [note])
        else:
            console.print(escape(note), soft_wrap=True)


def _width(console, table) -> int:
    return console.measure(table, options=console.options.update(width=400)).maximum


def _console_table(part: dict, compact: bool):
    from rich.markup import escape
    from rich.table import Table

    headers = part["headers"]
    what = "median [min–max] over the seeds"
    if compact:  # the ratio's name moves into the title: "step 0" and "end" are narrow columns
        what = f"{headers[2].rsplit(', ', 1)[0]}, medians over the seeds (ranges: story.md)"
        headers = [headers[0], headers[1], "step 0", "end", "verdict",
                   headers[5].replace("final eval", "eval").replace("accuracy", "acc"), "runs"]
    t = Table(title=escape(f"{part['title']}: {what}"), title_justify="left", show_edge=False, pad_edge=False)
    for i, h in enumerate(headers):
        if i != 1:  # "what it shows" is for story.md; the console keeps to the numbers
            t.add_column(h, no_wrap=i == 0, justify="left" if i in (0, 4, 6) else "right")
    for row in part["rows"]:
        verdict = row[4]
        style = VERDICT_STYLE.get(verdict.split(" (")[0]) if verdict.count("(") == 1 else None
        cells = [row[0]] + row[2:]
        if compact:  # "vanishing 5/5", "5 ok, 2 diverged": short enough for 80 columns
            cells = [cells[0], *(c.split(" [")[0] for c in cells[1:3]), re.sub(r" \((\d+/\d+)\)", r" \1", cells[3]),
                     cells[4].split(" [")[0], re.sub(r" at step [^,]*", "", cells[5]).replace("completed", "ok")]
        cells = [escape(c) for c in cells]
        if style:
            cells[3] = f"[{style}]{cells[3]}[/]"
        t.add_row(*cells)
    return t
