"""||Δθ|| per parameter: the size of the update one optimizer step applies (update_ratio's numerator).

A copy of every parameter before the step and a difference after it cost three passes over the
parameters and a buffer as large as the model. Where the optimizer's rule gives the update from what
the probe measures anyway, vgrad reads it instead, exactly as the optimizer applies it:

- SGD without momentum: Δθ = -lr (g + wd θ), so ||Δθ|| = lr ||g|| from the gradient norms already
  taken (after clipping), with the weight-decay terms from one dot product per parameter;
- SGD with momentum (not Nesterov): Δθ = -lr b, b the momentum buffer after the step (which folds in
  the weight decay and the dampening): ||Δθ|| = lr ||b||, one norm per parameter, no copy.

Any other optimizer (Adam, RMSprop, ...), a loss scaler (which unscales the gradients inside its own
step), sharded parameters, or a learning rate that is a tensor: the parameters are copied before the
step into a buffer kept between logged steps, and the difference taken after it.
"""

from __future__ import annotations

import torch

from .norms import norms64


def rule(optimizer, scaler=None, sharded: bool = False) -> str:
    """"sgd", "momentum" or "copy": how the update's size is read for this optimizer."""
    if optimizer is None or scaler is not None or sharded or type(optimizer) is not torch.optim.SGD:
        return "copy"
    groups = optimizer.param_groups
    if any(not isinstance(g["lr"], (int, float)) or g.get("nesterov") or g.get("differentiable") for g in groups):
        return "copy"
    if all(g["momentum"] == 0 for g in groups):
        return "sgd"
    return "momentum" if all(g["momentum"] > 0 for g in groups) else "copy"


class UpdateNorms:
    def __init__(self, optimizer, params: list, how: str):
        self.optimizer, self.params, self.how = optimizer, params, how
        self._before: list | None = None   # the "copy" rule's buffer, reused from one logged step to the next
        self._wd: list = []

    def before(self, params: list, grads: list, grad_norms):
        """Just before the step: params and their gradients as the step will use them (after
        clipping), grad_norms their norms (a 1-d float64 tensor)."""
        if self.how == "copy":
            if self._before is None:
                self._before = [p.detach().clone() for p in params]
            else:
                torch._foreach_copy_(self._before, params)
            return
        group = {id(p): g for g in self.optimizer.param_groups for p in g["params"]}
        hyper = [group.get(id(p), self.optimizer.param_groups[0]) for p in self.params]
        self._lr = torch.tensor([h["lr"] for h in hyper], dtype=torch.float64, device=grad_norms.device)
        if self.how == "sgd":
            # maximize steps along +g: the cross term changes sign
            wd = [h["weight_decay"] * (-1 if h.get("maximize") else 1) for h in hyper]
            self._norm2 = grad_norms.square()
            if any(wd):  # ||g + wd θ||² = ||g||² + 2 wd <g, θ> + wd² ||θ||²
                w = torch.tensor(wd, dtype=torch.float64, device=grad_norms.device)
                dots = torch.stack([torch.dot(g.reshape(-1), p.reshape(-1)) for g, p in zip(grads, params)]).double()
                theta = norms64(list(params))
                self._norm2 = (self._norm2 + 2 * w * dots + w.square() * theta.square()).clamp_min(0)

    def after(self, params: list):
        """Just after the step: ||Δθ|| per parameter, a 1-d float64 tensor."""
        if self.how == "copy":
            before = self._before
            torch._foreach_sub_(before, params)  # in place: before - after = -update
            return norms64(before)
        if self.how == "sgd":
            return self._lr * self._norm2.sqrt()
        state = self.optimizer.state
        bufs = [state.get(p, {}).get("momentum_buffer") for p in self.params]
        bufs = [b if b is not None else torch.zeros_like(p) for b, p in zip(bufs, params)]
        return self._lr * norms64(bufs)
