"""The measurement engine: per-layer statistics, computed on logged steps only, for any model.

On a logged step the probe hooks the layers' modules (measure/layers.py says which: a built-in
model declares them, any other model's are discovered on the first logged step) and the hooks hand
each layer's output (its gradient is δ) and activation to a Recorder; vgrad's recurrent models
also record through `model.recorder` (hidden states through time). Hooks exist only during a logged
step's forward, so other steps pay nothing. All statistics are computed with a handful of batched
tensor ops (torch._foreach_norm over every gradient at once, stacked activations) and moved to the
host in one transfer per logged step: no per-parameter .item().
"""

from __future__ import annotations

import torch

from ..activations import ACTIVATIONS, Activation
from ..vocab import LAYER_COLUMNS
from .norms import abs_max_each, norms64, per_layer_norm
from .recorder import Recorder  # noqa: F401  (tests and models import it from here)
from .recurrent import spectra_layers, time_rows, whh_spectra
from .hooks import Hooks
from .layers import hook_candidates, is_activation

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


class LayerProbe:
    def __init__(self, model, activation: Activation | None, keep_activations: bool, layers=None, hooks: bool = True):
        """layers: the model's ProbeLayers; None: the model's own `probe_layers()`, or, for a model
        without one, discovered on the first logged step (`select` narrows or groups them).
        hooks=False: gradients, weights and updates only (δ and activations need hooks), layers in
        definition order; for a compiled model, whose graph a hook would break."""
        self.model = model
        self.hooks = hooks
        self.default_saturation = activation.saturated_outside if activation is not None else None
        self.default_activation = next((k for k, v in ACTIVATIONS.items() if v is activation), None)
        self.keep_activations = keep_activations
        self.recorder: Recorder | None = None
        self.stats: dict = {}
        self.notes: list[str] = []
        self.select = None
        self._hooks = Hooks()
        self._hooked_for = None  # the layer list the armed hooks were made for
        self._scratch: dict = {}
        if layers is None and hasattr(model, "probe_layers"):
            layers = model.probe_layers()
        self.layers: list | None = None
        if layers is not None:
            self._setup(layers)

    def _setup(self, layers):
        self.layers = layers
        self.n = len(layers)
        self.params = [p for layer in layers for p in layer.params]
        device = self.params[0].device
        self.param_layer = torch.tensor([i for i, layer in enumerate(layers) for _ in layer.params], device=device)
        self.weights = [layer.weight for layer in layers]
        # Initial weights, for weight_drift = ||W_t - W_0|| / ||W_0|| (do early layers move at all?)
        self.w0 = [w.detach().clone() for w in self.weights]
        self.w0_norm = torch.stack(torch._foreach_norm(self.w0)).clamp_min(1e-30)
        ids = {id(p): i for i, p in enumerate(self.params)}
        self.weight_index = torch.tensor([ids[id(w)] for w in self.weights], device=device)
        # Reused every logged step: the parameters before the update (no fresh allocation per step)
        self._before_buf: list | None = None
        self._param_norms = None      # per-parameter norms at after_backward (= before the update)
        self._grads, self._grad_versions = [], []  # the gradients measured, and their version counters
        self.explicit = any(layer.delta is None for layer in layers)  # the model records δ itself
        self.saturation = [self._saturation(layer) for layer in layers]
        self.nonnegative = [self._nonnegative(layer) for layer in layers]
        self.whh_layers, whh_notes = spectra_layers(layers)
        self.notes += whh_notes

    def _saturation(self, layer):
        """(lo, hi) flat regions; None: does not saturate; False: unknown (no saturation statistic)."""
        if layer.activation is None:
            return self.default_saturation
        if layer.activation in ACTIVATIONS:
            return ACTIVATIONS[layer.activation].saturated_outside
        return False

    def _nonnegative(self, layer) -> bool:
        name = layer.activation if layer.activation is not None else self.default_activation
        return name in ACTIVATIONS and ACTIVATIONS[name].nonnegative

    # --- the steps of one logged training step, in order -----------------------------------
    def attach(self):
        """Arm the hooks for one forward pass (and the model's own recorder, if it has one). Hooks
        still armed for the same layers (consecutive logged steps: the caller kept them) are
        reused: only the recorder they write to is new."""
        rec = self.recorder = Recorder(self.keep_activations)
        self.stats = {}
        if not self.hooks:
            return
        if not (self._hooks and self._hooked_for is self.layers and self.layers is not None):
            self._register()
        if self.layers is not None and self.explicit:
            self.model.recorder = rec

    def _register(self):
        self.detach()
        if self.layers is None:  # discovery: watch every candidate, decide after this step
            watched = [(m, "delta") for m in hook_candidates(self.model) if not is_activation(m)]
            watched += [(m, "act") for m in hook_candidates(self.model) if is_activation(m)]
            inputs = [m for m, role in watched if role == "delta"]
        else:
            watched = [(layer.delta, "delta") for layer in self.layers if layer.delta is not None]
            watched += [(layer.act, "act") for layer in self.layers if layer.act is not None]
            inputs = [layer.act_input_of for layer in self.layers if layer.act_input_of is not None]
        seen = set()
        for m, role in watched:
            if (id(m), role) in seen:
                continue
            seen.add((id(m), role))
            keep = role == "delta"
            # the hooks write to whichever recorder is current: they can stay armed across steps
            self._hooks.add(m.register_forward_hook(
                lambda mod, args, out, k=keep: self._on_output(mod, out, k)))
        if self.keep_activations or self.layers is None:
            for m in {id(m): m for m in inputs}.values():
                self._hooks.add(m.register_forward_pre_hook(lambda mod, args: self._on_input(mod, args)))
        self._hooked_for = self.layers

    def _on_output(self, module, output, keep_grad: bool):
        if self.recorder is not None:  # hooks kept armed between steps write only while a step records
            self.recorder.on_output(module, output, keep_grad)

    def _on_input(self, module, args):
        if self.recorder is not None:
            self.recorder.on_input(module, args)

    def detach(self):
        self._hooks.remove()
        self._hooked_for = None
        if self.layers is not None and self.explicit:
            self.model.recorder = None

    def _discover(self):
        from .layers import discover

        rec = self.recorder
        if not self.hooks:
            from .layers import static_order

            rec.order = static_order(self.model)

        def same_tensor(a, b):
            outs, inp = rec.out.get(id(a)), rec.inp.get(id(b))
            return inp is None or any(o is inp or (o.shape == inp.shape and o.data_ptr() == inp.data_ptr()) for o in outs or [])

        layers, self.notes = discover(self.model, rec.order, same_tensor, lambda m: len(rec.out.get(id(m), ())),
                                      self.select)
        if not layers:
            raise ValueError("the model's forward pass called no module that holds parameters")
        self._setup(layers)

    @torch.no_grad()
    def after_backward(self, keep_hooks: bool = False):
        """Gradient statistics, before clipping. Removes the hooks (keep_hooks: not yet, more
        micro-batches of this step will run forward: gradient accumulation)."""
        if not keep_hooks:
            self.detach()
        if self.layers is None:
            self._discover()
        params = self.params
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        self._grad_versions = [g._version for g in grads]
        self._grads = grads
        s = self.stats
        s["grad_norm"] = per_layer_norm(norms64(grads), self.param_layer, self.n)
        dt = torch.float64 if grads[0].dtype == torch.float64 else torch.float32  # float64: its tiny values too
        s["grad_max_abs"] = torch.zeros(self.n, dtype=dt, device=self.param_layer.device).scatter_reduce_(
            0, self.param_layer, abs_max_each(grads).to(dt), "amax", include_self=False
        )
        self._delta_norms()
        # One fused norm over every parameter: weight_norm now, and the "before" norm of update_ratio
        # (the parameters do not change between here and the update; clipping touches only grads).
        self._param_norms = torch.stack(torch._foreach_norm(params)).float()
        s["weight_norm"] = self._param_norms[self.weight_index]
        s["weight_drift"] = torch.stack(torch._foreach_norm(torch._foreach_sub(self.weights, self.w0))) / self.w0_norm
        self._activations()
        if self.whh_layers:  # the W_hh this step's forward used (the update comes later)
            s["whh_spectral_radius"], s["whh_sigma_max"] = whh_spectra([self.weights[i] for i in self.whh_layers])
        # gradient through time: ||dL/dh_t|| (and an LSTM's ||dL/dc_t||) for every layer and t, fused norms
        for key, states in (("time_delta_norm", self.recorder.h), ("time_cell_grad_norm", self.recorder.c)):
            if states:
                norms = norms64([x.grad if x.grad is not None else torch.zeros_like(x) for x in states])
                s[key] = norms.reshape(self.n - 1, -1)
        s["grad_norm_total"] = s["grad_norm"].square().sum().sqrt()
        if not keep_hooks:
            self.recorder = None  # the outputs and activations it holds are not needed any more

    def _delta_norms(self):
        """δ of every layer: the norm of the gradient at its output (over all calls of its module)."""
        rec, zs, index = self.recorder, [], []
        for i, layer in enumerate(self.layers):
            tensors = rec.z.get(i, []) if layer.delta is None else rec.out.get(id(layer.delta), [])
            zs += tensors
            index += [i] * len(tensors)
        self.missing_delta = set(range(self.n)) - set(index)
        if not zs:
            self.stats["delta_norm"] = torch.zeros(self.n, dtype=torch.float64, device=self.param_layer.device)
            return
        deltas = [z.grad if z.grad is not None else torch.zeros_like(z) for z in zs]
        idx = torch.tensor(index, device=self.param_layer.device)
        self.stats["delta_norm"] = per_layer_norm(norms64(deltas), idx, self.n)

    def _activations(self):
        """Activation statistics per layer that has an activation: layers whose activations share a
        shape and an activation are stacked into one batched computation (vgrad's MLPs: all)."""
        self.act_layers = []
        if not self.keep_activations:
            return
        rec, groups = self.recorder, {}
        for i, layer in enumerate(self.layers):
            if layer.act is not None:
                a = (rec.out.get(id(layer.act)) or [None])[-1]
            elif layer.act_input_of is not None:
                a = rec.inp.get(id(layer.act_input_of))
            else:
                a = rec.a.get(i)
            if a is None or a.dim() < 2 or not a.is_floating_point():
                continue
            a = _units_view(a.detach(), layer.channel_dim)  # (outer, units, inner): a view, no copy
            key = (tuple(a.shape), str(a.dtype), self.saturation[i], self.nonnegative[i])
            groups.setdefault(key, []).append((i, a))
        parts = []
        for (shape, _, sat, nonneg), members in groups.items():
            acts = [a for _, a in members]
            if len(acts) == 1 or acts[0].numel() > _STACK_MAX:
                # large activations (a CNN's): per layer, on views; a stacked copy would cost more
                # memory traffic than the statistics themselves
                per = [self._activation_stats(a.unsqueeze(0), sat, "tmp_layer", nonneg) for a in acts]
                st = {key: torch.cat([p[key] for p in per]) for key in per[0]}
            else:
                stacked = torch.stack(acts, out=self._buffer(f"acts{len(parts)}", (len(acts), *shape), acts[0]))
                st = self._activation_stats(stacked, sat, f"tmp{len(parts)}", nonneg)
            parts.append(([i for i, _ in members], st))
        if not parts:
            return
        self.act_layers = [i for idx, _ in parts for i in idx]
        self.no_saturation = {i for i in self.act_layers if self.saturation[i] is False}
        for key in parts[0][1]:
            self.stats[key] = torch.cat([st[key] for _, st in parts])

    @torch.no_grad()
    def after_clip(self, clipped: bool | None = True):
        """The total gradient norm after clipping; without clipping it is the norm already taken.
        clipped=None: not known (Monitor: the user's loop may clip): the norm already taken when
        every gradient is still the tensor measured, unmodified (same in-place version counter)."""
        if clipped is None:
            grads = self._grads
            clipped = len(grads) != len(self.params) or any(
                p.grad is not g or g._version != v for p, g, v in zip(self.params, grads, self._grad_versions))
        self._grads = []
        if not clipped:
            self.stats["grad_norm_clipped"] = self.stats["grad_norm_total"]
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        self.stats["grad_norm_clipped"] = norms64(grads).square().sum().sqrt()

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
        upd = per_layer_norm(norms64(before), self.param_layer, self.n)
        old = per_layer_norm(self._param_norms, self.param_layer, self.n)
        self.stats["update_ratio"] = upd / old.clamp_min(1e-30)

    def _buffer(self, name: str, shape, like):
        buf = self._scratch.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._scratch[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    @torch.no_grad()
    def _activation_stats(self, a, saturated_outside="default", scratch: str = "tmp", nonnegative: bool = False):
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
        tmp = self._buffer(scratch, a.shape, a)
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

    time_rows = staticmethod(time_rows)  # time.csv rows from to_host's result (recurrent.py)

    def rows(self, step: int, columns: dict) -> list[dict]:
        """layers.csv rows; a statistic that does not apply to a layer (e.g. activations of the
        output layer, update_ratio on the final step, δ of a layer the forward pass skipped) stays
        None (an empty cell)."""
        act_pos = {layer: k for k, layer in enumerate(getattr(self, "act_layers", []))}
        whh_pos = {layer: k for k, layer in enumerate(self.whh_layers)}
        out = []
        for i, layer in enumerate(self.layers):
            row = {"step": step, "layer": i, "name": layer.name}
            for col in LAYER_COLUMNS[3:]:
                vals = columns.get(col)
                if col.startswith("act_"):
                    k = act_pos.get(i)
                    unknown = col == "act_saturated_frac" and i in getattr(self, "no_saturation", ())
                    row[col] = vals[k] if vals is not None and k is not None and not unknown else None
                elif col.startswith("whh_"):
                    k = whh_pos.get(i)
                    row[col] = vals[k] if vals is not None and k is not None else None
                elif col == "delta_norm" and i in getattr(self, "missing_delta", ()):
                    row[col] = None
                else:
                    row[col] = vals[i] if vals is not None and i < len(vals) else None
            out.append(row)
        return out
