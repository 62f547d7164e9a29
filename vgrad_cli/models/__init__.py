"""Model builders: model.kind -> nn.Module (mlp.py: mlp; cnn.py: cnn; recurrent.py: rnn, lstm, gru;
transformer.py: transformer). Imports
torch, activations.py, inits.py and measure.layers. Every model declares `probe_layers()` (the rows
of layers.csv, input side first, and where the probe hooks each); recurrent ones also record
hidden states through `model.recorder`, which the probe sets on logged steps only.
"""

from __future__ import annotations

from ..measure.layers import ProbeLayer  # noqa: F401  (what probe_layers() returns)


def build_model(model_cfg, task, seed: int):
    import torch

    from .cnn import CNN
    from .mlp import MLP
    from .recurrent import RecurrentNet
    from .transformer import Transformer

    torch.manual_seed(seed)  # the init draws from the global generator: seed it for determinism
    if model_cfg.kind == "mlp":
        return MLP(model_cfg, task.input_dim, task.output_dim)
    if model_cfg.kind == "cnn":  # an image task's input_dim is its channels
        return CNN(model_cfg, task.input_dim, task.output_dim)
    if model_cfg.kind == "transformer":  # its positional embedding has one row per time step
        return Transformer(model_cfg, task.input_dim, task.output_dim, task.x_train.shape[1], task.output_steps)
    return RecurrentNet(model_cfg, task.input_dim, task.output_dim, task.output_steps)
