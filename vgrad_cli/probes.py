"""Per-layer measurements ("probes"), computed on logged steps only.

The model calls `recorder.record(layer, z, a)` during forward when a recorder is attached; the
probe attaches one only on logged steps, so other steps pay nothing. All statistics are computed
with a handful of batched tensor ops (torch._foreach_norm over every gradient at once, stacked
activations) and moved to the host in one transfer per logged step: no per-parameter .item().
"""

from __future__ import annotations

import math

import torch

from .activations import Activation

TIME_COLUMNS = ["step", "layer", "t", "delta_norm"]
LAYER_COLUMNS = [
    "step", "layer", "name", "grad_norm", "grad_max_abs", "delta_norm", "weight_norm", "weight_drift",
    "update_ratio", "act_mean", "act_std", "act_saturated_frac", "act_dead_frac", "act_unresponsive_frac",
]
# A unit is "unresponsive" when its output varies across the batch by less than this fraction
# of its typical magnitude (std_b(a) <= UNRESPONSIVE_REL * mean_b|a|): it says the same thing
# for every input.
UNRESPONSIVE_REL = 0.01


class Recorder:
    """Collects each layer's pre-activation z (keeping its gradient) and, optionally, its output a."""

    def __init__(self, keep_activations: bool):
        self.keep_activations = keep_activations
        self.z: list = []
        self.a: list = []
        self.h: list = []  # recurrent models: every hidden state h_t, layer by layer

    def record_time(self, layer: int, t: int, h):
        h.retain_grad()
        self.h.append(h)

    def record(self, layer: int, z, a):
        if z.requires_grad:
            z.retain_grad()
        self.z.append(z)
        if a is not None and self.keep_activations:
            self.a.append(a.detach())


def _per_layer_norm(per_param_norms, param_layer, n_layers):
    """Combine per-parameter L2 norms into per-layer L2 norms: sqrt(sum of squares) per layer."""
    sq = torch.zeros(n_layers, device=param_layer.device)
    return sq.index_add_(0, param_layer, torch.stack(per_param_norms).float() ** 2).sqrt()


class LayerProbe:
    def __init__(self, model, activation: Activation, keep_activations: bool):
        self.model = model
        self.layers = model.probe_layers()
        self.n = len(self.layers)
        self.params = [p for layer in self.layers for p in layer.params]
        device = self.params[0].device
        self.param_layer = torch.tensor(
            [i for i, layer in enumerate(self.layers) for _ in layer.params], device=device
        )
        self.weights = [layer.weight for layer in self.layers]
        # Initial weights, for weight_drift = ||W_t - W_0|| / ||W_0|| (do early layers move at all?)
        self.w0 = [w.detach().clone() for w in self.weights]
        self.w0_norm = torch.stack(torch._foreach_norm(self.w0)).clamp_min(1e-30)
        self.saturated_outside = activation.saturated_outside
        self.keep_activations = keep_activations
        self.recorder: Recorder | None = None
        self.stats: dict = {}

    # --- the steps of one logged training step, in order -----------------------------------
    def attach(self):
        self.recorder = Recorder(self.keep_activations)
        self.model.recorder = self.recorder
        self.stats = {}

    def after_backward(self):
        """Gradient statistics, before clipping. Detaches the recorder from the model."""
        self.model.recorder = None
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        s = self.stats
        s["grad_norm"] = _per_layer_norm(torch._foreach_norm(grads), self.param_layer, self.n)
        maxes = torch.stack(torch._foreach_norm(grads, math.inf)).float()
        s["grad_max_abs"] = torch.zeros(self.n, device=maxes.device).scatter_reduce_(
            0, self.param_layer, maxes, "amax", include_self=False
        )
        zs = self.recorder.z
        deltas = [z.grad if z.grad is not None else torch.zeros_like(z) for z in zs]
        s["delta_norm"] = torch.stack(torch._foreach_norm(deltas)).float()
        w_norm = torch.stack(torch._foreach_norm(self.weights)).float()
        s["weight_norm"] = w_norm
        s["weight_drift"] = torch.stack(torch._foreach_norm(torch._foreach_sub(self.weights, self.w0))) / self.w0_norm
        if self.recorder.a:
            s.update(self._activation_stats(torch.stack(self.recorder.a)))
        if self.recorder.h:  # gradient through time: ||dL/dh_t|| for every layer and t, one fused norm
            hs = self.recorder.h
            norms = torch.stack(torch._foreach_norm([h.grad if h.grad is not None else torch.zeros_like(h) for h in hs]))
            s["time_delta_norm"] = norms.float().reshape(self.n - 1, -1)
        s["grad_norm_total"] = s["grad_norm"].square().sum().sqrt()

    def after_clip(self):
        grads = [p.grad for p in self.params if p.grad is not None]
        self.stats["grad_norm_clipped"] = torch.stack(torch._foreach_norm(grads)).float().square().sum().sqrt()

    def before_update(self):
        self._before = [p.detach().clone() for p in self.params]

    def after_update(self):
        update = torch._foreach_sub([p.detach() for p in self.params], self._before)
        upd = _per_layer_norm(torch._foreach_norm(update), self.param_layer, self.n)
        old = _per_layer_norm(torch._foreach_norm(self._before), self.param_layer, self.n)
        self.stats["update_ratio"] = upd / old.clamp_min(1e-30)
        self._before = None

    def _activation_stats(self, a):
        """a: (hidden layers, batch, units). One pass of batched reductions."""
        flat = a.flatten(1)
        if self.saturated_outside is None:
            saturated = torch.zeros(a.shape[0], device=a.device)
        else:
            lo, hi = self.saturated_outside
            saturated = ((flat < lo) | (flat > hi)).float().mean(1)
        unit_std = a.std(1, correction=0)
        unit_scale = a.abs().mean(1)
        return {
            "act_mean": flat.mean(1),
            "act_std": flat.std(1, correction=0),
            "act_saturated_frac": saturated,
            "act_dead_frac": (a == 0).all(1).float().mean(1),
            "act_unresponsive_frac": (unit_std <= UNRESPONSIVE_REL * unit_scale).float().mean(1),
        }

    # --- to the host, once ------------------------------------------------------------------
    def to_host(self, extra: dict) -> dict:
        """Move every statistic plus `extra` device tensors (loss, accuracy, ...) in ONE transfer.

        Returns {name: float} for 0-d tensors and {name: list of floats} for 1-d ones.
        """
        items = {**self.stats, **extra}
        flat_parts = [t.detach().float().reshape(-1) for t in items.values()]
        flat = torch.cat(flat_parts).cpu().tolist()
        host, offset = {}, 0
        for (name, t), part in zip(items.items(), flat_parts):
            n = part.numel()
            value = flat[offset : offset + n] if t.dim() else flat[offset]
            if t.dim() == 2:  # e.g. time_delta_norm: a list per layer
                value = [value[i * t.shape[1] : (i + 1) * t.shape[1]] for i in range(t.shape[0])]
            host[name] = value
            offset += n
        return host

    @staticmethod
    def time_rows(step: int, host: dict) -> list[dict]:
        """time.csv rows: ||dL/dh_t|| per stacked layer and time step (recurrent models only)."""
        return [
            {"step": step, "layer": layer, "t": t, "delta_norm": v}
            for layer, per_t in enumerate(host.get("time_delta_norm", []))
            for t, v in enumerate(per_t)
        ]

    def rows(self, step: int, columns: dict) -> list[dict]:
        """layers.csv rows; a statistic that does not apply to a layer (e.g. activations of the
        output layer, update_ratio on the final step) stays None (an empty cell)."""
        out = []
        for i, layer in enumerate(self.layers):
            row = {"step": step, "layer": i, "name": layer.name}
            for col in LAYER_COLUMNS[3:]:
                vals = columns.get(col)
                row[col] = vals[i] if vals is not None and i < len(vals) else None
            out.append(row)
        return out
