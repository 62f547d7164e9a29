"""What every task hands to the trainer, and the keys every task shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class TaskBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Which model kinds can take this task's inputs (an MLP takes vectors, an RNN sequences).
    model_kinds: ClassVar[tuple[str, ...]] = ("mlp",)

    name: str  # each task narrows this to Literal["<its name>"]: the tag of the task union

    train_size: int = Field(8192, ge=1, description="examples in the fixed training set")
    eval_size: int = Field(1024, ge=1, description="examples in the fixed held-out evaluation set")

    def make(self, seed: int) -> "TaskData":
        import torch

        g = torch.Generator().manual_seed(seed)
        x, y = self.generate(self.train_size + self.eval_size, g)
        n = self.train_size
        return self.finish(x[:n], y[:n], x[n:], y[n:])

    def generate(self, n: int, g) -> tuple[Any, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self, xt, yt, xe, ye) -> "TaskData":  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class TaskData:
    x_train: Any            # torch tensors; classification targets are int64 class indices
    y_train: Any
    x_eval: Any
    y_eval: Any
    input_dim: int
    output_dim: int
    loss: str               # "cross_entropy" (classification) or "mse" (regression)
    baseline_loss: float    # loss of the best input-blind prediction on the eval set
    chance_accuracy: float | None  # accuracy of always predicting the majority class; None for regression
    output_steps: int = 1   # sequence tasks: targets on this many final time steps

    def to(self, device) -> "TaskData":
        for k in ("x_train", "y_train", "x_eval", "y_eval"):
            setattr(self, k, getattr(self, k).to(device))
        return self


def classification(xt, yt, xe, ye, n_classes: int) -> TaskData:
    """TaskData for a classification task; baseline = cross-entropy of the class frequencies."""
    import math

    import torch

    freq = torch.bincount(yt, minlength=n_classes).double() / len(yt)
    eval_freq = torch.bincount(ye, minlength=n_classes).double() / len(ye)
    baseline = float(-(eval_freq * freq.clamp_min(1e-12).log()).sum())
    chance = float(eval_freq[freq.argmax()])
    assert math.isfinite(baseline)
    return TaskData(xt, yt, xe, ye, xt.shape[-1], n_classes, "cross_entropy", baseline, chance)



def regression(xt, yt, xe, ye) -> TaskData:
    """TaskData for regression; baseline = MSE of predicting the training mean."""
    baseline = float(((ye - yt.mean(0)) ** 2).mean())
    return TaskData(xt, yt, xe, ye, xt.shape[-1], yt.shape[-1], "mse", baseline, None)
