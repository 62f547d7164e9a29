"""`vgrad sweep`: the command line. The work is in the sweep package (plan.py: plan and directory;
run.py: running and resuming; executors.py: local processes, Ray; report.py: table, summary, plot),
all imported lazily."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from .app import app, usage_errors
from .. import vocab as V

EXECUTORS = ("local", "ray")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


@app.command()
@usage_errors
def sweep(
    params: Optional[List[str]] = typer.Argument(
        None, help="what to sweep: depth, width, activation, init, norm, residual, optimizer, lr, clip_norm, "
        "seq_len, kind, or any dotted config key (e.g. model.init_std); several make a grid"),
    values: Optional[List[str]] = typer.Option(
        None, "--values", help="values: --values 2,4,8 for one parameter; for a grid name each list: "
        "--values depth=2,4,8 --values activation=sigmoid,relu (repeatable)"),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="repeat every point with seeds 0..K-1"),
    config: Optional[Path] = typer.Option(
        None, "--config", help="base YAML config (default: a bundled deep sigmoid MLP, 300 steps)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a base key: --set train.steps=500"),
    out: Path = typer.Option(Path("runs"), "--out", help="folder that receives the sweep directory"),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="parallel runs (default: the CPU count; with Ray: the tasks in flight)"),
    executor: str = typer.Option("local", "--executor", help="local (worker processes) or ray"),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster: HOST:6379 from a cluster node, ray://HOST:10001 from elsewhere"),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="a sweep directory: run only its points that are missing or incomplete"),
):
    """Run one experiment per point of a parameter grid (times seeds) and tabulate and plot the gradients."""
    from ..errors import UsageError

    # ---- check everything before anything is written --------------------------------------------
    if executor not in EXECUTORS:
        raise UsageError(f"--executor '{executor}' is not known; choose one of: {', '.join(EXECUTORS)}")
    if address and executor != "ray":
        raise UsageError("--address is the Ray cluster to use; add --executor ray")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be >= 1 (got {workers})")
    from ..sweep.plan import create_sweep_dir, new_plan, resumed_plan
    from ..sweep.run import run_sweep

    if resume is not None:
        given = [f for f, v in (("PARAM", params), ("--values", values), ("--seeds", seeds is not None),
                                ("--config", config), ("--set", set_)) if v]
        if given:
            raise UsageError(f"--resume takes the plan from the sweep directory; drop {', '.join(given)}")
        plan = resumed_plan(resume)
    else:
        plan = new_plan(list(params or []), list(values or []), seeds, config, list(set_ or []))

    from ..sweep.executors import LocalExecutor, RayExecutor

    if executor == "ray":
        runner = RayExecutor(address, workers)
        runner.connect()
    else:
        check_devices(plan)
        runner = LocalExecutor(workers or cpu_count())

    # ---- run ------------------------------------------------------------------------------------
    from rich.markup import escape

    from ..report.console import make_console, print_phrases

    console = make_console()
    sweep_dir = Path(resume) if resume is not None else create_sweep_dir(out, plan)
    for note in plan.notes:
        console.print(note, soft_wrap=True)
    n_points = len(plan.points) // len(plan.seeds)
    console.print(
        f"[bold]vgrad sweep[/] {' x '.join(f'{p.name} ({len(p.values)})' for p in plan.params)}"
        f"{f' x {len(plan.seeds)} seeds' if len(plan.seeds) > 1 else ''}: {len(plan.points)} runs "
        f"({n_points} points), {runner.describe()}", soft_wrap=True)
    print_phrases(console, [escape(str(sweep_dir))], head="sweep directory:")
    rows, interrupted = run_sweep(plan, sweep_dir, runner, console, resume=resume is not None)

    print_phrases(console, [escape(str(sweep_dir / "sweep.csv")), "sweep_summary.csv", "sweep.png"], sep=", ",
                  head="results:")
    if interrupted:
        finished = sum(r["status"] in V.FINAL for r in rows)
        console.print(f"[yellow]interrupted[/]: {finished} of {len(plan.points)} runs finished; "
                      f"finish with: vgrad sweep --resume {sweep_dir}", soft_wrap=True)
        raise typer.Exit(130)
    failed = sum(r["status"] == V.FAILED for r in rows)
    if failed:
        from ..report.console import error

        error(f"{failed} run{'s' if failed > 1 else ''} failed; see the error column of {sweep_dir / 'sweep.csv'}")
        raise typer.Exit(1)


def check_devices(plan):
    """train.device: cuda on a machine without CUDA would fail every local run: say so up front."""
    if any((p.config.get("train") or {}).get("device") == "cuda" for p in plan.points):
        from ..training.trainer import resolve_device

        resolve_device("cuda")
