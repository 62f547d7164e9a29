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
from ..vocab import BLOCK_COLUMNS, LAYER_COLUMNS, PARAM_COLUMNS
from .distributed import clean_name, is_dtensor, local
from .finite import forward_check
from .norms import abs_max_each, norms64, per_layer_norm
from .recorder import Recorder  # noqa: F401  (tests and models import it from here)
from .recurrent import spectra_layers, time_rows, whh_spectra
from .actstats import ActivationStats
from .hooks import Hooks
from .updates import UpdateNorms
from .blocks import BlockView, block_candidates
from .layers import FROZEN, hook_candidates, is_activation

# the statistics of the gradient (and δ, the gradient at an output): what a loss scale multiplies
GRADIENT_STATS = ("grad_norm", "grad_max_abs", "delta_norm", "time_delta_norm", "time_cell_grad_norm",
                  "grad_norm_total", "view_grad_norm", "view_grad_max_abs", "view_delta_norm")


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
        self.act_stats = ActivationStats(self.default_saturation)
        self.act_layers, self.no_saturation = [], set()
        self.view: BlockView | None = None  # the block view, for a discovered model with repeated blocks
        self.structure: dict | None = None  # a discovered model's norms, residual adds, ... (structure.py)
        if layers is None and hasattr(model, "probe_layers"):
            layers = model.probe_layers()
        self.layers: list | None = None
        if layers is not None:
            self._setup(layers)

    def _setup(self, layers, view=None):
        self.layers = layers
        self.n = len(layers)
        self.params = [p for layer in layers for p in layer.params]  # the trainable ones, each once
        if not self.params:
            raise ValueError("the model has no trainable parameter (every one has requires_grad=False)")
        device = self.params[0].device
        # FSDP2's parameters are DTensors: every statistic is taken on this rank's shard (to_local),
        # and the ranks' shards are combined afterwards (distributed.py)
        self._dtensor = any(is_dtensor(p) for p in self.params)
        self.param_layer = torch.tensor([i for i, layer in enumerate(layers) for _ in layer.params], device=device)
        # main weights (a group of modules or a block: several), for weight_norm and weight_drift
        self.weights = [w for layer in layers for w in layer.weights]
        self.weight_layer = torch.tensor([i for i, layer in enumerate(layers) for _ in layer.weights], device=device)
        ids = {id(p): i for i, p in enumerate(self.params)}
        self.weight_index = torch.tensor([ids[id(w)] for w in self.weights], device=device)
        # Initial weights, for weight_drift = ||W_t - W_0|| / ||W_0|| (do early layers move at all?)
        self.w0 = [w.detach().clone() for w in self._local(self.weights)]
        w0_norm = torch.stack(torch._foreach_norm(self.w0)).float() if self.w0 else torch.zeros(0, device=device)
        self.w0_norm = per_layer_norm(w0_norm, self.weight_layer, self.n).float()
        # a row whose weights start at 0 (LoRA's B, a zero position embedding) has no drift ratio
        self.no_drift = {i for i, v in enumerate(self.w0_norm.tolist()) if v == 0}
        self.empty = {i for i, layer in enumerate(layers) if not layer.params}
        self._updates = None  # measure/updates.py: ||update|| per parameter (made at the first update)
        self._drift_buf: list | None = None  # W - W0, reused from one logged step to the next
        self._index_cache: dict = {}
        self._param_norms = None      # per-parameter norms at after_backward (= before the update)
        self._grads, self._grad_versions = [], []  # the gradients measured, and their version counters
        self.param_grad_norms = None  # per-parameter gradient norms of the last logged step (naming a NaN)
        # the model records δ itself (vgrad's recurrent nets): rows without a δ module
        self.explicit = hasattr(self.model, "probe_layers") and any(layer.delta is None for layer in layers)
        self.saturation = [self._saturation(layer) for layer in layers]
        self.nonnegative = [self._nonnegative(layer) for layer in layers]
        self.whh_layers, whh_notes = spectra_layers(layers)
        self.notes += whh_notes
        self.view = BlockView(*view, layers, device) if view is not None else None
        self.missing_delta: set = set()

    def _saturation(self, layer):
        """(lo, hi) flat regions; None: does not saturate; False: unknown (no saturation statistic)."""
        if layer.activation is None:
            return self.default_saturation
        if layer.activation in ACTIVATIONS:
            return ACTIVATIONS[layer.activation].saturated_outside
        return False

    def _local(self, tensors: list) -> list:
        return [local(t) for t in tensors] if self._dtensor else tensors

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
        grad_inputs = []  # modules whose input's gradient is wanted (the stream entering a stack)
        if self.layers is None:  # discovery: watch every candidate, decide after this step
            candidates = hook_candidates(self.model)
            watched = [(m, "delta") for m in candidates if not is_activation(m)]
            blocks = block_candidates(self.model) if self.select is None else []
            watched += [(m, "delta") for m in blocks]
            watched += [(m, "act") for m in candidates if is_activation(m)]
            inputs = [m for m, role in watched if role == "delta"]
            grad_inputs = blocks  # the first block's input is the embedding's δ: kept from the start
        else:
            watched = [(layer.delta, "delta") for layer in self.layers if layer.delta is not None]
            watched += [(layer.act, "act") for layer in self.layers if layer.act is not None]
            inputs = [layer.act_input_of for layer in self.layers if layer.act_input_of is not None]
            if self.view is not None:
                watched += [(m, "delta") for m in self.view.delta_modules()]
                grad_inputs = self.view.delta_inputs()
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
                if all(m is not g for g in grad_inputs):
                    self._hooks.add(m.register_forward_pre_hook(
                        lambda mod, args, kwargs: self._on_input(mod, args, kwargs), with_kwargs=True))
        for m in grad_inputs:
            self._hooks.add(m.register_forward_pre_hook(
                lambda mod, args, kwargs: self._on_input(mod, args, kwargs, True), with_kwargs=True))
        self._hooked_for = self.layers

    def _on_output(self, module, output, keep_grad: bool):
        if self.recorder is not None:  # hooks kept armed between steps write only while a step records
            self.recorder.on_output(module, output, keep_grad)

    def _on_input(self, module, args, kwargs=None, keep_grad: bool = False):
        if self.recorder is not None:
            self.recorder.on_input(module, args, kwargs, keep_grad)

    def detach(self):
        self._hooks.remove()
        self._hooked_for = None
        if self.layers is not None and self.explicit:
            self.model.recorder = None

    def _discover(self):
        from .blocks import find_view
        from .layers import discover

        rec = self.recorder
        if not self.hooks:
            from .layers import static_order

            rec.order = static_order(self.model)

        def feeds(a, b) -> str | None:
            """Whether b's first input is a's output ("same"), or one elementwise op of it ("op")."""
            outs, inp = rec.out.get(id(a)) or [], rec.inp.get(id(b))
            if inp is None or not outs:
                return None
            if any(o is inp or (o.shape == inp.shape and o.data_ptr() == inp.data_ptr()) for o in outs):
                return "same"
            fn = inp.grad_fn
            parents = [f for f, _ in (fn.next_functions if fn is not None else ()) if f is not None]
            if len(parents) == 1 and any(o.grad_fn is parents[0] and o.shape == inp.shape for o in outs):
                return "op"
            return None

        layers, notes = discover(self.model, rec.order, feeds, lambda m: len(rec.out.get(id(m), ())), self.select)
        self.notes += notes
        if not layers:
            raise ValueError("the model's forward pass called no module that holds parameters")
        names = {id(m): clean_name(n) for n, m in self.model.named_modules()}
        def keeps_shape(m) -> bool:
            outs, inp = rec.out.get(id(m)), rec.inp.get(id(m))
            return bool(outs) and inp is not None and outs[0].shape == inp.shape

        from .structure import adds_input

        view = find_view(self.model, layers, names, rec.order, feeds, keeps_shape, lambda m: adds_input(m, rec)) \
            if self.select is None and self.hooks and not hasattr(self.model, "probe_layers") else None
        self._setup(layers, view)
        from .structure import detect

        self.structure = detect(self.model, layers, view, rec, feeds)  # once: the recorder still holds the graph

    @torch.no_grad()
    def after_backward(self, keep_hooks: bool = False, loss=None):
        """Gradient statistics, before clipping. Removes the hooks (keep_hooks: not yet, more
        micro-batches of this step will run forward: gradient accumulation). loss: the step's, for
        the forward finiteness check (_forward_check)."""
        if not keep_hooks:
            self.detach()
        if self.layers is None:
            self._discover()
        params = self._local(self.params)
        if all(p.grad is None for p in self.params):  # read as zeros, this would read "healthy"
            raise RuntimeError("vgrad: Monitor.step() found no gradient on any trainable parameter: call it after "
                               "loss.backward() (and before optimizer.step() / zero_grad())")
        grads = self._grads_or_zeros(params)
        self._grad_versions = [g._version for g in grads]
        self._grads = grads
        s = self.stats
        deltas, delta_index = self._deltas()
        both = norms64(grads + deltas)  # the parameters' gradients and δ: one pass of fused norms
        self.param_grad_norms = both[:len(grads)]
        s["grad_norm"] = per_layer_norm(self.param_grad_norms, self.param_layer, self.n)
        dt = torch.float64 if grads[0].dtype == torch.float64 else torch.float32  # float64: its tiny values too
        s["grad_max_abs"] = torch.zeros(self.n, dtype=dt, device=self.param_layer.device).scatter_reduce_(
            0, self.param_layer, abs_max_each(grads).to(dt), "amax", include_self=False
        )
        s["delta_norm"] = per_layer_norm(both[len(grads):], delta_index, self.n)
        # One fused norm over every parameter: weight_norm now, and the "before" norm of update_ratio
        # (the parameters do not change between here and the update; clipping touches only grads).
        self._param_norms = torch.stack(torch._foreach_norm(params)).float()
        s["weight_norm"] = per_layer_norm(self._param_norms[self.weight_index], self.weight_layer, self.n).float()
        weights = self._local(self.weights)
        if self._drift_buf is None:
            self._drift_buf = [torch.empty_like(w) for w in weights]
        for w, w0, d in zip(weights, self.w0, self._drift_buf):  # into a kept buffer: no allocation per step
            torch.sub(w, w0, out=d)
        drift = torch.stack(torch._foreach_norm(self._drift_buf)).float()
        s["_drift"] = per_layer_norm(drift, self.weight_layer, self.n).float()  # ||W - W0|| per row
        s["weight_drift"] = s["_drift"] / self.w0_norm
        self.act_layers, self.no_saturation, act = ([], set(), {}) if not self.keep_activations else \
            self.act_stats.compute(self.recorder, self.layers, self.saturation, self.nonnegative)
        s.update(act)
        if self.whh_layers:  # the W_hh this step's forward used (the update comes later)
            s["whh_spectral_radius"], s["whh_sigma_max"] = whh_spectra([self.layers[i].weight for i in self.whh_layers])
        # gradient through time: ||dL/dh_t|| (and an LSTM's ||dL/dc_t||) for every layer and t, fused norms
        for key, states in (("time_delta_norm", self.recorder.h), ("time_cell_grad_norm", self.recorder.c)):
            if states:
                norms = norms64([x.grad if x.grad is not None else torch.zeros_like(x) for x in states])
                s[key] = norms.reshape(self.n - 1, -1)
        s["grad_norm_total"] = s["grad_norm"].square().sum().sqrt()
        if self.view is not None:
            s.update(self.view.stats(s, self.w0_norm, self.recorder))
        s["_out"] = forward_check(self.layers, self.recorder, s, loss, self.param_layer.device)
        if not keep_hooks:
            self.recorder = None  # the outputs and activations it holds are not needed any more

    def _deltas(self) -> tuple[list, torch.Tensor]:
        """δ's tensors (the gradients at every layer's outputs, over all calls of its module) and the
        layer each belongs to."""
        rec, zs, index = self.recorder, [], []
        for i, layer in enumerate(self.layers):
            tensors = rec.z.get(i, []) if layer.delta is None else rec.out.get(id(layer.delta), [])
            # an output that does not require grad (below frozen layers only) has no δ at all
            tensors = [t for t in tensors if t.requires_grad] if layer.note != FROZEN else []
            zs += tensors
            index += [i] * len(tensors)
        self.missing_delta = set(range(self.n)) - set(index)
        key = tuple(index)
        if key not in self._index_cache:  # the same every logged step: made once
            self._index_cache = {key: torch.tensor(index, dtype=torch.long, device=self.param_layer.device)}
        return [z.grad if z.grad is not None else torch.zeros_like(z) for z in zs], self._index_cache[key]

    def unscale(self, inv_scale: torch.Tensor):
        """The gradient statistics of a step whose loss a GradScaler multiplied: divided by the
        scale (inv_scale, a 0-d device tensor; no host synchronisation), the gradients untouched."""
        for key in GRADIENT_STATS:
            if key in self.stats:
                self.stats[key] = self.stats[key] * inv_scale.to(self.stats[key].dtype)
        self.param_grad_norms = self.param_grad_norms * inv_scale

    @torch.no_grad()
    def after_clip(self, clipped: bool | None = True):
        """The total gradient norm after clipping; without clipping it is the norm already taken.
        clipped=None: not known (Monitor: the user's loop may clip): the norm already taken when
        every gradient is still the tensor measured, unmodified (same in-place version counter)."""
        if clipped is None:
            grads = self._grads
            clipped = len(grads) != len(self.params) or any(
                now is not g or g._version != v for now, g, v in zip(self._local([p.grad for p in self.params]), grads, self._grad_versions))
        self._grads = []
        self._clip_norms = self.param_grad_norms  # per parameter, as the optimizer will see them
        if not clipped:
            self.stats["grad_norm_clipped"] = self.stats["grad_norm_total"]
            return
        # a parameter without a gradient counts as zeros, as in after_backward: the per-parameter norms
        # stay aligned with the parameters (update_ratio's "sgd" rule reads them)
        self._clip_norms = norms64(self._grads_or_zeros(self._local(self.params)))
        self.stats["grad_norm_clipped"] = self._clip_norms.square().sum().sqrt()

    def _grads_or_zeros(self, params: list) -> list:
        """This rank's gradients of the trainable parameters, zeros where a parameter has none."""
        return [g if g is not None else torch.zeros_like(p) for g, p in zip(self._local([p.grad for p in self.params]), params)]

    @torch.no_grad()
    def before_update(self, optimizer=None, how: str = "copy"):
        """Just before the optimizer's step (after after_clip). optimizer, how: updates.rule()'s reading."""
        if self._updates is None:
            self._updates = UpdateNorms(optimizer, self.params, how)
        params = self._local(self.params)
        # only the "sgd" rule with weight decay reads the gradients themselves (after_backward has
        # already refused a step without any)
        grads = self._grads_or_zeros(params) if self._updates.how == "sgd" else []
        self._updates.before(params, grads, self._clip_norms)

    @torch.no_grad()
    def after_update(self):
        if self._updates is None or self._param_norms is None:
            raise RuntimeError("after_update needs after_backward and before_update on the same step")
        upd = per_layer_norm(self._updates.after(self._local(self.params)), self.param_layer, self.n)
        old = per_layer_norm(self._param_norms, self.param_layer, self.n)
        self.stats["update_ratio"] = upd / old  # a row whose parameters are all 0 gets none (rows())
        self.stats["_old"], self.stats["_upd"] = old, upd
        if self.view is not None and "view_grad_norm" in self.stats:
            self.stats.update(self.view.update(upd, old))

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
        output layer, update_ratio on the final step, δ of a layer the forward pass skipped, every
        parameter column of a frozen row) stays None (an empty cell)."""
        act_pos = {layer: k for k, layer in enumerate(self.act_layers)}
        whh_pos = {layer: k for k, layer in enumerate(self.whh_layers)}
        old = columns.get("_old")
        out = []
        for i, layer in enumerate(self.layers):
            row = {"step": step, "layer": i, "name": layer.name}
            for col in LAYER_COLUMNS[3:]:
                vals = columns.get(col)
                if col.startswith("act_"):
                    k = act_pos.get(i)
                    unknown = col == "act_saturated_frac" and i in self.no_saturation
                    row[col] = vals[k] if vals is not None and k is not None and not unknown else None
                elif col.startswith("whh_"):
                    k = whh_pos.get(i)
                    row[col] = vals[k] if vals is not None and k is not None else None
                elif col == "note":
                    row[col] = layer.note or None
                elif (col == "delta_norm" and i in self.missing_delta) or (col in PARAM_COLUMNS and i in self.empty) \
                        or (col == "weight_drift" and i in self.no_drift) or (
                        col == "update_ratio" and old is not None and old[i] == 0):
                    row[col] = None
                else:
                    row[col] = vals[i] if vals is not None and i < len(vals) else None
            out.append(row)
        return out

    def view_rows(self, step: int, columns: dict) -> list[dict] | None:
        """blocks.csv rows (None: no block view, or not measured on this step)."""
        if self.view is None or "view_grad_norm" not in columns:
            return None
        return self.view.table(step, columns, BLOCK_COLUMNS)
