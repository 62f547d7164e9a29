"""`vgrad compare`, `vgrad show`, `vgrad runs` (alias `ls`): reading runs that already exist.

None of these imports torch: they read the run directory's CSV and JSON files only, so they answer
in a fraction of a second. matplotlib is imported only when `compare --plot` asks for a figure.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .app import app, usage_errors

RUNS_DIR_HELP = "where run names are looked up (a RUN may also be a path)"


def _load(args: list[str], runs_dir: Path) -> list:
    from ..rundir.store import load_run, resolve

    paths = [p for a in args for p in resolve(a, runs_dir)]
    return [load_run(p) for p in paths]


def _notes(console, runs) -> None:
    for r in runs:
        for n in r.notes + [n for n in r.summary.get("notes") or [] if isinstance(n, str)]:
            console.print(f"[yellow]note:[/] {r.name}: {n}", soft_wrap=True, markup=True)


@app.command()
@usage_errors
def compare(
    runs: List[str] = typer.Argument(..., help="run directories, unique prefixes of run names, or sweep directories"),
    step: Optional[str] = typer.Option(None, "--step", help="first, last or a logged step number [default: first and last]"),
    format_: str = typer.Option("table", "--format", "-f", help="table, json, csv or markdown"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="also write a side-by-side figure (.png, .svg or .pdf)"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help=RUNS_DIR_HELP),
    modules: bool = typer.Option(False, "--modules", help="one row per module (layers.csv), not per block"),
):
    """Put runs side by side: per-layer gradients, ratios to the first run, verdicts.

    Per layer grad_norm and delta_norm, their log10 ratios to the first run, and each run's verdict.
    Rows pair by name (a block view's blocks by their index in their stack)."""
    from ..report.compare import FORMATS, build, parse_step
    from ..report.compare_render import render_csv, render_json, render_markdown, render_table
    from ..errors import UsageError
    from ..report.console import make_console

    if format_ not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not '{format_}'")
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"--plot needs a file name ending in .png, .svg or .pdf, not '{plot}'")
    which = parse_step(step)
    loaded = _load(runs, runs_dir)
    if len(loaded) < 2:
        raise UsageError(f"compare needs at least two runs, got {len(loaded)} ('vgrad show RUN' shows one)")
    data = build(loaded, which, modules=modules)
    err = make_console(stderr=True)
    if format_ == "table":
        console = make_console()
        _notes(console, loaded)
        render_table(data, console)
    else:
        _notes(err, loaded)  # stdout stays machine-readable
        text = {"json": render_json, "csv": render_csv, "markdown": render_markdown}[format_](data)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    if plot is not None:
        from ..report.compare_plot import compare_plot

        plot.parent.mkdir(parents=True, exist_ok=True)
        compare_plot(loaded, plot)
        err.print(f"plot: {plot}", soft_wrap=True)


@app.command()
@usage_errors
def show(
    run: str = typer.Argument(..., help="a run directory or a unique prefix of a run's name"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help=RUNS_DIR_HELP),
    modules: bool = typer.Option(False, "--modules", help="one row per module (layers.csv), not per block"),
):
    """Print an existing run's end-of-run summary (per-layer table and verdict) without training."""
    from ..analysis.verdict import run_stats
    from ..errors import UsageError
    from rich.markup import escape

    from ..report.console import make_console, print_phrases, print_summary
    from ..rundir.store import load_run, resolve

    paths = resolve(run, runs_dir)
    if len(paths) > 1:
        raise UsageError(f"'{run}' is a sweep of {len(paths)} runs: show one of them, or `vgrad compare {run}`")
    r = load_run(paths[0])
    console = make_console()
    task = (r.config.get("task") or {}).get("name")
    source = [f"task {escape(str(task))}"] if task else ["recorded by Monitor"] if r.config.get("source") == "monitor" else []
    print_phrases(console, [escape(r.model_text()), *source, r.date_text()], sep=" | ",
                  head=f"[bold]{escape(r.name)}[/]:")
    _notes(console, [r])
    s = run_stats(r)
    if r.incomplete or s.get("verdict") is None:
        s.update(_provisional_verdict(r, s))
    steps = r.steps
    rows = r.module_layer_rows if modules else r.layer_rows
    first, last = (rows(steps[0]), rows(steps[-1])) if steps else ([], [])
    print_summary(console, r.path, s, first, last)
    if r.time and steps and not s.get("time_profile"):  # print_summary showed the summary's own profile
        from ..report.compare import build, time_block
        from ..report.compare_render import print_blocks

        print_blocks([time_block(build([r], ["first", "last"]))], console)
    if steps and r.metrics:  # the diagnosis lines `vgrad run` printed (from diagnosis.json when there is one)
        from ..analysis.diagnose import stored_or_fresh
        from .diagnose import print_short_report

        try:
            print_short_report(console, stored_or_fresh(r), r.path)
        except UsageError:  # e.g. no config.yaml: the tables above are all there is
            pass
    plots = sorted((r.path / "plots").glob("*.png"))
    if plots:
        print_phrases(console, [p.name for p in plots], sep=", ", head=f"plots in {escape(str(r.path / 'plots'))}:")


def _provisional_verdict(r, s: dict) -> dict:
    """The verdict rule applied to what an unfinished run logged, marked as such."""
    from ..analysis.diagnose import run_verdict

    v, reason = run_verdict(r)
    return {"verdict": v, "verdict_reason": f"{reason} (provisional: the run is {r.status})"}


@app.command("runs")
@usage_errors
def runs_(
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="folder that holds the runs [default: runs]"),
):
    """List the runs under runs/ (and inside sweeps there): name, date, model, status, verdict."""
    from rich.markup import escape
    from rich.table import Table

    from ..analysis.verdict import run_stats
    from ..errors import UsageError
    from ..report.console import VERDICT_STYLE, fmt, make_console
    from ..rundir.store import find_runs, load_run

    folder = runs_dir or Path("runs")
    if runs_dir is not None and not runs_dir.is_dir():
        raise UsageError(f"runs directory '{runs_dir}' does not exist")
    console = make_console()
    paths = find_runs(folder)
    if not paths:
        where = "" if runs_dir is not None else " (the runs folder of the current directory; --runs-dir DIR looks elsewhere)"
        console.print(f"no runs under '{folder.resolve()}'{where} yet: `vgrad run configs/01_deep_sigmoid.yaml` "
                      "makes one", soft_wrap=True, markup=False)
        return
    rows = []
    for p in paths:
        try:
            r = load_run(p)
        except UsageError as e:  # one damaged run must not hide the others
            rows.append(("", str(p.relative_to(folder)), str(e), "damaged", "", "", ""))
            continue
        s = run_stats(r)
        task = (r.config.get("task") or {}).get("name")
        rows.append((r.date_text(), str(p.relative_to(folder)), r.model_text() + (f" | {task}" if task else ""), r.status, s.get("verdict") or "", _n(s.get('steps_completed')) + (f"/{_n(s['steps_planned'])}" if s.get("steps_planned") is not None else ""),
                     fmt(s.get("final_loss"))))
    rows.sort(key=lambda row: (row[0], row[1]))
    t = Table(title=f"runs under {escape(str(folder))}", title_justify="left", show_edge=False, pad_edge=False)
    # The name is what users copy into compare/show: it has the first line of its cell to itself, the
    # date, model and task go under it, dimmed; status and verdict share a cell the same way. Only the
    # run column wraps, so the numbers keep their width at 80 columns.
    t.add_column("run\n[dim]date | model | task[/]", overflow="fold")
    t.add_column("status\nverdict", no_wrap=True)
    t.add_column("steps", justify="right", no_wrap=True)
    t.add_column("loss", justify="right", no_wrap=True)
    for date, name, model, status, verdict, steps, loss in rows:
        style = VERDICT_STYLE.get(verdict, "")
        about = " | ".join(x for x in (date, model) if x)
        t.add_row(f"{escape(name)}\n[dim]{escape(about)}[/]", escape(status) + "\n" + (
            f"[{style}]{escape(verdict)}[/]" if style else escape(verdict)), steps, loss)
    console.print(t)


app.command("ls", help="Same as `vgrad runs`.")(runs_)


def _n(v) -> str:
    return "" if v is None else str(v)
