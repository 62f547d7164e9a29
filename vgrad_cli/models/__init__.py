"""Model registry: model.kind -> builder(model_config, task_data) -> nn.Module.

Every model exposes `probe_layers()` (the rows of layers.csv, input side first) and a
`recorder` attribute that the probes set on logged steps only (None otherwise: zero cost).
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

    builders = {"mlp": MLP}
    torch.manual_seed(seed)  # the init draws from the global generator: seed it for determinism
    return builders[model_cfg.kind](model_cfg, task.input_dim, task.output_dim)
