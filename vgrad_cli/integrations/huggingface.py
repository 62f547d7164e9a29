"""VgradCallback: vgrad's Monitor as a Hugging Face `transformers.TrainerCallback`
(`pip install vgrad[huggingface]`).

    from vgrad_cli.integrations.huggingface import VgradCallback
    vgrad = VgradCallback(out="runs", every=10)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[vgrad])
    with vgrad:                      # ends the run as interrupted/failed if train() raises
        trainer.train()              # runs/<model class>-<date>-<time>-<id>/

Where it measures. The Trainer runs each optimizer step as forward and backward per micro-batch
(`on_substep_end` between them), then clips to `max_grad_norm` (1.0 by default), then
`on_pre_optimizer_step`, the update, `on_optimizer_step`, `on_step_end`. No callback comes between
the last backward and the clipping, so on logged steps the callback measures at the end of each
backward pass itself (a post-accumulate-grad hook on every trainable parameter, armed in
`on_step_begin` of logged steps only, queues the measurement for the end of that backward): grad_norm,
delta_norm and grad_norm_total are the gradients BEFORE the Trainer's clipping; grad_norm_clipped in
metrics.csv is the norm AFTER it (the optimizer's step hook), with the update ratio. Steps are
optimizer steps (state.global_step): with `gradient_accumulation_steps=k` the measured gradient is the
one accumulated over the k micro-batches. Under fp16 (accelerate's GradScaler, held by the
AcceleratedOptimizer) the gradients are measured scaled and recorded divided by the scale; the scale
and the steps the scaler skipped go into metrics.csv. The loss is the one the Trainer logs for that
step (its `state.log_history` with logging_steps=1): the model output's `loss` summed over the step's
micro-batches when the forward received `num_items_in_batch` (the model then divided by the whole
accumulated batch's token count, so each micro-batch's loss is a share of the step's), else their
mean (the Trainer divides a per-micro-batch mean by k before its backward). None when the Trainer
computes the loss itself (label smoothing, `compute_loss_func`); a non-finite micro-batch loss stays
in it (the Trainer's log filters it out, vgrad reads it as the divergence). Evaluation passes are not
recorded. The Trainer has no exception callback: use `with vgrad:` (or call
`vgrad.close("failed")`) so that an exception does not leave the run's status "running".

log_to="trainer": each logged step's figures go into the Trainer's `state.log_history` (at vgrad's
step, the batch before update step+1) and to the trackers of `args.report_to` that vgrad knows:
W&B's and MLflow's runs (which the Trainer's own callbacks start before this one's on_train_begin)
and TensorBoard, in <TENSORBOARD_LOGGING_DIR, else output_dir/runs>/vgrad-<time>. A callback cannot
reach the Trainer's other integrations (it is handed no Trainer): they are named in a warning.
"""

from __future__ import annotations

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("vgrad's Hugging Face callback needs transformers: pip install 'vgrad[huggingface]'") from e

import os
import sys
import time
from pathlib import Path

import torch

from ..measure.hooks import Hooks
from .adapter import MonitorAdapter


class VgradCallback(MonitorAdapter, TrainerCallback):
    """VgradCallback(out="runs", name=None, every=10, on_problem="warn", layers=None, activations=True,
    plots=True): Monitor's keywords; the run directory is `callback.path`. Records the gradients
    before the Trainer's clipping to max_grad_norm (and the norm after it in grad_norm_clipped)."""

    _model = _loss_sum = None
    _queued = _per_item = False
    _micro = 0
    _hooks = _grad_hooks = Hooks()

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._remove_hooks()
        self.start(model, optimizer, state.max_steps if state.max_steps > 0 else None,
                   clip_norm=args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None,
                   scaler=getattr(optimizer, "scaler", None),  # accelerate's, under fp16 on an accelerator
                   trainer_sinks=trainer_sinks(args, state) if _wants_trainer(self.options["log_to"]) else ())
        self._model, self._queued = model, False
        self._new_step()
        self._hooks = Hooks([model.register_forward_hook(self._take_loss, with_kwargs=True)])

    def on_step_begin(self, args, state, control, **kwargs):
        if self.monitor is not None and self.monitor.measuring:
            self._grad_hooks = Hooks(p.register_post_accumulate_grad_hook(self._grad_ready)
                                     for p in self._model.parameters() if p.requires_grad)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.monitor is not None and not self.monitor.measuring:
            self.monitor.step(self._loss())  # a step that is not logged: its loss, kept for the non-finite check

    def on_step_end(self, args, state, control, **kwargs):
        self._grad_hooks.remove()
        self._new_step()

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hooks()
        self.close()

    # ------------------------------------------------------------------ internals
    def _new_step(self):
        self._loss_sum, self._micro, self._per_item = None, 0, False

    def _take_loss(self, module, args, kwargs, output):
        """Each training forward of the step: its loss added on the device (no host synchronisation)."""
        if not torch.is_grad_enabled():  # an evaluation, not a training forward
            return
        loss = output.get("loss") if hasattr(output, "get") else None
        if not isinstance(loss, torch.Tensor):
            self._loss_sum, self._micro = None, -1  # a micro-batch without its loss: the step's is unknown
            return
        if self._micro >= 0:
            loss = loss.detach().reshape(-1)[0].float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._micro += 1
            self._per_item = self._per_item or kwargs.get("num_items_in_batch") is not None

    def _loss(self):
        """The step's loss as the Trainer logs it (so far, on a measured step's earlier micro-batches)."""
        if self._loss_sum is None or self._micro <= 0:
            return None
        return self._loss_sum if self._per_item else self._loss_sum / self._micro

    def _grad_ready(self, param):
        if not self._queued:  # the first parameter whose gradient is complete: measure when this backward ends
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)

    def _backward_done(self):
        self._queued = False
        self.monitor.step(self._loss())

    def _remove_hooks(self):
        self._grad_hooks.remove()
        self._hooks.remove()


# ---------------------------------------------------------------------------------------- log_to="trainer"
class HistorySink:
    """The Trainer's state.log_history: one entry per logged step, {tag: value, ..., "step": step}."""

    def __init__(self, state):
        self.state = state

    def log(self, step: int, scalars: dict) -> None:
        self.state.log_history.append({**scalars, "step": step})

    def text(self, step: int, tag: str, text: str) -> None:
        self.state.log_history.append({tag: text, "step": step})

    def close(self) -> None:
        pass


def _wants_trainer(log_to) -> bool:
    return log_to == "trainer" or isinstance(log_to, (list, tuple)) and "trainer" in log_to


def trainer_sinks(args, state) -> list:
    """What log_to="trainer" stands for: the log history and the report_to trackers vgrad knows."""
    from ..trackers.sinks import MlflowSink, TensorBoardSink, WandbSink

    sinks, unknown = [HistorySink(state)], []
    for name in args.report_to or []:
        if name == "tensorboard":
            root = Path(os.getenv("TENSORBOARD_LOGGING_DIR") or Path(args.output_dir) / "runs")
            sinks.append(TensorBoardSink(root / time.strftime("vgrad-%Y%m%d-%H%M%S")))
        elif name == "wandb":
            sinks.append(WandbSink())
        elif name == "mlflow":
            sinks.append(MlflowSink())
        elif name != "codecarbon":  # an emissions tracker, not a place for figures
            unknown.append(name)
    if unknown:
        print(f"vgrad: log_to='trainer' sends to the log history, tensorboard, wandb and mlflow; not to "
              f"{', '.join(unknown)} (a callback is not handed the Trainer that reports to them)", file=sys.stderr)
    return sinks
