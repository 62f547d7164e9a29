"""What waits for the next logged step: the every-step tier of the steps in between — their losses,
total gradient norms before and after clipping, learning rates (kept on the device: no work and no
host synchronisation before; checked there for a non-finite value) —, the steps a loss scaler
skipped, and the figures the user logged on them (Monitor.log_metrics)."""

from __future__ import annotations

import torch

from ..measure.distributed import local
from ..measure.finite import total_norm


class LossBuffer:
    """The losses of the steps between two logged ones, as references to the detached tensors: no
    device work and no copy per step. Every 1024 of them are stacked into one tensor (one kernel),
    so a long stretch between logged steps keeps memory small."""

    CHUNK = 1024

    def __init__(self):
        self.steps: list[int] = []
        self._loose: list = []
        self._chunks: list = []

    def __len__(self):
        return len(self.steps)

    def add(self, step: int, loss):
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
        elif isinstance(loss, (int, float)):
            loss = torch.tensor(float(loss))
        else:
            return
        self.steps.append(step)
        self._loose.append(loss)
        if len(self._loose) >= self.CHUNK:
            self._chunks.append(self._stack(self._loose))
            self._loose = []

    @staticmethod
    def _stack(losses):
        return torch.stack([t.reshape(-1)[0].to(losses[0].device) for t in losses]).float()

    def take(self) -> tuple[list[int], torch.Tensor | None]:
        """(steps, their losses as one 1-d tensor, or None) and empty the buffer."""
        parts = self._chunks + ([self._stack(self._loose)] if self._loose else [])
        steps = self.steps
        self.steps, self._loose, self._chunks = [], [], []
        if not parts:
            return steps, None
        return steps, torch.cat([p.to(parts[0].device) for p in parts])


def listed(v) -> list:
    return v if isinstance(v, list) else [v]


def figure_rows(figures: list[tuple], losses: list[tuple]) -> list[dict]:
    """metrics.csv rows of unlogged steps that have figures of the user's: (step, name, value) ->
    one row per step, with that step's loss (the last one, under gradient accumulation)."""
    loss = dict(losses)
    rows: dict = {}
    for step, key, value in figures:
        if step is not None:
            rows.setdefault(step, {"step": step, "loss": loss.get(step)})[key] = value
    return [rows[s] for s in sorted(rows)]


class SkipBuffer:
    """The steps a loss scaler skipped between two logged ones (monitor/scaler.py): (step, flag,
    scale). The flag is 1 when the host knows (the optimizer did not step), else the scaler's device
    tensor (a fused optimizer skips on the device), read with the next logged step's transfer."""

    def __init__(self):
        self.items: list = []

    def add(self, step: int, flag, scale):
        self.items.append((step, flag, scale))

    def take(self, device) -> tuple[list[int], dict]:
        """(steps, {"recent_skipped": flags, "recent_skip_scales": scales}) as device tensors; empties."""
        items, self.items = self.items, []
        if not items:
            return [], {}

        def column(values):
            return torch.stack([torch.as_tensor(float("nan") if v is None else v, dtype=torch.float64, device=device)
                                .reshape(()) for v in values])
        return [s for s, _, _ in items], {"recent_skipped": column([f for _, f, _ in items]),
                                          "recent_skip_scales": column([c for _, _, c in items])}


def skip_rows(steps: list[int], host: dict, losses: list[tuple]) -> list[dict]:
    """metrics.csv rows of the unlogged steps a loss scaler skipped (flag > 0)."""
    loss = dict(losses)
    flags, scales = listed(host.get("recent_skipped", [])), listed(host.get("recent_skip_scales", []))
    return [{"step": s, "loss": loss.get(s), "loss_scale": c if c == c else None, "skipped": 1}
            for s, f, c in zip(steps, flags, scales) if f > 0]


def merged(*lists: list[dict]) -> list[dict]:
    """Rows of several sources for the same unlogged steps, one row per step, in step order."""
    rows: dict = {}
    for row in (r for rs in lists for r in rs):
        rows.setdefault(row["step"], {}).update({k: v for k, v in row.items() if v is not None or k not in rows[row["step"]]})
    return [rows[s] for s in sorted(rows)]


def transfer(items: dict) -> dict:
    """Tensors to the host in one copy: {name: float} for one value, {name: [floats]} otherwise."""
    parts = {k: v.detach().double().reshape(-1).cpu() for k, v in items.items()}
    flat = torch.cat(list(parts.values())).tolist() if parts else []
    out, at = {}, 0
    for k, v in parts.items():
        out[k] = flat[at] if items[k].dim() == 0 else flat[at:at + v.numel()]
        at += v.numel()
    return out


class Between:
    """What the steps since the last logged one leave for the next (or for close()). take() hands
    their tensors over for the logged step's transfer: `shared` ones the ranks of a distributed run
    combine (losses, gradient checks), and this rank's `own` (skips, figures); read() turns the
    host's values back into (step, value) pairs and metrics.csv rows."""

    def __init__(self):
        self.losses, self.checks, self.skips = LossBuffer(), LossBuffer(), SkipBuffer()
        self.clipped = LossBuffer()  # the total gradient norm after the loop's clipping, where known
        self.lrs: dict = {}          # step -> the learning rate of its update
        self.figures: dict = {}      # step -> {name: value}
        self._taken: tuple = ()

    def __bool__(self):
        return bool(len(self.losses) or len(self.checks) or self.skips.items or self.figures)

    def take(self, device, current: dict | None = None) -> tuple[dict, dict]:
        """(shared, own) device tensors. current: the logged step's own figures (step None)."""
        loss_steps, losses = self.losses.take()
        check_steps, checks = self.checks.take()
        clip_steps, clipped = self.clipped.take()
        lrs, self.lrs = self.lrs, {}
        skip_steps, own = self.skips.take(device)
        lr_steps = [s for s, v in lrs.items() if isinstance(v, torch.Tensor)]  # a tensor lr: read with the rest
        if lr_steps:
            own["recent_lrs"] = torch.stack([lrs[s].to(device) for s in lr_steps])
        figures = [(None, k, v) for k, v in (current or {}).items()] + [
            (s, k, v) for s, f in sorted(self.figures.items()) for k, v in f.items()]
        self.figures = {}
        own.update({f"figure{i}": v for i, (_, _, v) in enumerate(figures) if isinstance(v, torch.Tensor)})
        shared = {k: v for k, v in (("recent_losses", losses), ("recent_grad_norms", checks),
                                    ("recent_grad_clipped", clipped)) if v is not None}
        self._taken = (loss_steps, check_steps, clip_steps, lrs, lr_steps, skip_steps, figures)
        return {k: v.to(device) for k, v in shared.items()}, {k: v.to(device) for k, v in own.items()}

    def read(self, host: dict) -> tuple[list, list, list, list, list]:
        """(earlier (step, loss), checks (step, total gradient norm), skipped steps, figures (step or
        None, name, value), metrics.csv rows of the unlogged steps) from the values take() handed
        over. tier(): their steps.csv rows."""
        loss_steps, check_steps, clip_steps, lrs, lr_steps, skip_steps, figures = self._taken
        lrs.update(zip(lr_steps, listed(host.get("recent_lrs", []))))
        earlier = list(zip(loss_steps, listed(host.get("recent_losses", []))))
        checks = list(zip(check_steps, listed(host.get("recent_grad_norms", []))))
        self._tier = (earlier, checks, list(zip(clip_steps, listed(host.get("recent_grad_clipped", [])))), lrs)
        skips = [s for s, f in zip(skip_steps, listed(host.get("recent_skipped", []))) if f > 0]
        figures = [(s, k, host.get(f"figure{i}", v)) for i, (s, k, v) in enumerate(figures)]
        return earlier, checks, skips, figures, merged(figure_rows(figures, earlier), skip_rows(skip_steps, host, earlier))

    def tier(self, skipped=()) -> list[dict]:
        """steps.csv rows of the steps read() read: loss, total gradient norm (before and after
        clipping), learning rate, and whether the step was finite. Steps that measured no gradient
        norm (the tier off) have none."""
        earlier, norms, clipped, lrs = self._tier
        loss, clip = dict(earlier), dict(clipped)
        return [step_row(s, loss.get(s), norm, clip.get(s), lrs.get(s), s in skipped) for s, norm in dict(norms).items()]


def step_row(step: int, loss, norm, clipped, lr, skipped: bool = False) -> dict:
    """One steps.csv row. finite: 1 when the loss and the gradient norm are finite numbers."""
    finite = all(isinstance(v, (int, float)) and v == v and abs(v) != float("inf") for v in (loss, norm) if v is not None)
    return {"step": step, "loss": loss, "grad_norm_total": norm, "grad_norm_clipped": clipped, "lr": lr,
            "finite": int(finite), "skipped": int(skipped) if skipped else None}


def current_lr(optimizer):
    """The learning rate of the optimizer's first parameter group: a number, or for a tensor lr (a
    capturable or compiled optimizer's) a copy on its device — a scheduler changes the tensor in place,
    and reading it now would be a host synchronisation."""
    lr = optimizer.param_groups[0].get("lr") if optimizer is not None else None
    if isinstance(lr, torch.Tensor):
        return lr.detach().reshape(-1)[0].clone().double() if lr.numel() == 1 else None
    return lr if isinstance(lr, (int, float)) else None


class EveryStep:
    """The every-step tier on a step that is not logged: its total gradient norm before clipping
    (one fused norm, kept on the device), its learning rate, and, where the loop said it clips, the
    norm after clipping — by norm, torch's own factor min(1, max_norm / (norm + 1e-6)) on the device;
    by value, the norm taken again. Into the Between that the next logged step reads."""

    def __init__(self, between: Between, trainable: list, optimizer, clip: dict, sharded: bool, scaler=None):
        self.between, self.trainable, self.optimizer, self.clip, self.sharded = between, trainable, optimizer, clip, sharded
        self.scaler = scaler  # a loss scaler's gradients are S times the optimizer's: divided (on the device)
        self._norm = None

    def _total(self):
        grads = [p.grad for p in self.trainable]
        norm = total_norm([local(g) for g in grads] if self.sharded else grads)
        inv = self.scaler.inverse() if self.scaler is not None else None
        return norm * inv if inv is not None else norm

    def record(self, step: int):
        """After backward (the norm before the loop's clipping)."""
        self._norm = self._total()
        self.between.checks.add(step, self._norm)
        self.between.lrs[step] = current_lr(self.optimizer)

    def record_clipped(self, step: int):
        """In the optimizer's step, after the loop's clipping."""
        norm, self._norm = self._norm, None
        if norm is None:
            return
        if self.clip["clip_norm"] is not None:
            self.between.clipped.add(step, norm * torch.clamp(self.clip["clip_norm"] / (norm + 1e-6), max=1.0))
        elif self.clip["clip_value"] is not None:
            self.between.clipped.add(step, self._total())
