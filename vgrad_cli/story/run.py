"""Planning and running a story: every chapter x N seeds, validated before anything is written, then
run like a sweep (sweep.run.run_sweep with the sweep executors), so that the story directory is a
sweep directory too: sweep.csv has a row per run, and `vgrad runs` / `vgrad compare` read it.

Seeds: each chapter's own seed, then +1, +2, ... - seed 1 of N is the run the config ships with.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from ..errors import UsageError
from ..sweep.plan import Param, Plan, Point
from .chapters import Chapter


def story_plan(chapters: list[Chapter], seeds: int, steps: int | None) -> Plan:
    """One sweep point per chapter and seed, each config validated (the first bad one raises)."""
    from ..config import validate

    if seeds < 1:
        raise UsageError(f"--seeds must be >= 1 (got {seeds})")
    plan = Plan([Param("chapter", "chapter", [c.stem for c in chapters])], list(range(seeds)), base={})
    for chapter in chapters:
        source = str(chapter.path)
        first = validate(chapter.config, source)
        chapter.kind = first.model.kind
        for k in range(seeds):
            data = json.loads(json.dumps(chapter.config))  # a deep copy of plain data
            data["seed"] = first.seed + k
            stem = re.sub(r"[^A-Za-z0-9._-]", "_", chapter.stem)[:60]  # a run name's characters
            data["name"] = f"{stem}_seed-{first.seed + k}"
            flags = {}
            if steps is not None:
                data.setdefault("train", {})["steps"] = steps
                flags["train.steps"] = f"--steps {steps}"
            validate(data, source, flags)
            plan.points.append(Point(len(plan.points), (chapter.stem,), data["seed"], data["name"], data))
    return plan


def create_story_dir(out: Path | None) -> Path:
    """--out DIR (new, or an empty folder), else runs/story-<date>-<time>. A story never writes into
    a folder that already holds something: its story.csv and runs stay what they were."""
    from ..rundir.files import create_unique_dir

    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return create_unique_dir("runs", (f"story-{stamp}" + (f"-{i + 1}" if i else "") for i in range(100)),
                                 "story directory")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' is a file; give a folder for the story (it is created)")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out '{out}' is not empty; give a new folder (the story there is kept as it is)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the story directory '{out}': {e.strerror}") from None
    return out


def run_story(plan: Plan, chapters: list[Chapter], story_dir: Path, executor, console, about: dict):
    """Run every point through the sweep machinery; the report is the story's (story.csv, story.md).
    Returns (rows, interrupted?) as run_sweep does: Ctrl-C keeps what finished and reports it."""
    from ..sweep.run import run_sweep

    started = time.time()

    def report(directory, plan_, rows, console_):
        write_story(directory, chapters, len(plan.seeds), rows, console_, {**about, "elapsed_s": time.time() - started})

    return run_sweep(plan, story_dir, executor, console, report=report, label="story")


def write_story(story_dir: Path, chapters: list[Chapter], seeds: int, rows: list[dict], console, about: dict):
    """story.csv, story.md (and its figures), and the tables on the console."""
    from .markdown import render
    from ..rundir.files import write_text_atomic
    from ..sweep.report import csv_text
    from .report import COLUMNS, print_tables, story_stats, tables

    groups = story_stats(story_dir, chapters, seeds, rows)
    write_text_atomic(story_dir / "story.csv", csv_text(COLUMNS, groups))
    figures = {}
    if about.get("plots") and rows:
        from .figures import chapter_figures

        try:
            figures = chapter_figures(story_dir, groups, rows)
        except Exception as e:  # noqa: BLE001 - a plot problem must not hide the numbers
            console.print(f"[yellow]warning:[/] figures not written: {type(e).__name__}: {e}", soft_wrap=True)
    write_text_atomic(story_dir / "story.md", render(groups, seeds, about, figures))
    print_tables(console, tables(groups))
