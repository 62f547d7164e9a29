"""Monitor's options that can be wrong before there is a model, checked when it (or a framework
callback) is made: one clear message, before a run directory exists."""

from __future__ import annotations

import numbers
import re

from .. import vocab as V
from ..measure.distributed import clean_name

ON_PROBLEM = ("warn", "raise", None)
_METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]*")


def check_options(every, on_problem, layers, budget: float = 0.03) -> None:
    """Monitor's options that can be wrong before there is a model (framework callbacks check them
    when they are made, not at the start of training)."""
    if not callable(every) and every != "auto" and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise ValueError(f"every must be an integer >= 1, \"auto\" or a function step -> bool, got {every!r}")
    if not isinstance(budget, (int, float)) or not 0 < budget < 1:
        raise ValueError(f"budget must be a fraction of the training time, 0 < budget < 1 (0.03: 3 %), got {budget!r}")
    if on_problem not in ON_PROBLEM:
        raise ValueError(f"on_problem must be 'warn', 'raise' or None, got {on_problem!r}")
    if layers is not None and not isinstance(layers, (list, tuple, dict)):
        raise ValueError("layers must be a list of module names or a {row name: [module names]} dict")


def check_values(optimizer, name, steps, clip_norm, clip_value, **flags) -> None:
    """The rest of Monitor's arguments, each with what is allowed: a mistake is one ValueError (or
    TypeError) now, not a traceback at close()."""
    import torch

    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer (or None), got {type(optimizer).__name__}")
    if name is not None and (not isinstance(name, str) or not name or any(c in name for c in "/\\\0")):
        raise ValueError(f"name must be a non-empty text without '/' or '\\' (the run directory's name), got {name!r}")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 0):
        raise ValueError(f"steps must be a whole number >= 0 (the planned number of steps) or None, got {steps!r}")
    for key, value in (("clip_norm", clip_norm), ("clip_value", clip_value)):
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0):
            raise ValueError(f"{key} must be a positive number (the clipping your loop applies) or None, got {value!r}")
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be True or False, got {value!r}")


def check_names(model, layers):
    """Every name in layers= must be a module of the model, or a prefix of some: else ValueError now,
    before a run directory exists, not at the first step. Returns layers."""
    names = [clean_name(n) for n, _ in model.named_modules() if clean_name(n)]
    wanted = [p for v in layers.values() for p in ([v] if isinstance(v, str) else v)] if isinstance(layers, dict) else list(layers)
    for w in wanted:
        if not any(n == w or n.startswith(str(w).rstrip(".") + ".") for n in names):
            close = [n for n in names if str(w) in n][:5] or names[:8]
            raise ValueError(f"layers: {w!r} is not a module of {type(model).__name__}; modules are named like: "
                             + ", ".join(close))
    return layers


def plain_number(value):
    """A NumPy scalar (np.float32(0.3), np.int64(2): one number, as sklearn and np.mean give them)
    as a Python float; anything else unchanged."""
    if isinstance(value, numbers.Real) and not isinstance(value, (int, float)):
        return float(value)
    return value


def checked_figures(values: dict) -> dict:
    """Monitor.log_metrics' figures: names that can be metrics.csv columns, values that are numbers
    or one-element tensors (detached, 0-d)."""
    import torch

    figures = {}
    for key, value in values.items():
        value = plain_number(value)  # NumPy's float32, int64: one number
        if not _METRIC_NAME.fullmatch(key) or key in V.MEASURED_METRICS:
            raise ValueError(f"log_metrics: {key!r} cannot be a metrics.csv column (vgrad measures "
                             f"{', '.join(V.MEASURED_METRICS)}; a name is letters, digits, _ . - /)")
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"log_metrics: {key} must be one number, got a tensor of shape {tuple(value.shape)}")
            value = value.detach().reshape(())
        elif value is not None and not isinstance(value, (int, float)):
            raise ValueError(f"log_metrics: {key} must be a number or a one-element tensor, "
                             f"not {type(value).__name__}")
        figures[key] = value
    return figures
