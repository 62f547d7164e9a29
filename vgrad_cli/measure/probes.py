"""Per-layer measurements ("probes"), computed on logged steps only.

The model calls `recorder.record(layer, z, a)` during forward when a recorder is attached; the
probe attaches one only on logged steps, so other steps pay nothing. All statistics are computed
with a handful of batched tensor ops (torch._foreach_norm over every gradient at once, stacked
activations) and moved to the host in one transfer per logged step: no per-parameter .item().
"""

from __future__ import annotations

import torch

from ..activations import Activation

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
    """Combine per-parameter L2 norms (a list of 0-d tensors or a 1-d tensor) into per-layer L2 norms:
    sqrt(sum of squares) per layer."""
    if isinstance(per_param_norms, (list, tuple)):
        per_param_norms = torch.stack(per_param_norms)
    sq = torch.zeros(n_layers, dtype=torch.float64, device=param_layer.device)
    return sq.index_add_(0, param_layer, per_param_norms.double().square()).sqrt()


def _norms64(tensors):
    """L2 norm of each tensor, accumulated in float64. In float32 the sum of squares underflows once
    elements fall below ~1e-19 — exactly the vanished gradients vgrad exists to measure (a 40-layer
    sigmoid net's layer 0 is ~1e-26) — and would report them as 0."""
    return torch._foreach_norm(tensors, 2, dtype=torch.float64)


def _abs_max_each(tensors):
    """max |x| of every tensor, as one 1-d tensor. aminmax needs no |x| temporary: on CPU it is ~2x
    faster than _foreach_max(_foreach_abs(...)) and ~8x faster than _foreach_norm(ord=inf)."""
    lo_hi = [torch.aminmax(t) for t in tensors]
    return torch.maximum(torch.stack([m.max for m in lo_hi]), torch.stack([m.min for m in lo_hi]).neg())


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
        ids = {id(p): i for i, p in enumerate(self.params)}
        self.weight_index = torch.tensor([ids[id(w)] for w in self.weights], device=device)
        # Reused every logged step: the parameters before the update (no fresh allocation per step)
        self._before_buf: list | None = None
        self._param_norms = None      # per-parameter norms at after_backward (= before the update)
        # Activation-sized scratch tensors, reused across logged steps: a fresh multi-megabyte
        # temporary per step costs more to allocate and first touch than the arithmetic (~5x on CPU)
        self._scratch: dict = {}
        self.saturated_outside = activation.saturated_outside
        self.keep_activations = keep_activations
        self.recorder: Recorder | None = None
        self.stats: dict = {}

    # --- the steps of one logged training step, in order -----------------------------------
    def attach(self):
        self.recorder = Recorder(self.keep_activations)
        self.model.recorder = self.recorder
        self.stats = {}

    @torch.no_grad()
    def after_backward(self):
        """Gradient statistics, before clipping. Detaches the recorder from the model."""
        self.model.recorder = None
        params = self.params
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        s = self.stats
        s["grad_norm"] = _per_layer_norm(_norms64(grads), self.param_layer, self.n)
        s["grad_max_abs"] = torch.zeros(self.n, device=self.param_layer.device).scatter_reduce_(
            0, self.param_layer, _abs_max_each(grads).float(), "amax", include_self=False
        )
        zs = self.recorder.z
        deltas = [z.grad if z.grad is not None else torch.zeros_like(z) for z in zs]
        s["delta_norm"] = torch.stack(_norms64(deltas))
        # One fused norm over every parameter: weight_norm now, and the "before" norm of update_ratio
        # (the parameters do not change between here and the update; clipping touches only grads).
        self._param_norms = torch.stack(torch._foreach_norm(params)).float()
        s["weight_norm"] = self._param_norms[self.weight_index]
        s["weight_drift"] = torch.stack(torch._foreach_norm(torch._foreach_sub(self.weights, self.w0))) / self.w0_norm
        if self.recorder.a:
            acts = self.recorder.a
            if len(acts) == 1:  # e.g. a one-layer rnn: a view, no copy
                stacked = acts[0].unsqueeze(0)
            else:
                stacked = torch.stack(acts, out=self._buffer("acts", (len(acts), *acts[0].shape), acts[0]))
            s.update(self._activation_stats(stacked))
        if self.recorder.h:  # gradient through time: ||dL/dh_t|| for every layer and t, one fused norm
            hs = self.recorder.h
            norms = torch.stack(_norms64([h.grad if h.grad is not None else torch.zeros_like(h) for h in hs]))
            s["time_delta_norm"] = norms.reshape(self.n - 1, -1)
        s["grad_norm_total"] = s["grad_norm"].square().sum().sqrt()

    @torch.no_grad()
    def after_clip(self, clipped: bool = True):
        """The total gradient norm after clipping; without clipping it is the norm already taken."""
        if not clipped:
            self.stats["grad_norm_clipped"] = self.stats["grad_norm_total"]
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        self.stats["grad_norm_clipped"] = torch.stack(_norms64(grads)).square().sum().sqrt()

    @torch.no_grad()
    def before_update(self):
        if self._before_buf is None:
            self._before_buf = [p.clone() for p in self.params]
        else:
            torch._foreach_copy_(self._before_buf, self.params)

    @torch.no_grad()
    def after_update(self):
        before = self._before_buf
        if before is None or self._param_norms is None:
            raise RuntimeError("after_update needs after_backward and before_update on the same step")
        torch._foreach_sub_(before, self.params)  # in place: before - after = -update
        upd = _per_layer_norm(_norms64(before), self.param_layer, self.n)
        old = _per_layer_norm(self._param_norms, self.param_layer, self.n)
        self.stats["update_ratio"] = upd / old.clamp_min(1e-30)

    def _buffer(self, name: str, shape, like):
        buf = self._scratch.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._scratch[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    @torch.no_grad()
    def _activation_stats(self, a):
        """a: (hidden layers, batch, units). A few cheap batched sums into one reused scratch tensor
        (torch's std/var use a Welford kernel that is ~20x slower on CPU at 20 x 128 x 128).

        Per unit u: mean m_u and variance v_u over the batch, from sums of d = a - c_u where c_u is
        the unit's first sample (a shift that keeps sum(d^2)/n - (sum(d)/n)^2 free of cancellation).
        The layer's std over all units and examples follows from the law of total variance:
        mean_u(v_u) + mean_u((m_u - M)^2), every term non-negative.
        """
        n = a.shape[1]
        tmp = self._buffer("tmp", a.shape, a)
        unit_scale = torch.abs(a, out=tmp).sum(1) / n  # mean |a| per unit; 0 exactly iff the unit is always 0
        if self.saturated_outside is None:
            saturated = torch.zeros(a.shape[0], device=a.device)
        else:
            # outside [lo, hi]  <=>  |a - mid| > half; counted with float ops (bool reductions are slow)
            lo, hi = self.saturated_outside
            mid, half = (lo + hi) / 2, (hi - lo) / 2
            dist = tmp if mid == 0 else torch.sub(a, mid, out=tmp).abs_()  # tanh: tmp already holds |a|
            saturated = dist.sub_(half).clamp_min_(0).sign_().flatten(1).mean(1)
        shift = a[:, :1, :]
        d = torch.sub(a, shift, out=tmp)
        unit_dmean = d.sum(1) / n
        unit_var = (d.mul_(d).sum(1) / n - unit_dmean * unit_dmean).clamp_min(0)
        unit_mean = shift.squeeze(1) + unit_dmean
        layer_mean = unit_mean.mean(1)
        layer_var = unit_var.mean(1) + (unit_mean - layer_mean[:, None]).square().mean(1)
        return {
            "act_mean": layer_mean,
            "act_std": layer_var.sqrt(),
            "act_saturated_frac": saturated,
            "act_dead_frac": (unit_scale == 0).float().mean(1),
            "act_unresponsive_frac": (unit_var.sqrt() <= UNRESPONSIVE_REL * unit_scale).float().mean(1),
        }

    # --- to the host, once ------------------------------------------------------------------
    def to_host(self, extra: dict) -> dict:
        """Move every statistic plus `extra` device tensors (loss, accuracy, ...) in ONE transfer.

        Returns {name: float} for 0-d tensors and {name: list of floats} for 1-d ones.
        """
        items = {**self.stats, **extra}
        flat_parts = [t.detach().double().reshape(-1) for t in items.values()]
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
