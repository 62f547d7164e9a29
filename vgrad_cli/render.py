"""Console rendering with rich: progress while training, the end-of-run summary.

Respects NO_COLOR (rich does) and non-terminal output: no live progress bar in CI logs, a few
plain progress lines instead.
"""

from __future__ import annotations

import math
import sys

from rich.console import Console
from rich.table import Table

VERDICT_STYLE = {"vanishing": "bold yellow", "exploding": "bold red", "healthy": "bold green"}


def make_console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


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
        self.console.print(
            f"[bold]vgrad run[/] {cfg.run_name()}: {m.kind} depth {m.depth} width {m.width} {m.activation} "
            f"init {m.init} norm {m.norm}{' residual' if m.residual else ''} | task {cfg.task.name} | "
            f"{cfg.train.optimizer} lr {cfg.train.lr:g} | {cfg.train.steps} steps"
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
        ratio = rows[0]["grad_norm"] / rows[-1]["grad_norm"] if rows[-1]["grad_norm"] else math.inf
        info = f"loss {fmt(metrics['loss'])}  grad_norm first/last {fmt(ratio, 2)}"
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
    for col in ("grad_norm", "delta_norm"):
        t.add_column(f"{col}\nstep {fs}", justify="right")
        t.add_column(f"{col}\nstep {ls}", justify="right")
    last_by_layer = {r["layer"]: r for r in last_rows}
    for r in first_rows:
        lr = last_by_layer.get(r["layer"], {})
        t.add_row(str(r["layer"]), r["name"], fmt(r["grad_norm"]), fmt(lr.get("grad_norm")),
                  fmt(r["delta_norm"]), fmt(lr.get("delta_norm")))
    return t


def print_summary(console: Console, run_dir, summary: dict, first_rows, last_rows):
    if first_rows:
        console.print(layer_table(first_rows, last_rows, "per-layer gradient (layer 0 = input side)"))
    v = summary.get("verdict")
    console.print(f"verdict: [{VERDICT_STYLE.get(v, 'bold')}]{v}[/] — {summary.get('verdict_reason')}")
    status = summary.get("status")
    line = f"status: {status}, {summary.get('steps_completed')}/{summary.get('steps_planned')} steps"
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
