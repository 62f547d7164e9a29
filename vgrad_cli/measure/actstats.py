"""Activation statistics of a logged step: per layer, the mean and std of its activation over the
batch and its units, and the fractions of units that are saturated, dead or unresponsive.

A few cheap batched sums into reused scratch tensors: torch's std/var use a Welford kernel that is
~20x slower on CPU at 20 x 128 x 128. Layers whose activations share a shape and an activation are
stacked into one computation (vgrad's MLPs: all of them).
"""

from __future__ import annotations

import torch

# A unit is "unresponsive" when its output varies across the batch by less than this fraction
# of its typical magnitude (std_b(a) <= UNRESPONSIVE_REL * mean_b|a|): it says the same thing
# for every input.
UNRESPONSIVE_REL = 0.01


# Activations larger than this (elements per layer) are measured layer by layer on views instead of
# being stacked into one copy first (a CNN's 32 x 16 x 16 x 16 activations: 131k).
_STACK_MAX = 65536


def _units_view(a, channel_dim: int):
    """a as (outer, units, inner), the units on axis `channel_dim`: a view of a contiguous tensor."""
    cd = channel_dim % a.dim()
    outer = 1
    for k in a.shape[:cd]:
        outer *= k
    return a.reshape(outer, a.shape[cd], -1)


class ActivationStats:
    def __init__(self, default_saturation):
        self.default_saturation = default_saturation
        self._scratch: dict = {}

    def compute(self, recorder, layers, saturation: list, nonnegative: list) -> tuple[list[int], set, dict]:
        """(the layers measured, those whose saturation is unknown, {column: 1-d tensor over them})."""
        rec, groups = recorder, {}
        for i, layer in enumerate(layers):
            if layer.act is not None:
                a = (rec.out.get(id(layer.act)) or [None])[-1]
            elif layer.act_input_of is not None:
                a = rec.inp.get(id(layer.act_input_of))
            else:
                a = rec.a.get(i)
            if a is None or a.dim() < 2 or not a.is_floating_point():
                continue
            a = _units_view(a.detach(), layer.channel_dim)  # (outer, units, inner): a view, no copy
            key = (tuple(a.shape), str(a.dtype), saturation[i], nonnegative[i])
            groups.setdefault(key, []).append((i, a))
        parts = []
        for (shape, _, sat, nonneg), members in groups.items():
            acts = [a for _, a in members]
            if len(acts) == 1 or acts[0].numel() > _STACK_MAX:
                # large activations (a CNN's): per layer, on views; a stacked copy would cost more
                # memory traffic than the statistics themselves
                per = [self.stats(a.unsqueeze(0), sat, "tmp_layer", nonneg) for a in acts]
                st = {key: torch.cat([p[key] for p in per]) for key in per[0]}
            else:
                stacked = torch.stack(acts, out=self.buffer(f"acts{len(parts)}", (len(acts), *shape), acts[0]))
                st = self.stats(stacked, sat, f"tmp{len(parts)}", nonneg)
            parts.append(([i for i, _ in members], st))
        if not parts:
            return [], set(), {}
        measured = [i for idx, _ in parts for i in idx]
        return measured, {i for i in measured if saturation[i] is False}, {
            key: torch.cat([st[key] for _, st in parts]) for key in parts[0][1]}

    def buffer(self, name: str, shape, like):
        buf = self._scratch.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._scratch[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    @torch.no_grad()
    def stats(self, a, saturated_outside="default", scratch: str = "tmp", nonnegative: bool = False):
        """a: (layers, samples, units) or (layers, outer, units, inner), the samples of a unit being
        outer x inner (a CNN's batch x positions). A few cheap batched sums into one reused scratch
        tensor (torch's std/var use a Welford kernel that is ~20x slower on CPU at 20 x 128 x 128).

        Per unit u: mean m_u and variance v_u over its samples, from sums of d = a - c_u where c_u is
        the unit's first sample (a shift that keeps sum(d^2)/n - (sum(d)/n)^2 free of cancellation).
        The layer's std over all units and examples follows from the law of total variance:
        mean_u(v_u) + mean_u((m_u - M)^2), every term non-negative.
        """
        if saturated_outside == "default":
            saturated_outside = self.default_saturation
        if a.dim() == 3:
            a = a.unsqueeze(-1)
        dims = (1, 3)
        n = a.shape[1] * a.shape[3]
        tmp = self.buffer(scratch, a.shape, a)
        # mean |a| per unit; 0 exactly iff the unit is always 0
        unit_scale = (a.sum(dims) if nonnegative else torch.abs(a, out=tmp).sum(dims)) / n
        if not saturated_outside:  # does not saturate (None), or unknown (False: the row says nothing)
            saturated = torch.zeros(a.shape[0], device=a.device)
        else:
            # outside [lo, hi]  <=>  |a - mid| > half; counted with float ops (bool reductions are slow)
            lo, hi = saturated_outside
            mid, half = (lo + hi) / 2, (hi - lo) / 2
            dist = tmp if mid == 0 and not nonnegative else torch.sub(a, mid, out=tmp).abs_()  # tanh: tmp holds |a|
            saturated = dist.sub_(half).clamp_min_(0).sign_().flatten(1).mean(1)
        shift = a[:, :1, :, :1]
        d = torch.sub(a, shift, out=tmp)
        unit_dmean = d.sum(dims) / n
        unit_var = (d.mul_(d).sum(dims) / n - unit_dmean * unit_dmean).clamp_min(0)
        unit_mean = shift.squeeze(3).squeeze(1) + unit_dmean
        layer_mean = unit_mean.mean(1)
        layer_var = unit_var.mean(1) + (unit_mean - layer_mean[:, None]).square().mean(1)
        return {
            "act_mean": layer_mean,
            "act_std": layer_var.sqrt(),
            "act_saturated_frac": saturated,
            "act_dead_frac": (unit_scale == 0).float().mean(1),
            "act_unresponsive_frac": (unit_var.sqrt() <= UNRESPONSIVE_REL * unit_scale).float().mean(1),
        }
