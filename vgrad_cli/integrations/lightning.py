"""VgradCallback: vgrad's Monitor as a Lightning Callback (`pip install vgrad[lightning]`).

    from vgrad_cli.integrations.lightning import VgradCallback
    trainer = lightning.Trainer(max_steps=1000, gradient_clip_val=1.0,
                                callbacks=[VgradCallback(out="runs", every=10)])
    trainer.fit(model, loader)       # runs/<LightningModule class>-<date>-<time>-<id>/

Where it measures. Lightning runs each optimizer step as training_step, backward
(`on_before_backward`, `on_after_backward`), `on_before_optimizer_step`, gradient clipping
(`gradient_clip_val`), then the update (Precision._after_closure, inside optimizer.step(closure)).
The callback measures in `on_before_optimizer_step`: grad_norm, delta_norm and grad_norm_total are
the gradients BEFORE Lightning's clipping (under "16-mixed" already unscaled: the precision plugin's
GradScaler, whose scale and skipped steps go into metrics.csv); grad_norm_clipped in
metrics.csv is the norm AFTER it, taken by the optimizer's step hook when the closure returns,
together with the update ratio. Steps are optimizer steps (trainer.global_step): with
`accumulate_grad_batches=k` the measured gradient is the one accumulated over k batches, and the loss
is training_step's on the last of them. With several optimizers (manual optimization) each step of
any of them counts and no update ratio is recorded. Validation passes are not recorded.

log_to="trainer": each logged step's figures go to every logger the Trainer has (trainer.loggers:
CSVLogger, TensorBoardLogger, WandbLogger, MLFlowLogger, ...) through its log_metrics, at
trainer.global_step (= vgrad's step); the warnings and the verdict as text where the logger's
experiment takes text (TensorBoard, W&B, MLflow).
"""

from __future__ import annotations

try:
    from lightning.pytorch import Callback
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("vgrad's Lightning callback needs lightning: pip install 'vgrad[lightning]'") from e

from .adapter import MonitorAdapter


class VgradCallback(MonitorAdapter, Callback):
    """VgradCallback(out="runs", name=None, every=10, on_problem="warn", layers=None, activations=True,
    plots=True): Monitor's keywords; the run directory is `callback.path`. Records the gradients
    before Lightning's gradient clipping (and the norm after it in grad_norm_clipped)."""

    _loss = None

    def on_train_start(self, trainer, pl_module):
        optimizers = trainer.optimizers
        clip = trainer.gradient_clip_val or None
        by_value = str(getattr(trainer, "gradient_clip_algorithm", "norm")).lower().endswith("value")
        from ..trackers.sinks import LoggerSink

        self.start(pl_module, optimizers[0] if len(optimizers) == 1 else None,
                   trainer.max_steps if trainer.max_steps > 0 else None,
                   clip_norm=None if by_value else clip, clip_value=clip if by_value else None,
                   scaler=getattr(trainer.precision_plugin, "scaler", None),  # "16-mixed": skipped steps, the scale
                   trainer_sinks=[LoggerSink(logger) for logger in trainer.loggers])
        self._loss = None

    def on_before_backward(self, trainer, pl_module, loss):
        self._loss = _unscaled(trainer, pl_module, loss.detach())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.monitor is not None:
            self.monitor.step(self._loss)

    def on_train_end(self, trainer, pl_module):
        self.close()

    def on_exception(self, trainer, pl_module, exception):
        self.__exit__(type(exception), exception, exception.__traceback__)


def _unscaled(trainer, pl_module, loss):
    """training_step's loss from the one backward receives: Lightning divides it by
    accumulate_grad_batches (automatic optimization) and a 16-bit GradScaler multiplies it."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is not None and scaler.is_enabled():
        loss = loss / getattr(scaler, "_get_scale_async", scaler.get_scale)()  # the device tensor: no sync
    if pl_module.automatic_optimization:
        loss = loss * trainer.accumulate_grad_batches
    return loss
