"""Mixed precision: a `torch.amp.GradScaler` seen from the Monitor, without a host synchronisation.

The scaler multiplies the loss by its scale S before backward, so every gradient (and δ) is S times
the one the optimizer step uses: the Monitor divides its gradient statistics by S (a 0-d device
tensor; the user's .grad is not touched), unless the loop called scaler.unscale_(optimizer) before
mon.step() (the scaler says so: the optimizer's stage is UNSCALED).

A step whose gradient holds an inf or a NaN the scaler skips: it does not call optimizer.step()
and halves S at update(). The Monitor wraps `scaler.update` (restored at close) to see the end of
every step: no optimizer step since the last update() means skipped, known on the host (the scaler
read its own flag). A fused optimizer (Adam(fused=True)) steps anyway and skips on the device: its
flag, the scaler's found_inf tensor, is kept and read at the next logged step.

Skips are normal in fp16 training (the first steps, while S comes down from 65536; one every few
thousand steps after that): a skipped step is not a divergence and its gradient is not read as an
explosion. Skips that persist, PERSISTENT_SKIPS optimizer steps in a row, are: the gradient is
non-finite at every scale (S fell 2^20-fold), so the run diverged at the first of them.
"""

from __future__ import annotations

import torch

PERSISTENT_SKIPS = 20


class ScalerWatch:
    def __init__(self, scaler, optimizer, on_update):
        """scaler: an enabled torch.amp.GradScaler. on_update(): called at every scaler.update(),
        before it changes the scale (the step's flag and scale are still readable)."""
        self.scaler, self.optimizer, self.on_update = scaler, optimizer, on_update
        self.fused = bool(getattr(optimizer, "_step_supports_amp_scaling", False))
        self._own = "update" in vars(scaler)  # an update already patched by someone else: restored as it was
        self._update = scaler.update
        if on_update is not None:
            scaler.update = self._updated

    @classmethod
    def make(cls, scaler, optimizer, on_update) -> ScalerWatch | None:
        """A watch over an enabled scaler; None without one (or a disabled one: bf16, CPU without fp16)."""
        if scaler is None:
            return None
        if not all(callable(getattr(scaler, f, None)) for f in ("is_enabled", "scale", "unscale_", "update")):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
        return cls(scaler, optimizer, on_update) if scaler.is_enabled() else None

    def _updated(self, *args, **kwargs):
        self.on_update()
        return self._update(*args, **kwargs)

    def remove(self):
        if self.on_update is None:
            return
        if self._own:
            self.scaler.update = self._update
        else:
            vars(self.scaler).pop("update", None)

    def _state(self):
        states = getattr(self.scaler, "_per_optimizer_states", {})
        return states.get(id(self.optimizer)) if self.optimizer is not None else None

    def scale(self) -> torch.Tensor | None:
        """The current scale, a 0-d float64 copy on the device (update() changes it in place)."""
        s = getattr(self.scaler, "_scale", None)
        return s.detach().double().reshape(()) if s is not None else None

    def inverse(self) -> torch.Tensor | None:
        """1/S for the gradients as they are now (None: already unscaled, or no scale yet)."""
        from torch.amp.grad_scaler import OptState

        state = self._state()
        if state is not None and state["stage"] is not OptState.READY:
            return None  # scaler.unscale_(optimizer) ran: the gradients are the optimizer's already
        s = self.scale()
        return s.reciprocal() if s is not None else None

    def found_inf(self) -> torch.Tensor | None:
        """The scaler's flag for this step (> 0: skipped), on the device; None before it checked."""
        state = self._state()
        flags = list(state["found_inf_per_device"].values()) if state is not None else []
        if not flags:
            return None
        return torch.stack([f.to(flags[0].device).reshape(()) for f in flags]).sum().double()


class SkipStreak:
    """Consecutive skipped steps: skips that persist are a divergence at the first of them."""

    def __init__(self):
        self.count = self.run = 0
        self.start = self.last = None

    def add(self, step: int) -> int | None:
        """A skipped step (in step order). Returns the streak's first step once it persists."""
        self.count += 1
        if self.last is None or step != self.last + 1:
            self.start, self.run = step, 0
        self.last, self.run = step, self.run + 1
        return self.start if self.run >= PERSISTENT_SKIPS else None
