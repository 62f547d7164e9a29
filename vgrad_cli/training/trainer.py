"""What `vgrad run` builds from a config: the model, its optimizer, the loss, the batch stream, the
clipping and the learning-rate schedule. Building it twice from one config gives the same run (CPU
determinism): that is what lets a diverged run be replayed, and step 0 of any seed be measured
exactly as that seed's run measures it."""

from __future__ import annotations

import torch

from ..errors import UsageError
from ..models import build_model
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


class Trainer:
    def __init__(self, cfg, task, device, dtype=torch.float32):
        """task: already on `device`. dtype: float64 re-measures step 0 exactly in double precision."""
        self.task, self.device, self.dtype = task, device, dtype
        self.model = build_model(cfg.model, task, cfg.seed).to(device, dtype)
        self.model.train()
        self.initial_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.optimizer = OPTIMIZERS[cfg.train.optimizer](self.model.parameters(), cfg.train)
        self.loss_fn = LOSSES[task.loss]
        self.classify = task.loss == "cross_entropy"
        self.params = list(self.model.parameters())
        self.clip_norm, self.clip_value = cfg.train.clip_norm, cfg.train.clip_value
        self.batch_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.batch_size = cfg.train.batch_size  # sampled with replacement: any size works
        self.lr, self.warmup = cfg.train.lr, cfg.train.warmup_steps

    def schedule(self, step: int):
        """The learning rate of step `step`'s update (metrics.csv's lr): linear warm-up from
        lr/warmup_steps to lr over the first warmup_steps updates (Goyal et al. 2017; Xiong et al.
        2020: what a Post-LN Transformer needs), then lr."""
        if step < self.warmup:  # afterwards the groups keep lr: nothing to do per step
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * min(1.0, (step + 1) / self.warmup)

    def batch(self):
        idx = torch.randint(len(self.task.x_train), (self.batch_size,), generator=self.batch_gen)
        idx = idx.to(self.device, non_blocking=True)
        x, y = self.task.x_train[idx], self.task.y_train[idx]
        if self.dtype != torch.float32:  # float64 step 0: the same batch, converted exactly
            x, y = x.to(self.dtype), (y.to(self.dtype) if y.is_floating_point() else y)
        return x, y

    def clip(self):
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm, foreach=True)
        elif self.clip_value is not None:
            torch.nn.utils.clip_grad_value_(self.params, self.clip_value, foreach=True)

    def batch_metrics(self, out, y) -> dict:
        """The training batch's accuracy (a device tensor: read with the logged step's statistics)."""
        return {"accuracy": (out.detach().argmax(-1) == y).float().mean()} if self.classify else {}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Loss (and accuracy) on the fixed held-out set, in eval mode (batch norm uses running stats),
        of the model as it is now (before the step's update); device tensors."""
        self.model.eval()
        out = self.model(self.task.x_eval)
        self.model.train()
        res = {"eval_loss": self.loss_fn(out, self.task.y_eval)}
        if self.classify:
            res["eval_accuracy"] = (out.argmax(-1) == self.task.y_eval).float().mean()
        return res
