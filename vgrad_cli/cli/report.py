"""`vgrad report RUN [RUN...] -o report.html`: one self-contained HTML file to open and share
(report/html.py), and `vgrad watch RUN`: a run's latest logged step in the terminal as it trains
(monitor/live.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import typer

from .app import app, usage_errors
from .. import vocab as V


@app.command()
@usage_errors
def report(
    runs: List[str] = typer.Argument(..., help="run directories, unique prefixes of run names, or sweep directories"),
    out: Path = typer.Option(Path(V.REPORT_HTML), "--out", "-o", help="the HTML file to write"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where run names are looked up"),
):
    """Write one HTML file: each run's verdict and evidence, per-layer table, figures and advice, and
    for several runs their comparison. Self-contained (figures and styles inside): open it anywhere."""
    from ..errors import UsageError
    from ..rundir.store import load_run, resolve

    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"-o needs a file name ending in .html, not '{out}'")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"cannot write '{out}': the folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UsageError(f"cannot write '{out}': permission denied")
    loaded = [load_run(p) for r in runs for p in resolve(r, runs_dir)]
    from ..report.html import write_report

    write_report(loaded, out)
    size = out.stat().st_size
    typer.echo(f"report: {out} ({size / 1024:.0f} KB, {len(loaded)} run{'s' if len(loaded) > 1 else ''})", err=True)


@app.command()
@usage_errors
def watch(
    run: str = typer.Argument(..., help="a run directory being written, or a unique prefix of a run's name"),
    once: bool = typer.Option(False, "--once", help="print the view once and exit"),
    interval: float = typer.Option(1.0, "--interval", help="seconds between looks at the run directory"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where run names are looked up"),
):
    """Watch a run as it trains: its latest logged step (per-layer grad and delta bars, loss,
    warnings), redrawn in place; exits when the run ends. Not a terminal: one line per logged step."""
    from ..errors import UsageError
    from ..monitor.live import follow
    from ..rundir.store import resolve

    if interval <= 0:
        raise UsageError(f"--interval must be > 0 seconds, not {interval}")
    paths = resolve(run, runs_dir)
    if len(paths) > 1:
        raise UsageError(f"'{run}' is a sweep of {len(paths)} runs: watch one of them")
    follow(paths[0], once=once, interval=interval)
