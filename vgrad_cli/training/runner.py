"""One experiment end to end: config -> run directory -> training -> summary.json.

Used by `vgrad run` and by sweeps. The console is passed in as callbacks, so this module prints nothing.
"""

from __future__ import annotations

import platform
import time
import traceback
from pathlib import Path

from .. import __version__
from ..analysis.verdict import first_last_ratio, ratios, sample_profile, time_ratios
from ..rundir.files import SCHEMA_VERSION, RunWriter


def versions() -> dict:
    import numpy
    import torch

    return {"vgrad": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "platform": platform.platform()}


def run_experiment(cfg, out_root: str | Path, on_start=None, on_log=None) -> tuple[Path, dict]:
    """Train `cfg` and write its run directory. Returns (run dir, summary).

    The directory is created only after the config validated (the caller's job) and the task was
    generated; an unexpected error still leaves a summary.json with status `failed`.
    """
    from .loop import resolve_device, train

    resolve_device(cfg.train.device)          # bad device -> UsageError before anything is written
    task = cfg.task.make(cfg.seed)
    writer = RunWriter(out_root, cfg.run_name())
    writer.write_config(cfg.to_dict())
    started = time.time()
    summary = {
        "schema_version": SCHEMA_VERSION, "name": cfg.run_name(), "status": "running",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "steps_planned": cfg.train.steps, "seed": cfg.seed, "versions": versions(),
        "task_loss": task.loss, "baseline_loss": task.baseline_loss, "chance_accuracy": task.chance_accuracy,
        # what the first layer sees, for the mean-field prediction at the model's depth (theory.py)
        "input_dim": task.input_dim, "input_second_moment": float((task.x_train.double() ** 2).mean()),
    }
    writer.write_summary(summary)
    if on_start is not None:
        on_start(writer.path, cfg)
    try:
        result = train(cfg, task, writer, on_log)
    except BaseException as e:  # record the failure, keep every row already written, re-raise
        writer.close()
        summary.update(status="failed", error=f"{type(e).__name__}: {e}", wall_time_s=round(time.time() - started, 3),
                       traceback=traceback.format_exc(limit=8))
        writer.write_summary(summary)
        raise
    writer.close()
    summary.update(summarize(result, time.time() - started, cfg.model.kind))
    if cfg.log.init_seeds and result.status != "interrupted":  # Ctrl-C: the user wants out, not K more steps
        summary["init_spread"] = spread_at_init(cfg, writer.path)
    summary.update(judge(writer.path, summary))
    writer.write_summary(summary)
    return writer.path, summary


def spread_at_init(cfg, run_dir: Path) -> dict:
    """log.init_seeds: step 0 of K seeds (no training), into init_spread.csv; returns the summary."""
    from ..analysis.spread import CSV_NAME
    from ..rundir.files import CsvTable
    from .initspread import SPREAD_COLUMNS, init_spread

    spread, rows = init_spread(cfg, cfg.log.init_seeds)
    table = CsvTable(run_dir / CSV_NAME, SPREAD_COLUMNS)
    table.append(rows)
    table.close()
    return spread


def judge(run_dir: Path, summary: dict) -> dict:
    """The verdict, by the rule `vgrad diagnose` uses, read back from the tables just written."""
    from ..analysis.diagnose import run_verdict
    from ..rundir.store import load_run

    from ..analysis.spread import note

    run = load_run(run_dir)
    run.summary = summary  # the final one: on disk it still says "running"
    verdict, reason = run_verdict(run)
    disagree = note(summary.get("init_spread"), run.config.get("model", {}).get("width"),
                    run.config.get("model", {}).get("depth"))
    return {"verdict": verdict, "verdict_reason": reason + (f"; {disagree}" if disagree else "")}


def summarize(result, wall_time: float, kind: str | None = None) -> dict:
    r = ratios(result.first_rows, result.last_rows, result.first_float64, kind)
    if result.first_time:
        r.update(time_ratios(result.first_time, result.last_time))
    growth = None
    if result.grad_total_first and result.grad_total_max is not None:
        growth = result.grad_total_max / result.grad_total_first
    m = result.last_metrics
    out = {
        "status": result.status,
        "steps_completed": result.steps_completed,
        "diverged_step": result.diverged_step,
        "stop_signal": result.stop_signal,
        "final_loss": m.get("loss"),
        "final_accuracy": m.get("accuracy"),
        "final_eval_loss": result.last_eval.get("eval_loss"),
        "final_eval_accuracy": result.last_eval.get("eval_accuracy"),
        "wall_time_s": round(wall_time, 3),
        "first_logged_step": result.first_rows[0]["step"] if result.first_rows else None,
        "last_logged_step": result.last_rows[0]["step"] if result.last_rows else None,
        "n_layers": len(result.first_rows),
        "grad_norm_total_growth": growth,
    }
    out.update(r)
    if result.first_float64:
        out["float64_init"] = {"delta_norm_ratio": first_last_ratio(result.first_float64, "delta_norm", kind),
                               "grad_norm_ratio": first_last_ratio(result.first_float64, "grad_norm", kind)}
    if result.first_time:
        out["time_profile"] = sample_profile(result.first_time, result.last_time)
    out["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return out
