"""Batched norms for the probe: per-parameter norms summed into per-layer ones, with float64's range
where float32 would round a vanished gradient to 0."""

from __future__ import annotations

import torch


def per_layer_norm(per_param_norms, param_layer, n_layers):
    """Combine per-parameter L2 norms (a list of 0-d tensors or a 1-d tensor) into per-layer L2 norms:
    sqrt(sum of squares) per layer."""
    if isinstance(per_param_norms, (list, tuple)):
        per_param_norms = torch.stack(per_param_norms)
    sq = torch.zeros(n_layers, dtype=torch.float64, device=param_layer.device)
    return sq.index_add_(0, param_layer, per_param_norms.double().square()).sqrt()


# A float32 sum of squares is exact to float32 rounding when it is finite (no square overflowed)
# and at least this many times numel: every square it may have lost below float32's normal range
# (< 1.2e-38) then weighs < 1e-10 of the sum.
_F32_SAFE_SQ = 1e-28
# Lists of only smaller tensors: the float64 norm (its copy is cheap there, and one C++ loop beats a
# Python loop of dots).
_DOT_MIN = 4096


def norms64(tensors) -> torch.Tensor:
    """L2 norm of each tensor as one float64 1-d tensor, with float64's range. In float32 the sum of
    squares underflows once elements fall below ~1e-19 — exactly the vanished gradients vgrad exists
    to measure (a 40-layer sigmoid net's layer 0 is ~1e-26) — and would report them as 0.

    On accelerators, for other dtypes and for lists of small tensors only: one fused float64 norm.
    On CPU that norm first copies every tensor to float64 (3-5x the time of a float32 pass; on a
    CNN's 131k-element deltas most of a logged step's measurement cost), so there: float32 dot
    products x.x (BLAS: no copy, and ~10x more accurate than torch's float32 norm on 100k elements),
    then the few sums that float32 cannot be trusted with (tiny, overflowed or non-finite) again in
    float64; which ones is a host read, free on CPU. Results agree with the float64 norm to ~1e-7
    relative (2e-6 on 131k heavy-tailed elements)."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    if (tensors[0].device.type != "cpu" or any(t.dtype != torch.float32 for t in tensors)
            or max(t.numel() for t in tensors) < _DOT_MIN):
        return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64))
    flat = [t.reshape(-1) for t in tensors]
    sq = torch.stack([torch.dot(v, v) for v in flat]).double()
    redo = (sq < _floors(flat)).logical_or_(sq.isfinite().logical_not_())
    if redo.any():
        idx = redo.nonzero().flatten().tolist()
        sq[idx] = torch.stack(torch._foreach_norm([flat[i] for i in idx], 2, dtype=torch.float64)).square()
    return sq.sqrt()


_floor_cache: dict = {}


def _floors(tensors) -> torch.Tensor:
    """_F32_SAFE_SQ * numel of each tensor (cached per list of sizes: the same every logged step)."""
    key = tuple(t.numel() for t in tensors)
    floor = _floor_cache.get(key)
    if floor is None:
        if len(_floor_cache) > 64:
            _floor_cache.clear()
        floor = _floor_cache[key] = torch.tensor([_F32_SAFE_SQ * max(n, 1) for n in key], dtype=torch.float64)
    return floor


def abs_max_each(tensors):
    """max |x| of every tensor, as one 1-d tensor. aminmax needs no |x| temporary: on CPU it is ~2x
    faster than _foreach_max(_foreach_abs(...)) and ~8x faster than _foreach_norm(ord=inf)."""
    tensors = [t if t.numel() else t.new_zeros(1) for t in tensors]  # a rank's empty shard: 0
    lo_hi = [torch.aminmax(t) for t in tensors]
    return torch.maximum(torch.stack([m.max for m in lo_hi]), torch.stack([m.min for m in lo_hi]).neg())
