"""Recurrent models: `depth` stacked RNN / LSTM / GRU layers of `width` units, then a Linear head on
the last `output_steps` hidden states of the top layer.

Two paths over the same parameters:
- unlogged steps run torch's fused nn.RNN/nn.LSTM/nn.GRU (fast; cuDNN on GPU);
- logged steps (a recorder is attached) unroll the same weights step by step with torch's cell
  functions, so every hidden state h_t stays in the graph and its gradient dL/dh_t can be read:
  that is the gradient-through-time table (time.csv); an LSTM's cell states c_t too (dL/dc_t: the
  path its memory takes back in time).
Between stacked layers: optional LayerNorm and a residual skip (layers after the first). Batch
norm inside a recurrence is rejected by the config.
"""

from __future__ import annotations

import torch
from torch import nn

from ..activations import ACTIVATIONS
from ..inits import INITS
from ..measure.layers import ProbeLayer

GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # row blocks of weight_ih / weight_hh


def _cell_fn(kind: str, activation: str | None):
    if kind == "lstm":
        return torch.lstm_cell
    if kind == "gru":
        return torch.gru_cell
    return torch.rnn_relu_cell if activation == "relu" else torch.rnn_tanh_cell


class RecurrentNet(nn.Module):
    def __init__(self, cfg, input_dim: int, output_dim: int, output_steps: int = 1):
        super().__init__()
        self.kind, self.width, self.output_steps = cfg.kind, cfg.width, output_steps
        rnn_cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cfg.kind]
        extra = {"nonlinearity": cfg.activation} if cfg.kind == "rnn" else {}
        self.layers = nn.ModuleList(
            rnn_cls(input_dim if i == 0 else cfg.width, cfg.width, batch_first=True, **extra)
            for i in range(cfg.depth)
        )
        self.norms = nn.ModuleList(
            nn.LayerNorm(cfg.width) if cfg.norm == "layer" else nn.Identity() for _ in range(cfg.depth)
        )
        self.skips = [cfg.residual and i > 0 for i in range(cfg.depth)]
        self.head = nn.Linear(cfg.width, output_dim)
        self.cell = _cell_fn(cfg.kind, cfg.activation)
        self.recorder = None
        # the hidden state's range: tanh's (-1, 1) for lstm/gru too; the probe's saturation rule
        self.activation = cfg.activation or "tanh"
        self._init(cfg)

    @torch.no_grad()
    def _init(self, cfg):
        act = ACTIVATIONS[cfg.activation or "tanh"]
        g = GATES[cfg.kind]
        for rnn in self.layers:
            # Each gate's block is initialised on its own: fans and orthogonality are per gate.
            for block in rnn.weight_ih_l0.chunk(g, 0):
                INITS[cfg.init](block, act, cfg.init_std)
            for block in rnn.weight_hh_l0.chunk(g, 0):
                INITS[cfg.recurrent_init](block, act, cfg.recurrent_std)
            rnn.bias_ih_l0.fill_(cfg.bias_init)
            rnn.bias_hh_l0.zero_()  # the cell adds both biases: keep one
            if cfg.kind == "lstm":  # gate order i, f, g, o
                rnn.bias_ih_l0[self.width : 2 * self.width].fill_(cfg.forget_bias or 0.0)
                if cfg.chrono_init is not None:
                    self._chrono(rnn.bias_ih_l0, cfg.chrono_init)
        INITS[cfg.init](self.head.weight, ACTIVATIONS["linear"], cfg.init_std)
        self.head.bias.fill_(cfg.bias_init)

    def _chrono(self, bias, t_max: int):
        """Chrono init (Tallec & Ollivier 2018): with the forget gate at sigmoid(b_f) = u / (1 + u),
        a cell forgets over ~u steps; b_f = log u, u ~ U(1, T_max - 1), spreads the units' memory
        lengths over 1..T_max. b_i = -b_f keeps a long-memory unit from being overwritten by every
        input."""
        h = self.width
        b_f = torch.empty(h).uniform_(1, t_max - 1).log_()
        bias[h : 2 * h] = b_f
        bias[:h] = -b_f

    def forward(self, x):  # x: (batch, time, features)
        # an evaluation (no autograd) between a logged step's backward and its update stays fused
        rec = self.recorder if torch.is_grad_enabled() else None
        seq = x
        for i, (rnn, norm) in enumerate(zip(self.layers, self.norms)):
            out = self._unrolled(i, rnn, seq, rec) if rec is not None else rnn(seq)[0]
            out = norm(out)
            seq = seq + out if self.skips[i] else out
        out = self.head(seq[:, -self.output_steps :])
        if rec is not None:
            rec.record(len(self.layers), out, None)
        return out.squeeze(1) if self.output_steps == 1 else out

    def _unrolled(self, layer: int, rnn, seq, rec):
        """The same layer, one time step at a time, recording every hidden state h_t."""
        w_ih, w_hh, b_ih, b_hh = rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
        h = seq.new_zeros(seq.shape[0], self.width)
        c = h if self.kind == "lstm" else None
        states = []
        for t, x_t in enumerate(seq.unbind(1)):
            if c is not None:
                h, c = self.cell(x_t, (h, c), w_ih, w_hh, b_ih, b_hh)
            else:
                h = self.cell(x_t, h, w_ih, w_hh, b_ih, b_hh)
            rec.record_time(layer, t, h, c)
            states.append(h)
        out = torch.stack(states, 1)
        # the layer's row in layers.csv: delta at its last hidden state, activations = all h_t
        rec.record(layer, h, out.reshape(-1, self.width))
        return out

    def probe_layers(self) -> list[ProbeLayer]:
        layers = [
            ProbeLayer(f"{self.kind}{i}", list(rnn.parameters()) + list(norm.parameters()), rnn.weight_hh_l0,
                       recurrent=True, activation=self.activation)
            for i, (rnn, norm) in enumerate(zip(self.layers, self.norms))
        ]
        layers.append(ProbeLayer("output", list(self.head.parameters()), self.head.weight))
        return layers
