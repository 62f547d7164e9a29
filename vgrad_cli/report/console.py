"""Console rendering with rich: progress while training, the end-of-run summary.

Respects NO_COLOR (rich does) and non-terminal output: no live progress bar in CI logs, a few
plain progress lines instead.
"""

from __future__ import annotations

import math
import os
import sys

from rich.console import Console
from rich.table import Table

VERDICT_STYLE = {"vanishing": "bold yellow", "exploding": "bold red", "healthy": "bold green"}


def make_console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Logs and pipes: rich would wrap at 80 columns; tables read better a little wider.
        console = Console(stderr=stderr, highlight=False, soft_wrap=False, width=110)
    return console


def print_table(console: Console, table: Table):
    """A table as wide as it needs to be: on a terminal rich fits it to the window (cells wrap at
    their spaces); in a log or a file (80 columns by default) wide lines beat cells cut in the middle."""
    if console.is_terminal:
        console.print(table)
        return
    width = console.width
    console.width = max(width, console.measure(table, options=console.options.update(width=400)).maximum)
    console.print(table)
    console.width = width


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}" if v == 0 or 1e-3 <= abs(v) < 1e4 else f"{v:.{digits - 1}e}"
    return str(v)


class RunProgress:
    """Progress for one training run: a rich bar on a terminal, sparse plain lines otherwise."""

    def __init__(self, console: Console, quiet: bool):
        self.console, self.quiet = console, quiet
        self.progress = None
        self.task = None
        self.total = 0
        self.next_line_at = 0

    def start(self, run_dir, cfg):
        self.total = cfg.train.steps
        if self.quiet:
            return
        m = cfg.model
        recurrent = f" recurrent_init {m.recurrent_init}" if m.kind != "mlp" else ""
        self.console.print(
            f"[bold]vgrad run[/] {cfg.run_name()}: {m.kind} depth {m.depth} width {m.width} {m.activation or ''} "
            f"init {m.init}{recurrent} norm {m.norm}{' residual' if m.residual else ''}\n"
            f"  task {cfg.task.name} | {cfg.train.optimizer} lr {cfg.train.lr:g} | {cfg.train.steps} steps"
        )
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
        ratio = rows[0]["delta_norm"] / rows[-1]["delta_norm"] if rows[-1]["delta_norm"] else math.inf
        info = f"loss {fmt(metrics['loss'])}  delta_norm layer 0/output {fmt(ratio, 2)}"
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=info)
        elif step >= self.next_line_at or step == self.total:
            self.console.print(f"  step {step}/{self.total}  {info}")
            self.next_line_at = step + max(1, self.total // 5)

    def stop(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def layer_table(first_rows: list[dict], last_rows: list[dict], title: str) -> Table:
    fs, ls = first_rows[0]["step"], last_rows[0]["step"]
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("layer", justify="right")
    t.add_column("name")
    steps = [fs] if fs == ls else [fs, ls]  # a run that diverged at step 1 logged only step 0
    for col in ("grad_norm", "delta_norm"):
        for s in steps:
            t.add_column(f"{col}\nstep {s}", justify="right")
    last_by_layer = {r["layer"]: r for r in last_rows}
    for r in first_rows:
        lr = last_by_layer.get(r["layer"], {})
        cells = [fmt(r[col]) if s == fs else fmt(lr.get(col)) for col in ("grad_norm", "delta_norm") for s in steps]
        t.add_row(str(r["layer"]), r["name"], *cells)
    return t


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
    series = [(first_step, profile["first_step"])]
    if profile.get("last_step") is not None and last_step != first_step:
        series.append((last_step, profile["last_step"]))
    logs = [math.log10(v) for _, vals in series for v in vals if v and v > 0 and math.isfinite(v)]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 0.0)
    t = Table(title=f"gradient through time, ||dL/dh_t|| of layer {profile['layer']} (t = 0 is the first input)",
              title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("step", justify="right")
    for tt in pick:
        t.add_column(f"t={tt}", justify="right")
    t.add_column(f"log10 over t, {lo:.0f} .. {hi:.0f}")
    for step, vals in series:
        by_t = dict(zip(ts, vals))
        every = max(1, math.ceil(len(vals) / 24))  # at most 24 characters
        t.add_row(str(step), *[fmt(by_t[tt], 2) for tt in pick], sparkline(vals[::every], lo, hi))
    return t


def print_summary(console: Console, run_dir, summary: dict, first_rows, last_rows):
    if first_rows:
        console.print(layer_table(first_rows, last_rows, "per-layer gradient (layer 0 = input side)"))
    if summary.get("time_profile"):
        console.print(time_table(summary["time_profile"], summary.get("first_logged_step"),
                                 summary.get("last_logged_step")))
    v = summary.get("verdict")
    console.print(f"verdict: [{VERDICT_STYLE.get(v, 'bold')}]{v}[/] — {summary.get('verdict_reason')}")
    status = summary.get("status")
    done, planned = summary.get("steps_completed"), summary.get("steps_planned")
    line = f"status: {status}, {'?' if done is None else done}/{planned} steps"
    if status == "diverged":
        line += f" (non-finite loss at step {summary.get('diverged_step')})"
    if summary.get("final_loss") is not None:
        line += f"; final loss {fmt(summary['final_loss'])} (baseline {fmt(summary.get('baseline_loss'))})"
    if summary.get("final_eval_accuracy") is not None:
        line += f", eval accuracy {fmt(summary['final_eval_accuracy'])} (chance {fmt(summary.get('chance_accuracy'))})"
    line += f"; {fmt(summary.get('wall_time_s'))} s"
    console.print(line)
    console.print(f"run directory: {run_dir}", soft_wrap=True)


def error(message: str) -> None:
    """One line on stderr, no traceback."""
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.stderr.flush()
