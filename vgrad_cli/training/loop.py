"""The training loop. Measures through a LayerProbe on logged steps only.

Step s: forward/backward on batch s (the model has had s updates), measure if s is logged, then
update. Step `steps` is measured but not followed by an update, so the last logged row shows the
trained model. Steps that are not logged do no host synchronisation at all: their losses go into a
small device buffer that is read (and checked for non-finite values) at the next logged step.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..activations import ACTIVATIONS
from ..analysis.verdict import FLOAT64_INIT_BELOW
from ..errors import UsageError
from ..models import build_model
from ..measure.probes import LAYER_COLUMNS, TIME_COLUMNS, LayerProbe
from ..rundir.files import METRIC_COLUMNS, RunWriter
from ..tasks.losses import LOSSES

OPTIMIZERS = {
    "sgd": lambda params, t: torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay),
    "adam": lambda params, t: torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay),
    "rmsprop": lambda params, t: torch.optim.RMSprop(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay),
}


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


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


@dataclass
class TrainResult:
    status: str = "running"            # completed | diverged | interrupted
    steps_completed: int = 0           # optimizer updates applied
    diverged_step: int | None = None
    stop_signal: str | None = None
    first_rows: list = field(default_factory=list)   # layers.csv rows of the first logged step
    last_rows: list = field(default_factory=list)    # ... and of the last one written
    first_time: list = field(default_factory=list)   # time.csv rows of the first/last logged step
    last_time: list = field(default_factory=list)
    last_metrics: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)
    grad_total_first: float | None = None
    grad_total_max: float | None = None
    first_float64: list = field(default_factory=list)  # step 0 measured again in float64 (layers_float64.csv)


def train(cfg, task, writer: RunWriter, on_log: Callable | None = None) -> TrainResult:
    device = resolve_device(cfg.train.device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.train.cpu_threads > 0:
        # Small models gain little from intra-op threads, and OpenMP's spinning threads collapse
        # when another process shares the cores (measured on 2 cores: 60x slower with 2 threads).
        torch.set_num_threads(cfg.train.cpu_threads)
    try:
        return _train(cfg, task, writer, on_log, device)
    finally:
        torch.set_num_threads(threads)


class _Trainer:
    """A model, its optimizer and its batch stream, built from the config's seed. Building it twice
    gives the same run (CPU determinism): that is what lets a diverged run be replayed up to the
    step that went non-finite, so its last rows are measured whatever log.every says."""

    def __init__(self, cfg, task, device, dtype=torch.float32):
        self.task, self.device, self.dtype = task, device, dtype
        self.model = build_model(cfg.model, task, cfg.seed).to(device, dtype)
        self.model.train()
        self.initial_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.optimizer = OPTIMIZERS[cfg.train.optimizer](self.model.parameters(), cfg.train)
        self.loss_fn = LOSSES[task.loss]
        self.classify = task.loss == "cross_entropy"
        # lstm/gru have no activation key: their hidden state lies in (-1, 1) like tanh's output
        self.probe = LayerProbe(self.model, ACTIVATIONS[cfg.model.activation or "tanh"], cfg.log.activations)
        self.params = list(self.model.parameters())
        self.clip_norm, self.clip_value = cfg.train.clip_norm, cfg.train.clip_value
        self.batch_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.batch = cfg.train.batch_size  # sampled with replacement: any size works
        self.lr, self.warmup = cfg.train.lr, cfg.train.warmup_steps

    def schedule(self, step: int):
        """The learning rate of step `step`'s update (metrics.csv's lr): linear warm-up from
        lr/warmup_steps to lr over the first warmup_steps updates (Goyal et al. 2017; Xiong et al.
        2020: what a Post-LN Transformer needs), then lr."""
        if step < self.warmup:  # afterwards the groups keep lr: nothing to do per step
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * min(1.0, (step + 1) / self.warmup)

    def forward_backward(self, logged: bool):
        """One batch: loss, gradients, clipping; measured (before and after clipping) if logged."""
        idx = torch.randint(len(self.task.x_train), (self.batch,), generator=self.batch_gen)
        idx = idx.to(self.device, non_blocking=True)
        x, y = self.task.x_train[idx], self.task.y_train[idx]
        if self.dtype != torch.float32:  # float64_step0: the same batch, converted exactly
            x, y = x.to(self.dtype), (y.to(self.dtype) if y.is_floating_point() else y)
        if logged:
            self.probe.attach()
        out = self.model(x)
        loss = self.loss_fn(out, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if logged:
            self.probe.after_backward()
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm, foreach=True)
        elif self.clip_value is not None:
            torch.nn.utils.clip_grad_value_(self.params, self.clip_value, foreach=True)
        if logged:
            self.probe.after_clip(clipped=self.clip_norm is not None or self.clip_value is not None)
        return out, y, loss

    def update(self, logged: bool):
        if logged:
            self.probe.before_update()
        self.optimizer.step()
        if logged:
            self.probe.after_update()

    def evaluate(self) -> dict:
        """Held-out loss (and accuracy) of the model as it is now: before the step's update."""
        return evaluate(self.model, self.task, self.loss_fn, self.classify)

    def measured(self, out, y, loss, recent, evaluated: dict | None = None) -> dict:
        """A logged step's statistics on the host, in one transfer."""
        extra = {"loss": loss.detach(), "recent_losses": recent, **(evaluated or {})}
        if self.classify:
            extra["accuracy"] = (out.detach().argmax(-1) == y).float().mean()
        return self.probe.to_host(extra)


def _train(cfg, task, writer: RunWriter, on_log, device) -> TrainResult:
    task = task.to(device)
    tr = _Trainer(cfg, task, device)
    layers_csv = writer.table("layers.csv", LAYER_COLUMNS)
    metrics_csv = writer.table("metrics.csv", METRIC_COLUMNS)
    # time.csv: only models that record hidden states through time (models/__init__.py: the recurrent ones)
    time_csv = writer.table("time.csv", TIME_COLUMNS) if hasattr(tr.model, "recorder") else None

    steps, every, eval_every = cfg.train.steps, cfg.log.every, cfg.log.eval_every
    loss_buf = torch.zeros(every, device=device)  # losses of the steps since the last log
    pending = 0
    result = TrainResult()
    t0 = time.perf_counter()

    def is_logged(step: int) -> bool:
        return step % every == 0 or step == steps

    def write(step: int, trainer: _Trainer, host: dict, do_eval: bool) -> list[dict]:
        """One logged step's rows into the tables and the result; returns its layers.csv rows."""
        rows = trainer.probe.rows(step, host)
        metrics = {
            "step": step, "loss": host["loss"], "accuracy": host.get("accuracy"),
            "grad_norm_total": host["grad_norm_total"], "grad_norm_clipped": host["grad_norm_clipped"],
            "eval_loss": host.get("eval_loss"), "eval_accuracy": host.get("eval_accuracy"),
            "lr": trainer.optimizer.param_groups[0]["lr"], "time_s": round(time.perf_counter() - t0, 4),
        }
        time_rows = trainer.probe.time_rows(step, host)
        layers_csv.append(rows)
        metrics_csv.append([metrics])
        if time_csv is not None:
            time_csv.append(time_rows)
        if not math.isfinite(host["loss"]):
            return rows  # the step that went non-finite: in the tables, not in the summary's figures
        if not result.first_rows:
            result.first_rows, result.grad_total_first = rows, metrics["grad_norm_total"]
            result.first_time = time_rows
        result.last_rows, result.last_metrics, result.last_time = rows, metrics, time_rows
        result.grad_total_max = max(result.grad_total_max or 0.0, metrics["grad_norm_total"])
        if do_eval:
            result.last_eval = {"eval_loss": metrics["eval_loss"], "eval_accuracy": metrics["eval_accuracy"]}
        if on_log is not None:
            on_log(step, metrics, rows)
        return rows

    with StopSignals() as stop:
        last_written = -1
        for step in range(steps + 1):
            if stop.requested:
                result.status, result.stop_signal = "interrupted", stop.requested
                result.steps_completed = step
                break
            logged = is_logged(step)
            tr.schedule(step)
            out, y, loss = tr.forward_backward(logged)
            if not logged:
                loss_buf[pending] = loss.detach()
                pending += 1
            do_eval = logged and (step % eval_every == 0 or step == steps)
            evaluated = tr.evaluate() if do_eval else None  # step s's model: s updates, like its rows
            if step < steps:
                tr.update(logged)
            if not logged:
                continue

            # ---- a logged step: one host transfer, then the tables -------------------------------
            host = tr.measured(out, y, loss, loss_buf[:pending], evaluated)
            pending = 0
            bad = [i for i, v in enumerate(host["recent_losses"] + [host["loss"]]) if not math.isfinite(v)]
            if bad:
                # The first non-finite loss since the previous logged step: rows before it stay, and
                # the last finite step and the non-finite one are measured and written too.
                first_bad = step - len(host["recent_losses"]) + bad[0]
                if first_bad == step and step - 1 <= last_written:
                    write(step, tr, host, False)  # already measured: nothing to replay
                    diverged = step
                else:
                    diverged = _replay(cfg, task, device, is_logged, last_written, first_bad, step, write)
                result.status, result.diverged_step = "diverged", diverged
                result.steps_completed = diverged
                break
            write(step, tr, host, do_eval)
            last_written = step
            result.steps_completed = min(step + 1, steps)
        else:
            result.status = "completed"
    first = result.first_rows
    if first and first[0]["step"] == 0 and (cfg.log.float64_init or any(
            r.get(c) is not None and r[c] < FLOAT64_INIT_BELOW for r in first for c in ("grad_norm", "delta_norm"))):
        result.first_float64 = float64_step0(cfg, task, device)
        writer.table("layers_float64.csv", LAYER_COLUMNS).append(result.first_float64)
    if result.status != "diverged":
        # The trained weights (and the initial ones) let `vgrad diagnose` re-run probes later,
        # e.g. re-initialising early layers to see whether the network relies on them.
        torch.save({"final": tr.model.state_dict(), "init": tr.initial_state}, writer.path / "model.pt")
    return result


def step0(cfg, task, device, dtype=torch.float32) -> tuple[list[dict], list[dict]]:
    """(layers.csv rows, time.csv rows) of step 0 alone: the initial weights and the first batch,
    one measured forward/backward, no update (float64_step0; the init spread's seeds)."""
    tr = _Trainer(cfg, task, device, dtype)
    out, y, loss = tr.forward_backward(True)
    host = tr.measured(out, y, loss, torch.zeros(0, device=device))
    return tr.probe.rows(0, host), tr.probe.time_rows(0, host)


def float64_step0(cfg, task, device) -> list[dict]:
    """Step 0 measured again in float64: the same initial weights and the same first batch, converted
    exactly to float64, one forward/backward. Where float32 underflows (a deep sigmoid net's early
    layers: delta below 1e-38, or exactly 0), these rows hold the true values. Training never uses it."""
    return step0(cfg, task, device, torch.float64)[0]


def _replay(cfg, task, device, is_logged, last_written: int, first_bad: int, detected: int, write) -> int:
    """Train again from the seed up to the first non-finite loss, measuring and writing the step
    before it and that step. Steps up to the last written one are measured exactly as the first
    time (a recurrent net's logged steps run unfused cells, which round differently) and not written
    again. Should the replay's rounding move the blow-up, every step from then on is written until
    it comes. Returns the step whose loss went non-finite. Costs one run up to that step, paid
    only by a run that diverged."""
    tr = _Trainer(cfg, task, device)
    start = max(last_written + 1, first_bad - 1)
    nothing = torch.zeros(0, device=device)
    for step in range(detected + 1):
        logged = is_logged(step) if step <= last_written else step >= start
        tr.schedule(step)
        out, y, loss = tr.forward_backward(logged)
        if step > last_written and logged:
            host = tr.measured(out, y, loss, nothing)
            write(step, tr, host, False)
            if not math.isfinite(host["loss"]):
                return step
        tr.update(logged)
    return first_bad  # the replay stayed finite up to the step that first showed it: keep that step


@torch.no_grad()
def evaluate(model, task, loss_fn, classify: bool) -> dict:
    """Loss (and accuracy) on the fixed held-out set, in eval mode (batch norm uses running stats)."""
    model.eval()
    out = model(task.x_eval)
    model.train()
    res = {"eval_loss": loss_fn(out, task.y_eval)}
    if classify:
        res["eval_accuracy"] = (out.argmax(-1) == task.y_eval).float().mean()
    return res
