"""`vgrad export RUN --to tensorboard|mlflow|wandb DIR_OR_URI`: a finished run into a tracker, with
the tags and values Monitor(log_to=...) sends while a run trains (monitor/export.py)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from .app import app, usage_errors
from .. import vocab as V


@app.command()
@usage_errors
def export(
    # one argument list, split here: click would report "Missing argument 'runs'" for a run given
    # without its destination
    args: List[str] = typer.Argument(None, metavar="RUN DIR_OR_URI", show_default=False,
                                     help="run directories, unique prefixes of run names, or sweep directories; then "
                                     "the destination — tensorboard: a log directory (one subdirectory per run); "
                                     "mlflow: a store directory or a tracking URI; wandb: the directory for the run's files"),
    to: str = typer.Option(..., "--to", help=f"the tracker: {', '.join(V.TRACKERS)}"),
    modules: bool = typer.Option(False, "--modules", help="send the module rows (layers.csv), not the run's view"),
    project: str = typer.Option("vgrad", "--project", help="wandb: the project"),
    experiment: str = typer.Option("vgrad", "--experiment", help="mlflow: the experiment (made if missing)"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where run names are looked up"),
):
    """Send finished runs to TensorBoard, MLflow or W&B: what Monitor(log_to=...) sends while a run trains."""
    from ..errors import UsageError
    from ..monitor.export import export as send
    from ..report.console import make_console
    from ..rundir.store import resolve

    if to not in V.TRACKERS:
        raise UsageError(f"--to must be one of {', '.join(V.TRACKERS)}, not '{to}'")
    if not args or len(args) < 2:
        got = f"only '{args[0]}'" if args else "nothing"
        raise UsageError(f"vgrad export needs one or more runs and then where to send them "
                         f"(vgrad export RUN... --to {to} DIR_OR_URI); got {got}")
    runs, target = args[:-1], args[-1]
    paths = [p for r in runs for p in resolve(r, runs_dir)]
    console = make_console(stderr=True)
    for p in paths:
        console.print(f"{p.name} -> {to}: {send(p, to, target, modules, project, experiment)}", soft_wrap=True,
                      markup=False, highlight=False)
