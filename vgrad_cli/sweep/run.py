"""Running a planned sweep: skip what --resume finds finished, hand the rest to an executor, append
one row to sweep.csv per finished run, then write the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from .. import vocab as V
from .plan import Plan
from .report import SweepCsv, SweepProgress, make_row, write_report


def finished_runs(sweep_dir: Path, plan: Plan) -> dict[int, Path]:
    """For --resume: point index -> its finished run directory. Run directories of this sweep that
    did not finish (failed, interrupted, no summary) move to .incomplete/, out of the sweep's way."""
    by_name = {p.run_name: p.index for p in plan.points}
    done: dict[int, Path] = {}
    stale = []
    for d in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            name = (yaml.safe_load((d / V.CONFIG_YAML).read_text(encoding="utf-8")) or {}).get("name")
        except (OSError, yaml.YAMLError, AttributeError):
            continue  # not a run directory: leave it alone
        if name not in by_name:
            continue
        try:
            status = json.loads((d / V.SUMMARY_JSON).read_text(encoding="utf-8")).get("status")
        except (OSError, json.JSONDecodeError):
            status = None
        if status in V.FINAL:  # what --resume keeps; anything else runs again
            if by_name[name] in done:  # two finished runs of one point: keep the later (names sort by time)
                stale.append(done[by_name[name]])
            done[by_name[name]] = d
        else:
            stale.append(d)
    if stale:
        (Path(sweep_dir) / ".incomplete").mkdir(exist_ok=True)
        for d in stale:
            shutil.move(str(d), str(Path(sweep_dir) / ".incomplete" / d.name))
    return done


def run_sweep(plan: Plan, sweep_dir: Path, executor, console, resume: bool = False,
              report=write_report, label: str = "sweep") -> tuple[list[dict], bool]:
    """Run the points not finished yet. Returns (rows in plan order, interrupted?). Writes the report:
    `report(sweep_dir, plan, rows, console)`, the sweep's own unless a caller (`vgrad story`) brings
    one, with `label` on its progress bar."""
    done = finished_runs(sweep_dir, plan) if resume else {}
    rows: dict[int, dict] = {i: make_row(plan, plan.points[i], sweep_dir, d, None) for i, d in done.items()}
    table = SweepCsv(sweep_dir / "sweep.csv", plan.params, [rows[i] for i in sorted(rows)])
    todo = [p for p in plan.points if p.index not in rows]
    if resume:
        console.print(f"{len(rows)} of {len(plan.points)} runs already finished; running the other {len(todo)}")
    progress = SweepProgress(console, len(plan.points), len(rows), label)

    def on_result(index: int, run_dir: Path | None, error: str | None):
        point = plan.points[index]
        rows[index] = row = make_row(plan, point, sweep_dir, run_dir, error)
        table.append(row)
        progress.advance(point.label(plan.params), row)

    interrupted = False
    try:
        executor.run([(p.index, p.config) for p in todo], sweep_dir, on_result)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.stop()
        table.close()
    ordered = [rows[i] for i in sorted(rows)]
    report(sweep_dir, plan, ordered, console)
    # Runs can be stopped without the driver noticing (a signal to the workers only): same outcome.
    interrupted = interrupted or any(r["status"] == V.INTERRUPTED for r in ordered)
    return ordered, interrupted
