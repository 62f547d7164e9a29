"""The `vgrad` command line: parse, then delegate. Heavy imports (torch, matplotlib) happen inside
the commands so that `vgrad --help` starts instantly."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    name="vgrad",
    help="Measure vanishing and exploding gradients: train a network from a YAML config and get "
    "per-layer gradient tables.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_diagnosis(console, run_dir):
    """The short form of `vgrad diagnose` (it also writes diagnosis.json into the run)."""
    from .diagnose import diagnose, short_report
    from .errors import UsageError

    try:
        lines = short_report(diagnose(run_dir))
    except UsageError:  # nothing logged yet (e.g. interrupted at step 0): nothing to diagnose
        return
    for line in lines:
        console.print(line, soft_wrap=True, markup=False, highlight=False)


def _version(value: bool):
    if value:
        from . import __version__

        typer.echo(f"vgrad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
):
    """Measure vanishing and exploding gradients, layer by layer and step by step."""


def usage_errors(fn):
    """Bad input -> one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import UsageError

        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            from .render import error

            error(str(e))
            raise typer.Exit(e.exit_code)

    return wrapper


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
):
    """Train the network CONFIG describes and write its per-layer gradient tables."""
    from .config import load_config

    shortcuts = [("name", "--name", name), ("train.steps", "--steps", steps), ("seed", "--seed", seed)]
    sets = list(set_ or []) + [f"{key}={value}" for key, _, value in shortcuts if value is not None]
    flags = {key: f"{flag} {value}" for key, flag, value in shortcuts if value is not None}
    cfg = load_config(config, sets, flags)

    from .render import RunProgress, make_console, print_summary
    from .runner import run_experiment

    console = make_console()
    progress = RunProgress(console, quiet)
    first_rows: list = []
    last_rows: list = []

    def on_log(step, metrics, rows):
        if not first_rows:
            first_rows.extend(rows)
        last_rows[:] = rows
        progress.log(step, metrics, rows)

    from .errors import UsageError
    from .render import error

    try:
        run_dir, summary = run_experiment(cfg, out, on_start=progress.start, on_log=on_log)
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C before training; inside it, signals end the run
        raise typer.Exit(130)
    except UsageError:
        raise
    except Exception as e:  # the run directory already holds status "failed" and the traceback
        progress.stop()
        error(f"run failed: {type(e).__name__}: {e} (details in the run's summary.json)")
        raise typer.Exit(1)
    finally:
        progress.stop()
    if not no_plots:
        from .plots import write_run_plots

        write_run_plots(run_dir)
    if quiet:
        print(run_dir)
    else:
        print_summary(console, run_dir, summary, first_rows, last_rows)
        _print_diagnosis(console, run_dir)
    if summary["status"] == "interrupted":
        raise typer.Exit(130)


# Commands kept in their own modules register themselves on `app` when imported; each keeps its
# heavy imports inside its functions. One line per module:
# (command modules)
from . import cli_diagnose  # noqa: E402,F401
from . import cli_sweep  # noqa: E402,F401
from . import cli_compare  # noqa: E402,F401


def main():  # console-script entry point
    app()

