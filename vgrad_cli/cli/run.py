"""`vgrad run CONFIG`: train the network a config describes and write its run directory."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import app, usage_errors
from .. import vocab as V


def _print_diagnosis(console, run_dir):
    """The short form of `vgrad diagnose` (it also writes diagnosis.json into the run)."""
    from ..analysis.diagnose import diagnose
    from ..errors import UsageError
    from .diagnose import print_short_report

    try:
        d = diagnose(run_dir)
    except UsageError:  # nothing logged yet (e.g. interrupted at step 0): nothing to diagnose
        return
    print_short_report(console, d, run_dir)


def _print_spread(console, summary: dict):
    from ..analysis.spread import line
    from ..report.console import print_lines

    text = line(summary.get("init_spread"))
    if text:
        print_lines(console, [text])


@app.command()
@usage_errors
def run(
    config: Path = typer.Argument(..., help="YAML config file (see configs/ and docs/config.md)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a key: --set model.depth=30 (repeatable)"),
    out: Path = typer.Option(Path("runs"), "--out", help="folder that receives the run directory"),
    name: Optional[str] = typer.Option(None, "--name", help="run name (overrides the config's name)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="override train.steps"),
    seed: Optional[int] = typer.Option(None, "--seed", help="override seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only the run directory"),
    no_plots: bool = typer.Option(False, "--no-plots", help="do not write plots/ (the PNG figures)"),
    init_seeds: Optional[int] = typer.Option(None, "--init-seeds", help="also measure step 0 of K seeds (no training): the factor's spread (= --set log.init_seeds=K)"),
):
    """Train the network CONFIG describes and write its per-layer gradient tables."""
    from ..config import load_config

    from ..errors import UsageError

    if init_seeds is not None and init_seeds < 1:  # the key's 0 means off; a flag asking for 0 seeds is a mistake
        raise UsageError(f"--init-seeds must be >= 1 (the number of seeds measured at step 0), not {init_seeds}")
    shortcuts = [("name", "--name", name), ("train.steps", "--steps", steps), ("seed", "--seed", seed),
                 ("log.init_seeds", "--init-seeds", init_seeds)]
    sets = list(set_ or []) + [f"{key}={value}" for key, _, value in shortcuts if value is not None]
    flags = {key: f"{flag} {value}" for key, flag, value in shortcuts if value is not None}
    cfg = load_config(config, sets, flags)

    from ..report.console import RunProgress, make_console, print_summary
    from ..training.runner import run_experiment

    console = make_console()
    progress = RunProgress(console, quiet)
    first_rows: list = []
    last_rows: list = []

    def on_log(step, metrics, rows):
        if not first_rows:
            first_rows.extend(rows)
        last_rows[:] = rows
        progress.log(step, metrics, rows)

    from ..report.console import error

    try:
        run_dir, summary = run_experiment(cfg, out, on_start=progress.start, on_log=on_log, plots=not no_plots)
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C before training; inside it, signals end the run
        raise typer.Exit(130) from None
    except UsageError:
        raise
    except Exception as e:  # the run directory already holds status "failed" and the traceback
        progress.stop()
        error(f"run failed: {type(e).__name__}: {e} (details in the run's summary.json)")
        raise typer.Exit(1) from None
    finally:
        progress.stop()
    if quiet:
        print(run_dir)
    else:
        print_summary(console, run_dir, summary, first_rows, last_rows)
        _print_diagnosis(console, run_dir)
        _print_spread(console, summary)
    if summary["status"] == V.INTERRUPTED:
        raise typer.Exit(130)
