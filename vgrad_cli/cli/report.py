"""`vgrad report RUN [RUN...] -o report.html`: one self-contained HTML file to open and share
(report/html.py)."""

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
    """Write one self-contained HTML file: each run's verdict, evidence, per-layer table, figures and advice; several runs compared."""
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
