"""`vgrad watch RUN`: a run's latest logged step in the terminal as it trains (monitor/live.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, usage_errors


@app.command()
@usage_errors
def watch(
    run: str = typer.Argument(..., help="a run directory being written, or a unique prefix of a run's name"),
    once: bool = typer.Option(False, "--once", help="print the view once and exit"),
    interval: float = typer.Option(1.0, "--interval", help="seconds between looks at the run directory"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where run names are looked up"),
):
    """Watch a run as it trains: its latest logged step, redrawn until the run ends (not a terminal: a line per step)."""
    from ..errors import UsageError
    from ..monitor.live import follow
    from ..rundir.store import resolve

    if interval <= 0:
        raise UsageError(f"--interval must be > 0 seconds, not {interval}")
    paths = resolve(run, runs_dir)
    if len(paths) > 1:
        raise UsageError(f"'{run}' is a sweep of {len(paths)} runs: watch one of them")
    follow(paths[0], once=once, interval=interval)
