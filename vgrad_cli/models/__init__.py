"""Model builders: model.kind -> nn.Module (mlp.py: mlp; recurrent.py: rnn, lstm, gru). Imports
torch, activations.py and inits.py only. Every model exposes `probe_layers()` (the rows of
layers.csv, input side first) and a `recorder` attribute that the probes set on logged steps only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ProbeLayer:
    name: str
    params: list     # every parameter of the layer: grad_norm and update_ratio cover all of them
    weight: Any      # the layer's main weight matrix: weight_norm and weight_drift


def build_model(model_cfg, task, seed: int):
    import torch

    from .mlp import MLP
    from .recurrent import RecurrentNet

    torch.manual_seed(seed)  # the init draws from the global generator: seed it for determinism
    if model_cfg.kind == "mlp":
        return MLP(model_cfg, task.input_dim, task.output_dim)
    return RecurrentNet(model_cfg, task.input_dim, task.output_dim, task.output_steps)
