"""Console rendering with rich: progress while training, the end-of-run summary.

Respects NO_COLOR (rich does) and non-terminal output: no live progress bar in CI logs, a few
plain progress lines instead.
"""

from __future__ import annotations

import math
import os
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..analysis.verdict import BELOW_SHORT, ends, ends_label, underflowed
from .. import vocab as V

VERDICT_STYLE = {"vanishing": "bold yellow", "exploding": "bold red", "healthy": "bold green"}


def make_console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Logs and pipes: rich would wrap at 80 columns; tables read better a little wider.
        console = Console(stderr=stderr, highlight=False, soft_wrap=False, width=110)
    return console


def width_chosen(console: Console) -> bool:
    """A terminal's window, or COLUMNS set by the user: a width to keep to. Otherwise (a log, a pipe)
    rich's 80 columns are only a guess."""
    return console.is_terminal or "COLUMNS" in os.environ


def print_table(console: Console, table: Table):
    """A table as wide as it needs to be: where the width was chosen (a terminal, COLUMNS) rich fits
    it to that width (cells wrap at their spaces); in a log or a file (80 columns by default) wide
    lines beat cells cut in the middle."""
    if width_chosen(console):
        console.print(table)
        return
    width = console.width
    console.width = max(width, console.measure(table, options=console.options.update(width=400)).maximum)
    console.print(table)
    console.width = width


def fmt(v, digits: int = 3) -> str:
    """A number for people: `digits` significant digits, plainly between 1e-3 and 1e3 (0.0123, 151),
    otherwise in e-notation with the same digits (1.51e+05, 4.20e-13): one format per magnitude,
    whatever prints it."""
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}" if v == 0 or 1e-3 <= abs(v) < 1e3 else f"{v:.{digits - 1}e}"
    return str(v)


def print_phrases(console: Console, parts: list[str], sep: str = "; ", head: str = "", indent: str = "  "):
    """Print `head` and `parts` joined by `sep` (rich markup allowed), breaking lines only between
    parts, continuation lines indented: a number never loses its unit ("2.86 s") and a reason never
    breaks mid-phrase. A part too wide for a line of its own breaks before its parentheses
    ("... [0.01, 100]" / "(lowest: ...)"), then between list items ("with: a, b, c"), and only as a
    last resort between words: no line is wider than the console (a single word may be)."""
    from rich.text import Text

    def width(markup: str) -> int:
        return Text.from_markup(markup).cell_len

    def pieces(before: str, part: str, splits=(" (", ", ", " ")) -> list[tuple[str, str]]:
        if width(indent + part) <= console.width or not splits:
            return [(before, part)]
        at, rest = splits[0], splits[1:]
        if at not in part:
            return pieces(before, part, rest)
        subs = part.split(at)
        if at == " (":
            subs = [subs[0]] + ["(" + p for p in subs[1:]]
            at = " "
        return [t for j, p in enumerate(subs) for t in pieces(before if j == 0 else at, p, rest)]

    tokens = [("", head)] if head else []  # (separator before it, text)
    for i, part in enumerate(parts):
        tokens += pieces((" " if i == 0 else sep) if tokens else "", part)
    lines: list[str] = []
    for i, (before, text) in enumerate(tokens):
        tail = tokens[i + 1][0].rstrip() if i + 1 < len(tokens) else ""  # stays at the end of a broken line
        if lines and width(lines[-1] + before + text + tail) <= console.width:
            lines[-1] += before + text
        elif lines:
            lines[-1] += before.rstrip()
            lines.append(indent + text)
        else:
            lines.append(text)
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)


class RunProgress:
    """Progress for one training run: a rich bar on a terminal, sparse plain lines otherwise."""

    def __init__(self, console: Console, quiet: bool):
        self.console, self.quiet = console, quiet
        self.progress = None
        self.task = None
        self.total = 0
        self.next_line_at = 0

    def start(self, run_dir, cfg):
        self.total, self.kind = cfg.train.steps, cfg.model.kind
        if self.quiet:
            return
        from ..rundir.store import model_phrases, train_phrases

        # The same phrases as compare's "model" and "training" rows, wrapped between phrases.
        model = [escape(p) for p in model_phrases(cfg.model.model_dump(mode="json"))]
        print_phrases(self.console, model, sep=" ", head=f"[bold]vgrad run[/] {escape(cfg.run_name())}:")
        train = [escape(" ".join(train_phrases(cfg.train.model_dump(mode="json")))), f"{cfg.train.steps} steps"]
        print_phrases(self.console, train, sep=" | ", head=f"  task {escape(cfg.task.name)} |")
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("step"), MofNCompleteColumn(), BarColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"), console=self.console, transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.total, info="")

    def log(self, step, metrics, rows):
        if self.quiet:
            return
        first, last = ends(rows, self.kind)
        ratio = first["delta_norm"] / last["delta_norm"] if last["delta_norm"] else math.inf
        shown = f"{BELOW_SHORT} (float32 underflow)" if underflowed(rows, 0) else fmt(ratio, 2)
        info = f"loss {fmt(metrics['loss'])}  delta_norm {ends_label(rows, self.kind)} {shown}"
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=info)
        elif step >= self.next_line_at or step == self.total:
            self.console.print(f"  step {step}/{self.total}  {info}")
            self.next_line_at = step + max(1, self.total // 5)

    def stop(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def layer_table(first_rows: list[dict], last_rows: list[dict], title: str,
                room: int | None = None) -> tuple[Table, list[str]]:
    """grad_norm and delta_norm per row at the first and last logged step, and the lines that go
    under it (what a tied row's weight is). A frozen row's cells say `frozen`; a tied one's name says
    `(tied)`. room: the width the names have on a narrow console: they are shortened (short_names,
    the title says how to read them) and broken after a dot or a space, never inside a word."""
    fs, ls = first_rows[0]["step"], last_rows[0]["step"]
    names, legend = short_names(first_rows) if room else ([str(r["name"]) for r in first_rows], "")
    t = Table(title=title + (f"\n{legend}" if legend else ""), title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("layer", justify="right")
    t.add_column("name", overflow="fold")  # never an ellipsis: it would cut a block's index
    steps = [fs] if fs == ls else [fs, ls]  # a run that diverged at step 1 logged only step 0
    for col in ("grad_norm", "delta_norm"):
        for s in steps:
            t.add_column(f"{col}\nstep {s}", justify="right")
    def cell(rows, col, i):  # a value under float32's range is no 0 (a dead layer's exact 0 still is)
        return BELOW_SHORT if underflowed(rows, i, col) else fmt(rows[i].get(col))

    last_index = {r["layer"]: i for i, r in enumerate(last_rows)}
    # the path part short_names dropped from module rows (peft's base_model.model.): from the notes too
    cut = next((str(r["name"])[:-len(n)] for r, n in zip(first_rows, names) if not r.get("role") and n != r["name"]), "")
    under = []
    for i, r in enumerate(first_rows):
        j = last_index.get(r["layer"])
        cells = [cell(first_rows, col, i) if s == fs else (cell(last_rows, col, j) if j is not None else fmt(None))
                 for col in ("grad_norm", "delta_norm") for s in steps]
        note, name = r.get("note") or "", names[i]
        if note == FROZEN_NOTE and not any(cells):
            cells[0] = "frozen"  # measured nothing: its parameters do not train
        elif note.startswith("tied to "):
            shares = note[len("tied to "):].replace(cut, "") if cut else note[len("tied to "):]
            under.append(f"{name} is tied: its weight is {shares}, measured in that row")
            name += " (tied)"
        elif note:
            name += f" ({note})"
        t.add_row(str(r["layer"]), escape(wrap_path(name, room) if room else name), *cells)
    return t, under


FROZEN_NOTE = "frozen"  # measure/layers.py's FROZEN (this module does not import the measuring side)


def short_names(rows: list[dict]) -> tuple[list[str], str]:
    """Row names for a narrow console, and the legend that reads them. A block view names each block
    by its stack's last part and its path below the stack (`h.11` for transformer.h.11, `h.0` for
    peft's base_model.model.transformer.h.0, `stages.1.layers.0` for a ResNet's block): the legend
    says which stack `h` is. Module rows drop the part of the path every row shares (peft's
    `base_model.model.`), said in the legend too."""
    names = [str(r["name"]) for r in rows]
    if any(r.get("role") for r in rows):
        stacks = list(dict.fromkeys(r["stack"] for r in rows if r.get("role") == "block" and r.get("stack")))
        tails = {st: st.rsplit(".", 1)[-1] for st in stacks}
        names = [tails[r["stack"]] + n[len(r["stack"]):] if r.get("role") == "block" and r.get("stack") in tails
                 and n.startswith(r["stack"]) else n for r, n in zip(rows, names)]
        return names, ", ".join(f"{tails[st]} = {st}" for st in stacks if tails[st] != st)
    paths = [n for n in names if not n.startswith("(")]
    prefix = ""
    if paths and all("." in p for p in paths):
        for part in paths[0].split(".")[:-1]:
            if not all(p.startswith(prefix + part + ".") for p in paths):
                break
            prefix += part + "."
    return [n[len(prefix):] if prefix and n.startswith(prefix) else n for n in names], (
        f"names under {prefix}" if prefix else "")


def wrap_path(text: str, width: int) -> str:
    """A module path broken into lines of at most `width` after its dots and spaces
    (transformer.h.11.attn. / c_attn); a part longer than a line stays whole."""
    import re

    lines = [""]
    for part in re.findall(r"[^. ]+[. ]?|[. ]", text):
        if lines[-1] and len(lines[-1]) + len(part.rstrip()) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(line.rstrip() for line in lines)


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list, lo: float, hi: float) -> str:
    """log10 values on a shared scale [lo, hi] as block characters; blanks for non-positive values."""
    out = []
    for v in values:
        if v is None or not v > 0 or not math.isfinite(v):
            out.append(" ")
            continue
        x = (math.log10(v) - lo) / (hi - lo) if hi > lo else 1.0
        out.append(SPARK[min(len(SPARK) - 1, max(0, round(x * (len(SPARK) - 1))))])
    return "".join(out)


def time_table(profile: dict, first_step, last_step) -> Table:
    """The gradient-through-time profile: a few t values and a sparkline per logged step."""
    ts = profile["t"]
    pick = sorted({ts[round(i * (len(ts) - 1) / 5)] for i in range(6)}) if len(ts) > 6 else ts
    cell = profile.get("cell_first_step") is not None  # an LSTM: rows "<step> c" for ||dL/dc_t||
    series = []
    for suffix, key in (("", ""), (" c", "cell_"),) if cell else (("", ""),):
        series.append((f"{first_step}{suffix}", profile[f"{key}first_step"]))
        if profile.get(f"{key}last_step") is not None and last_step != first_step:
            series.append((f"{last_step}{suffix}", profile[f"{key}last_step"]))
    logs = [math.log10(v) for _, vals in series for v in vals if v and v > 0 and math.isfinite(v)]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 0.0)
    what = "||dL/dh_t|| (rows c: the cell state's ||dL/dc_t||)" if cell else "||dL/dh_t||"
    t = Table(title=f"gradient through time, {what} of layer {profile['layer']} (t = 0 is the first input)",
              title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("step", justify="right")
    for tt in pick:
        t.add_column(f"t={tt}", justify="right")
    t.add_column(f"log10 over t, {lo:.0f} .. {hi:.0f}")
    for step, vals in series:
        by_t = dict(zip(ts, vals))
        every = max(1, math.ceil(len(vals) / 24))  # at most 24 characters
        t.add_row(step, *[fmt(by_t[tt], 2) for tt in pick], sparkline(vals[::every], lo, hi))
    return t


def print_summary(console: Console, run_dir, summary: dict, first_rows, last_rows):
    if first_rows:
        blocks = any(r.get("role") for r in first_rows)
        title = "per-block gradient (show --modules: per module)" if blocks else "per-layer gradient (layer 0 = input side)"
        table, under = layer_table(first_rows, last_rows, title)
        wide = console.measure(table, options=console.options.update(width=400)).maximum
        if width_chosen(console) and wide > console.width:  # long names, narrow console
            names = max(len(c) for c in table.columns[1].cells)
            table, under = layer_table(first_rows, last_rows, title, room=max(12, console.width - (wide - names)))
        print_table(console, table)
        for line in under:
            print_phrases(console, [escape(line)])
    if summary.get("time_profile"):
        console.print(time_table(summary["time_profile"], summary.get("first_logged_step"),
                                 summary.get("last_logged_step")))
    f64 = summary.get("float64_init")
    if f64:
        print_phrases(console, [f"delta_norm layer 0/output {fmt(f64.get('delta_norm_ratio'), 2)}",
                                f"grad_norm {fmt(f64.get('grad_norm_ratio'), 2)} (layers_float64.csv)"],
                      head="step 0 measured again in float64:")
    v = summary.get("verdict")
    reason = str(summary.get("verdict_reason") or "")
    print_phrases(console, reason.split("; "), head=f"verdict: [{VERDICT_STYLE.get(v, 'bold')}]{v}[/] —")
    print_phrases(console, status_phrases(summary), head="status:")
    print_phrases(console, [escape(str(run_dir))], head="run directory:")


def status_phrases(summary: dict) -> list[str]:
    """How far the run got and how well it did. A diverged run's losses stop before its end, and its
    last eval (if any) came from an earlier step: its accuracy is no result of the run, so none is shown."""
    status = summary.get("status")
    done, planned = summary.get("steps_completed"), summary.get("steps_planned")
    diverged = status == V.DIVERGED
    steps = f"{'?' if done is None else done}" + (f"/{planned}" if planned is not None else "")  # Monitor: no plan
    parts = [f"{status}, {steps} steps" + (f" (non-finite loss at step {summary.get('diverged_step')})" if diverged else "")]
    if isinstance(summary.get("first_nonfinite"), dict):  # where the first NaN or infinity appeared
        parts.append(summary["first_nonfinite"].get("message", ""))
    if summary.get("steps_skipped"):
        parts.append(f"{summary['steps_skipped']} step(s) skipped by the loss scaler")
    if summary.get("final_loss") is not None:
        what = "last finite loss" if diverged else "final loss"
        base = summary.get("baseline_loss")
        parts.append(f"{what} {fmt(summary['final_loss'])}" + (f" (baseline {fmt(base)})" if base is not None else ""))
    acc, ev = summary.get("final_eval_accuracy"), summary.get("final_eval_loss")
    if acc is not None and not diverged:
        chance = summary.get("chance_accuracy")
        parts.append(f"eval accuracy {fmt(acc)}" + (f" (chance {fmt(chance)})" if chance is not None else ""))
    elif ev is not None and not diverged:  # regression, or a Monitor run that logged only its eval loss
        parts.append(f"eval loss {fmt(ev)}")
    parts.append(f"{fmt(summary.get('wall_time_s'))} s")
    return parts


def error(message: str) -> None:
    """One line on stderr, no traceback."""
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.stderr.flush()


def print_lines(console: Console, lines: list[str], style: str | None = None):
    """Plain-text lines (no markup), broken between their "; "-separated phrases; a phrase longer
    than a line of its own breaks between words."""
    import re
    import textwrap

    width = max(40, console.width)
    for line in lines:
        lead = line[:len(line) - len(line.lstrip())]
        more = lead + "    "
        out: list[str] = []
        for i, phrase in enumerate(line.strip().split("; ")):
            piece = phrase if i == 0 else "; " + phrase
            if out and len(out[-1]) + len(piece) <= width:
                out[-1] += piece
                continue
            if out:
                out[-1] += ";"
            first = (lead if not out else more)
            # "--set KEY=VALUE" and a `quoted command` are one word to the wrapper (no-break spaces):
            # an option keeps its value, a command stays whole to be copied
            joined = re.sub(r"`[^`]*`", lambda m, room=width - len(more): m.group(0).replace(" ", "\xa0")
                            if len(m.group(0)) < room else m.group(0),  # unless wider than a line
                            phrase.replace("--set ", "--set\xa0"))
            out += [w.replace("\xa0", " ") for w in textwrap.wrap(
                joined, width, initial_indent=first, subsequent_indent=more,
                break_long_words=False, break_on_hyphens=False)] or [first]
        for text in out:
            console.print(text, soft_wrap=True, markup=False, highlight=False, style=style)


def print_command(console: Console, words: list[str], indent: str = ""):
    """A shell command that can be pasted as printed: too wide for the console, it continues on the
    next line after a backslash, breaking only between `words` (an option stays with its value)."""
    lines = [indent + words[0]]
    for w in words[1:]:
        if len(lines[-1]) + 1 + len(w) + 2 <= console.width:
            lines[-1] += " " + w
        else:
            lines[-1] += " \\"
            lines.append(indent + "    " + w)
    for text in lines:
        console.print(text, soft_wrap=True, markup=False, highlight=False)
