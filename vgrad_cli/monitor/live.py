"""`vgrad watch RUN`: a run's latest logged step in the terminal while it trains, read from its
directory (the files are appended at every logged step, so any process can follow them).

On a terminal the view is redrawn in place whenever the tables grow: a header (status, step, loss,
the first/last δ ratio), one line per row with its grad_norm and delta_norm as numbers and as bars
(log scale, shared by the rows of the step: a decade is the same length on every line), and the
warnings so far — the same Watch, with the same messages, that Monitor prints during training. A
pipe or a log gets one line per new logged step instead. It ends when summary.json's status is no
longer "running" (a killed run stays "running": Ctrl-C ends the watch).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from .. import vocab as V
from ..analysis.verdict import BELOW_SHORT, ends, ends_label, underflowed
from ..errors import UsageError
from .watch import Watch

EIGHTHS = " ▏▎▍▌▋▊▉█"
BAR = 12  # characters: two bars, two numbers and a name fit in 80 columns
VERDICT_WAIT = 5.0  # seconds a finished run's verdict may take to follow its status


class Follower:
    """A run directory read again whenever it changed, and the warnings of each step read once."""

    def __init__(self, path: Path):
        self.path = path
        self.run = None
        self.stamp = None
        self.watch = Watch(None)
        self.warnings: list[str] = []
        self.seen_step = -1
        self.ended_at: float | None = None  # when the status was first seen final

    def poll(self) -> bool:
        """Read the run again if any of its files changed; True when it did."""
        from ..rundir.store import load_run

        stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None
                      for f in (self.path / V.SUMMARY_JSON, self.path / V.LAYERS_CSV, self.path / V.METRICS_CSV))
        if stamp == self.stamp:
            return False
        try:
            run = load_run(self.path)
        except UsageError:
            if self.run is None:
                raise
            return False  # caught between two writes (summary.json is replaced atomically, tables appended)
        self.stamp, self.run = stamp, run
        self.watch.kind = (run.config.get("model") or {}).get("kind")  # the ratios the verdict compares
        metrics = {m["step"]: m for m in run.metrics}
        for step in run.steps:
            if step > self.seen_step:
                units = run.module_layer_rows(step) if run.modules is not None else None  # dead units: the modules'
                self.warnings += [m for _, m in self.watch.new(step, run.layer_rows(step), metrics.get(step, {}), None, None,
                                                               units)]
                self.seen_step = step
        if run.status == V.DIVERGED and run.summary.get("diverged_step") is not None:
            self.warnings += [m for _, m in self.watch.new(run.summary["diverged_step"], [], {}, run.summary["diverged_step"], None)]
        return True

    @property
    def ended(self) -> bool:
        """The status is final and the verdict is in (summary.json is written twice at the end: the
        figures, then the verdict read back from the tables), or has not come for VERDICT_WAIT s."""
        if self.run is None or self.run.status == V.RUNNING:
            return False
        self.ended_at = self.ended_at or time.monotonic()
        return self.run.summary.get("verdict") is not None or time.monotonic() - self.ended_at > VERDICT_WAIT

    @property
    def step(self) -> int | None:
        return self.run.steps[-1] if self.run is not None and self.run.steps else None


def _bar(value, lo: float, hi: float) -> str:
    if not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        return ""
    x = (math.log10(value) - lo) / (hi - lo) if hi > lo else 1.0
    eighths = max(1, round(x * BAR * 8))
    return "█" * (eighths // 8) + (EIGHTHS[eighths % 8] if eighths % 8 else "")


def headline(f: Follower, step: int | None = None) -> str:
    """One line: a logged step (default the latest), its loss and the first/last delta ratio (the
    non-TTY output, and the view's top)."""
    from ..report.console import fmt

    run, step = f.run, f.step if step is None else step
    planned = run.summary.get("steps_planned")
    if step is None:
        return "no logged step yet"
    rows = run.layer_rows(step)
    m = next((m for m in reversed(run.metrics) if m["step"] == step), {})
    kind = (run.config.get("model") or {}).get("kind")
    first, last = ends(rows, kind)
    ratio = (BELOW_SHORT if underflowed(rows, rows.index(first)) else
             fmt(first["delta_norm"] / last["delta_norm"], 2) if first.get("delta_norm") is not None and last.get("delta_norm") else "")
    parts = [f"step {step}" + (f"/{planned}" if planned else ""), f"loss {fmt(m.get('loss'))}"]
    if ratio:
        parts.append(f"delta_norm {ends_label(rows, kind)} {ratio}")
    if m.get("grad_norm_total") is not None:
        parts.append(f"grad_norm_total {fmt(m['grad_norm_total'])}")
    return "  ".join(parts)


def _short(name: str, width: int) -> str:
    """A module path cut from the left: its end tells the rows apart (…h.3.attn.c_proj)."""
    return name if len(name) <= width else "…" + name[len(name) - width + 1:]


def view(f: Follower, height: int | None = None, width: int = 80):
    """The rich renderable of the latest logged step: headline, rows with bars, warnings."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from ..report.console import VERDICT_STYLE, fmt
    from ..report.html_parts import log_range

    run, step = f.run, f.step
    parts = [Text.from_markup(f"[bold]{escape(run.name)}[/]  {escape(run.status)}"), Text(headline(f))]
    if step is not None:
        rows = run.layer_rows(step)
        budget = max(4, (height or 10_000) - 7 - min(3, len(f.warnings)))
        shown = rows if len(rows) <= budget else [rows[round(i * (len(rows) - 1) / (budget - 1))] for i in range(budget)]
        t = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
        t.add_column("layer", justify="right")
        t.add_column("name", no_wrap=True)
        fit = max(8, width - 63)  # what the numbers and bars leave of a line: a row stays one line
        for col in ("grad_norm", "delta_norm"):
            t.add_column(col, justify="right")
            t.add_column("", min_width=BAR, no_wrap=True)
        ranges = {c: log_range(r.get(c) for r in rows) for c in ("grad_norm", "delta_norm")}
        for r in shown:
            i = rows.index(r)
            cells = []
            for col in ("grad_norm", "delta_norm"):
                lost = underflowed(rows, i, col)
                cells += [BELOW_SHORT if lost else fmt(r.get(col)), "" if lost else _bar(r.get(col), *ranges[col])]
            t.add_row(str(r["layer"]), escape(_short(str(r["name"]), fit)), *cells)
        parts.append(t)
        if len(shown) < len(rows):
            parts.append(Text(f"{len(shown)} of {len(rows)} rows (evenly spaced; a taller terminal shows more)", style="dim"))
    for w in f.warnings[-3:]:
        parts.append(Text(w, style="yellow"))
    if f.ended and run.summary.get("verdict"):
        v = run.summary["verdict"]
        parts.append(Text.from_markup(f"verdict: [{VERDICT_STYLE.get(v, 'bold')}]{escape(v)}[/] — "
                                      f"{escape(str(run.summary.get('verdict_reason') or ''))}"))
    return Group(*parts)


def follow(path: Path, once: bool = False, interval: float = 1.0) -> None:
    """Print the view once, redraw it until the run ends (a terminal), or print a line per step."""
    from ..report.console import make_console

    console = make_console()
    f = Follower(Path(path))
    f.poll()
    if once:
        console.print(view(f, width=console.width))
        return
    try:
        if console.is_terminal:
            _redraw(console, f, interval)
        else:
            _lines(console, f, interval)
    except KeyboardInterrupt:
        pass


def _redraw(console, f: Follower, interval: float) -> None:
    from rich.live import Live

    with Live(view(f, console.height, console.width), console=console, auto_refresh=False, transient=False) as live:
        while not f.ended:
            time.sleep(interval)
            if f.poll():
                live.update(view(f, console.height, console.width), refresh=True)


def _lines(console, f: Follower, interval: float) -> None:
    printed, warned = -1, 0

    def out():
        nonlocal printed, warned
        for step in [s for s in f.run.steps if s > printed] or ([None] if printed < 0 else []):
            console.print(headline(f, step), soft_wrap=True, markup=False, highlight=False)
            printed = step if step is not None else printed
        for w in f.warnings[warned:]:
            console.print(w, soft_wrap=True, markup=False, highlight=False)
        warned = len(f.warnings)

    out()
    while not f.ended:
        time.sleep(interval)
        if f.poll():
            out()
    if f.run.summary.get("verdict"):
        console.print(f"verdict: {f.run.summary['verdict']} — {f.run.summary.get('verdict_reason') or ''}",
                      soft_wrap=True, markup=False, highlight=False)
