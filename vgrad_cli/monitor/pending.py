"""What waits for the next logged step: the losses of the steps in between (checked there for a
non-finite value, with no work and no host synchronisation before), and the figures the user logged
on them (Monitor.log_metrics)."""

from __future__ import annotations

import torch


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
