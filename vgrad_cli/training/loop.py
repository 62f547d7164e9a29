"""The training loop of `vgrad run`, and what only `vgrad run` can do because it can train a run
again from its seed: replay a diverged run, measure step 0 alone (in float64; for K seeds).

Step s: forward/backward on batch s (the model has had s updates), measured by the Monitor if s is
logged, then the update. Step `steps` is measured but not followed by an update, so the last logged
row shows the trained model. The Monitor is the same one a user holds in their own loop: this loop
is a user of it like any other.
"""

from __future__ import annotations

import signal
import threading

import torch

from .. import vocab as V
from ..measure.probes import LayerProbe
from ..monitor.monitor import Monitor
from .trainer import Trainer


class StopSignals:
    """SIGINT/SIGTERM set a flag that the loop checks once per step; the run then ends cleanly."""

    def __init__(self):
        self.requested: str | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def logged_steps(cfg):
    """The steps `vgrad run` measures: step 0, every log.every, and the last one."""
    every, steps = cfg.log.every, cfg.train.steps
    return lambda step: step % every == 0 or step == steps


def train(cfg, tr: Trainer, mon: Monitor, stop: StopSignals | None = None, until: int | None = None,
          replay_after: int | None = None) -> tuple[str, int]:
    """Steps 0 .. train.steps (or `until`), measured through `mon`. Returns the run's status and its
    last step. replay_after: a replay (below), which writes the steps after this one."""
    steps, eval_every = cfg.train.steps, cfg.log.eval_every
    step = 0
    for step in range(steps + 1 if until is None else until + 1):
        if stop is not None and stop.requested:
            return V.INTERRUPTED, step
        tr.schedule(step)
        x, y = tr.batch()
        out = tr.model(x)
        loss = tr.loss_fn(out, y)
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        mon.step(loss)                 # a logged step's gradients: before clipping
        tr.clip()
        if mon.measuring:              # a logged step: its batch accuracy, and held-out figures
            mon.log_metrics(**tr.batch_metrics(out, y))
            if replay_after is None and (step % eval_every == 0 or step == steps):
                mon.log_metrics(**tr.evaluate())  # step s's model: s updates, like its rows
        if step == steps:
            mon.finish_step()          # measured, not followed by an update
            break
        if replay_after is not None and step > replay_after:
            mon.finish_step()          # a replayed step is written as measured, before its update
        tr.optimizer.step()            # the Monitor's optimizer hooks: update_ratio, the clipped norm
        if mon.diverged_step is not None:
            return V.DIVERGED, step
    return (V.DIVERGED if mon.diverged_step is not None else V.COMPLETED), step


def replay(cfg, task, device, mon: Monitor, detected: int) -> None:
    """Train the run again from its seed up to `detected`, the logged step that found its first
    non-finite loss, writing the step before it and that step through the same recording. Steps up to the last one
    written are measured exactly as the first time (a recurrent net's logged steps run unfused
    cells, which round differently) and not written again. The non-finite step, measured, names the
    module where the first NaN or infinity appeared (summary.json's first_nonfinite). Should the replay's rounding move the
    blow-up, every step from then on is written until it comes. Costs one run up to that step, paid
    only by a run that diverged."""
    rec = mon.recording
    first_bad, last_written = rec.diverged_step, rec.last_written
    start = max(last_written + 1, first_bad - 1)
    original = logged_steps(cfg)
    tr = Trainer(cfg, task, device)
    again = Monitor(tr.model, tr.optimizer, every=lambda s: original(s) if s <= last_written else s >= start,
                    on_problem=None, activations=cfg.log.activations, plots=False, every_step=False, recording=rec)
    found = rec.first_nonfinite  # from a later step; the replay measures the step itself: the module
    rec.diverged_step, rec.first_nonfinite = None, None  # found again, where this training finds them
    try:
        train(cfg, tr, again, until=detected, replay_after=last_written)
    finally:
        again.remove()
    if rec.diverged_step is None:  # the replay stayed finite up to the step that first showed it: keep that step
        rec.diverged_step = first_bad
    rec.first_nonfinite = rec.first_nonfinite or found


def step0(cfg, task, device, dtype=torch.float32) -> tuple[list[dict], list[dict]]:
    """(layers.csv rows, time.csv rows) of step 0 alone: the initial weights and the first batch,
    one measured forward/backward, no update (the float64 step 0; the init spread's seeds)."""
    tr = Trainer(cfg, task, device, dtype)
    probe = LayerProbe(tr.model, None, cfg.log.activations)
    probe.attach()
    x, y = tr.batch()
    tr.loss_fn(tr.model(x), y).backward()
    probe.after_backward()
    tr.clip()
    probe.after_clip(clipped=tr.clip_norm is not None or tr.clip_value is not None)
    host = probe.to_host({})
    return probe.rows(0, host), probe.time_rows(0, host)


def float64_step0(cfg, task, device) -> list[dict]:
    """Step 0 measured again in float64: the same initial weights and the same first batch, converted
    exactly to float64, one forward/backward. Where float32 underflows (a deep sigmoid net's early
    layers: delta below 1e-38, or exactly 0), these rows hold the true values. Training never uses it."""
    return step0(cfg, task, device, torch.float64)[0]
