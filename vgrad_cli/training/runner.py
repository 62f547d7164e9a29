"""One experiment end to end: config -> model, task and optimizer -> the same Monitor a user holds
-> run directory and summary.json.

Used by `vgrad run`, sweeps and the story. The console is passed in as callbacks, so this module
prints nothing. What only a run vgrad can rebuild gets comes after the training loop: the replay of
a diverged run, step 0 again in float64, model.pt, and the spread over seeds at init.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import vocab as V
from ..analysis.verdict import FLOAT64_INIT_BELOW
from ..monitor.monitor import Monitor
from ..monitor.recording import Recording
from ..threads import torch_threads
from .loop import StopSignals, float64_step0, logged_steps, replay, train
from .trainer import Trainer, resolve_device


def run_info(cfg, task) -> dict:
    """summary.json's start keys that only a config run knows."""
    return {"steps_planned": cfg.train.steps, "seed": cfg.seed, "task_loss": task.loss,
            "baseline_loss": task.baseline_loss, "chance_accuracy": task.chance_accuracy,
            # what the first layer sees, for the mean-field prediction at the model's depth (theory.py)
            "input_dim": task.input_dim, "input_second_moment": float((task.x_train.double() ** 2).mean())}


def run_experiment(cfg, out_root: str | Path, on_start=None, on_log=None, plots: bool = False) -> tuple[Path, dict]:
    """Train `cfg` and write its run directory. Returns (run dir, summary).

    The directory is created only after the config validated (the caller's job) and the task was
    generated; an unexpected error still leaves a summary.json with status `failed`.
    """
    device = resolve_device(cfg.train.device)  # a bad device: UsageError before anything is written
    task = cfg.task.make(cfg.seed)
    rec = Recording(out_root, cfg.run_name(), cfg.to_dict(), run_info(cfg, task), on_log=on_log, replayable=True)
    if on_start is not None:
        on_start(rec.path, cfg)
    with torch_threads(cfg.train.cpu_threads if device.type == "cpu" else None):
        task = task.to(device)
        try:
            tr = Trainer(cfg, task, device)
        except BaseException as e:
            rec.finish(V.FAILED, 0, error=e)
            raise
        mon = Monitor(tr.model, tr.optimizer, every=logged_steps(cfg), on_problem=None,
                      activations=cfg.log.activations, every_step=cfg.log.every_step, plots=plots, steps=cfg.train.steps,
                      clip_norm=cfg.train.clip_norm, clip_value=cfg.train.clip_value, recording=rec)
        with mon, StopSignals() as stop:  # an exception: the run ends "failed", its rows kept
            status, step = train(cfg, tr, mon, stop)
            if rec.needs_replay:
                replay(cfg, task, device, mon, step)
            float64 = _float64_step0(cfg, task, device, rec)
            if status != V.DIVERGED:
                # the trained and the initial weights: `vgrad diagnose` re-runs probes on them (e.g.
                # resetting the early layers to see whether the network relies on them)
                torch.save({"final": tr.model.state_dict(), "init": tr.initial_state}, rec.path / V.MODEL_PT)
            spread = {}
            if cfg.log.init_seeds and status != V.INTERRUPTED:  # Ctrl-C: the user wants out, not K more steps
                spread["init_spread"] = spread_at_init(cfg, rec)
            mon.close(status, stop_signal=stop.requested, float64=float64, **spread)
    return rec.path, rec.summary


def _float64_step0(cfg, task, device, rec: Recording) -> list[dict] | None:
    """Step 0 again in float64 (layers_float64.csv) when float32 nears its range there, or always
    with log.float64_init."""
    first = rec.first[0] if rec.first else []
    if not first or first[0]["step"] != 0 or not (cfg.log.float64_init or any(
            r.get(c) is not None and r[c] < FLOAT64_INIT_BELOW for r in first for c in ("grad_norm", "delta_norm"))):
        return None
    rows = float64_step0(cfg, task, device)
    rec.add_table(V.FLOAT64_CSV, V.LAYER_COLUMNS, rows)
    return rows


def spread_at_init(cfg, rec: Recording) -> dict:
    """log.init_seeds: step 0 of K seeds (no training), into init_spread.csv; returns the summary."""
    from .initspread import init_spread

    spread, rows = init_spread(cfg, cfg.log.init_seeds)
    rec.add_table(V.SPREAD_CSV, V.SPREAD_COLUMNS, rows)
    return spread
