"""`vgrad story`: the bundled chapters x N seeds, in parallel like a sweep, summarized per chapter
(story.csv, story.md). The work is in the story package, imported lazily."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import List, Optional

import typer

from .app import app, usage_errors
from .. import vocab as V


@app.command()
@usage_errors
def story(
    chapters: Optional[List[str]] = typer.Argument(
        None, help="chapters to run, by number (01) or file stem (01_deep_sigmoid); default: all of them"),
    seeds: int = typer.Option(5, "--seeds", help="seeds per chapter: the config's own seed, then +1, +2, ..."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="the story directory, new or empty (default: runs/story-<date>-<time>)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="parallel runs (default: the CPU count)"),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="cut every chapter to N training steps: a quick look, not the bundled figures"),
    configs: Optional[Path] = typer.Option(
        None, "--configs", help="folder of chapter YAML files (default: ./configs, else the one beside vgrad)"),
    no_plots: bool = typer.Option(False, "--no-plots", help="do not draw figures/ (one PNG per chapter)"),
):
    """Run the bundled chapters over several seeds: story.csv and story.md, slide-ready.

    Each figure as the median, min and max over the seeds."""
    from ..errors import UsageError
    from ..story.chapters import configs_dir, find_chapters, load, select
    from ..story.run import create_story_dir, run_story, story_plan

    # ---- check everything before anything is written --------------------------------------------
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be >= 1 (got {workers})")
    chosen = [load(c) for c in select(find_chapters(configs_dir(configs)), list(chapters or []))]
    plan = story_plan(chosen, seeds, steps)
    from ..sweep.executors import LocalExecutor
    from .sweep import check_devices, cpu_count

    check_devices(plan)
    runner = LocalExecutor(workers or cpu_count())

    # ---- run ------------------------------------------------------------------------------------
    from rich.markup import escape

    from ..report.console import make_console, print_phrases
    from ..story.markdown import machine

    console = make_console()
    story_dir = create_story_dir(out)
    console.print(f"[bold]vgrad story[/] {len(chosen)} chapter{'s' if len(chosen) != 1 else ''} x {seeds} "
                  f"seed{'s' if seeds != 1 else ''}: {len(plan.points)} runs, {runner.describe()}", soft_wrap=True)
    print_phrases(console, [escape(str(story_dir))], head="story directory:")
    command = ["vgrad", "story", *(chapters or []), "--seeds", str(seeds)]
    for flag, value in (("--workers", workers), ("--steps", steps), ("--configs", configs)):
        if value is not None:
            command += [flag, str(value)]
    about = {**machine(), "command": shlex.join(command), "workers": runner.workers, "steps": steps,
             "plots": not no_plots}
    rows, interrupted = run_story(plan, chosen, story_dir, runner, console, about)

    print_phrases(console, [escape(str(story_dir / "story.md")), "story.csv (per run: sweep.csv)"], sep=", ",
                  head="results:")
    if interrupted:
        finished = sum(r["status"] in V.FINAL for r in rows)
        console.print(f"[yellow]interrupted[/]: {finished} of {len(plan.points)} runs finished; the story "
                      "covers those", soft_wrap=True)
        raise typer.Exit(130)
    failed = sum(r["status"] == V.FAILED for r in rows)
    if failed:
        from ..report.console import error

        error(f"{failed} run{'s' if failed > 1 else ''} failed; see the error column of {story_dir / 'sweep.csv'}")
        raise typer.Exit(1)
