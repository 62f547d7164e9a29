"""What one logged forward pass hands the probe: the Recorder the hooks (and vgrad's recurrent
models) write into."""

from __future__ import annotations

import torch


def first_tensor(x):
    """A module's output as one tensor: the first tensor of a tuple/list (an LSTM's output sequence,
    attention's output), else None (e.g. a dict)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        return next((t for t in x if isinstance(t, torch.Tensor)), None)
    return None


class Recorder:
    """What one logged forward pass hands the probe.

    By module (hooks): every output of a watched module (δ candidates keep their gradient; several
    calls of one module are several tensors) and the first input. By layer index (a model's own
    calls, vgrad's recurrent nets): record(layer, z, a) and the hidden states through time.
    """

    def __init__(self, keep_activations: bool):
        self.keep_activations = keep_activations
        self.out: dict = {}    # id(module) -> [output tensors]
        self.inp: dict = {}    # id(module) -> its first input (detached)
        self.order: list = []  # modules in first-call order (what discovery reads)
        self.z: dict = {}      # layer index -> [tensors whose gradient is δ]
        self.a: dict = {}      # layer index -> activation tensor
        self.h: list = []      # recurrent models: every hidden state h_t, layer by layer
        self.c: list = []      # LSTMs: every cell state c_t, layer by layer (the long-range carrier)

    # --- hooks ---
    # A forward pass without autograd (an evaluation between two training steps, under no_grad or
    # inference_mode) has no δ and is not the training batch: not recorded.
    def on_output(self, module, output, keep_grad: bool):
        if not torch.is_grad_enabled():
            return
        t = first_tensor(output)
        if t is None:
            return
        if id(module) not in self.out:
            self.order.append(module)
        if keep_grad and t.requires_grad:
            t.retain_grad()
            self.out.setdefault(id(module), []).append(t)
        else:
            self.out.setdefault(id(module), []).append(t.detach())

    def on_input(self, module, args, kwargs=None, keep_grad: bool = False):
        """A module's first input (the hidden states a block receives, as an argument or as the
        keyword `hidden_states`). keep_grad: its gradient is wanted too (the stream entering a stack)."""
        if not torch.is_grad_enabled() or id(module) in self.inp:
            return
        t = first_tensor(args)
        if t is None and kwargs:
            t = kwargs.get("hidden_states") if isinstance(kwargs.get("hidden_states"), torch.Tensor) else \
                first_tensor(list(kwargs.values()))
        if t is None:
            return
        if keep_grad and t.requires_grad:
            t.retain_grad()
        self.inp[id(module)] = t

    # --- a model's own calls ---
    def record_time(self, layer: int, t: int, h, c=None):
        h.retain_grad()
        self.h.append(h)
        if c is not None:
            c.retain_grad()
            self.c.append(c)

    def record(self, layer: int, z, a):
        if z.requires_grad:
            z.retain_grad()
        self.z.setdefault(layer, []).append(z)
        if a is not None and self.keep_activations:
            self.a[layer] = a.detach()
