"""Where a non-finite value first appeared, from what a step already holds, at almost no cost.

Forward: per row, whether an output of its module (over its calls) holds a NaN or an infinity; rows
are in forward order, so the first such row is where the forward pass first went non-finite.
Backward: the per-parameter gradient norms and δ the probe measures anyway (monitor/nonfinite.py
reads them). Between logged steps: the every-step tier's total gradient norm, kept on the device.
"""

from __future__ import annotations

import torch

from .norms import abs_max_each


def forward_check(layers, recorder, stats: dict, loss, device) -> torch.Tensor:
    """Per row, how many outputs of its module hold a non-finite value. On CPU, reading a value is
    free, so the outputs are checked only on a step whose loss, δ or gradient is non-finite; on an
    accelerator always, with one fused norm (float64: a finite float32 output never overflows it),
    since deciding first would be a host synchronisation."""
    out = torch.zeros(len(layers), dtype=torch.float64, device=device)
    if device.type == "cpu" and _all_finite(stats, loss):
        return out
    tensors, index = [], []
    for i, layer in enumerate(layers):
        found = recorder.z.get(i, []) if layer.delta is None else recorder.out.get(id(layer.delta), [])
        found = [t for t in found if t.is_floating_point() and t.numel()]
        tensors += found
        index += [i] * len(found)
    if tensors:
        size = abs_max_each(tensors) if device.type == "cpu" else \
            torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64))
        out.index_add_(0, torch.tensor(index, device=device), size.isfinite().logical_not().double())
    return out


def _all_finite(stats: dict, loss) -> bool:
    finite = bool(stats["grad_norm_total"].isfinite()) and bool(stats["delta_norm"].isfinite().all())
    if isinstance(loss, (torch.Tensor, int, float)):
        finite = finite and bool(torch.as_tensor(loss).isfinite().all())
    return finite


def total_norm(grads: list) -> torch.Tensor:
    """The L2 norm of every gradient together, as a 0-d tensor kept on the device (one fused norm per
    tensor, then one over them): the every-step tier's grad_norm_total. Non-finite when a gradient is
    (or when its elements pass ~1e19, where float32 squares overflow: an explosion anyway)."""
    grads = [g for g in grads if g is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)))
