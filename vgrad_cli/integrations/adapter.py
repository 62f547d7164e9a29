"""What the framework callbacks share: Monitor's options, checked when the callback is made, and
one Monitor per training run, started at train start and closed at train end or on an exception."""

from __future__ import annotations

import torch

from ..monitor.monitor import Monitor, check_options
from .. import vocab as V


class MonitorAdapter:
    def __init__(self, out="runs", name: str | None = None, every: int = 10, on_problem: str | None = "warn",
                 layers=None, activations: bool = True, plots: bool = True, log_to=None, log_modules: bool = False):
        """As Monitor's keywords (name: the model's class by default). log_to may also be, or hold,
        "trainer": the trackers the framework's Trainer logs to (each callback says which)."""
        check_options(every, on_problem, layers)
        self.options = {"out": out, "name": name, "every": every, "on_problem": on_problem, "layers": layers,
                        "activations": activations, "plots": plots, "log_to": log_to, "log_modules": log_modules}
        self.monitor: Monitor | None = None

    @property
    def path(self):
        """The run directory of the current (or last) training run; None before one starts."""
        return self.monitor.path if self.monitor is not None else None

    def start(self, model, optimizer, steps: int | None, clip_norm: float | None = None,
              clip_value: float | None = None, scaler=None, trainer_sinks=()):
        """A Monitor for one training run; clip_*: the framework's own clipping (into config.yaml);
        scaler: the framework's loss scaler (fp16 mixed precision), whose scale is divided out;
        trainer_sinks: what log_to="trainer" stands for in this framework."""
        self.close(V.FAILED)  # a previous run that ended without the framework saying so
        log_to = self.options["log_to"]
        items = log_to if isinstance(log_to, (list, tuple)) else [log_to] if log_to is not None else []
        items = [s for item in items for s in (trainer_sinks if item == "trainer" else [item])]
        self.monitor = Monitor(model, optimizer=innermost(optimizer), steps=steps, clip_norm=clip_norm,
                               clip_value=clip_value, scaler=scaler, **{**self.options, "log_to": items or None})

    def close(self, status: str | None = None):
        if self.monitor is not None:
            self.monitor.close(status)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        """`with callback: trainer.train()` ends the run as Monitor's own `with` does: completed (or
        diverged) after a GradientProblem, else interrupted or failed."""
        if self.monitor is not None:
            self.monitor.__exit__(exc_type, exc, tb)
        return False


def innermost(optimizer):
    """The torch optimizer under a framework's wrappers (accelerate's AcceleratedOptimizer does not run
    the step hooks registered on itself, only those of the optimizer it wraps)."""
    while optimizer is not None and isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
