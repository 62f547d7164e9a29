"""The MLP: `depth` hidden blocks Linear -> (norm) -> activation, then an output Linear.

With `residual`, blocks after the first add their output to their input (the first block changes
the width from input_dim to width, so it has no skip), scaled by `residual_scale` s: h <- h + s * F(h)
(s = 1/sqrt(depth) keeps the stream's variance from compounding: analysis/residual.py). Layer 0 is the block nearest the input;
the output Linear is layer `depth`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..activations import ACTIVATIONS
from ..inits import INITS
from ..measure.layers import ProbeLayer

NORM_LAYERS = {"none": lambda width: nn.Identity(), "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


@torch.no_grad()
def init_weights(hidden: list, head, cfg):
    """model.init on each hidden layer's weight (Linear or Conv: torch counts a kernel's fan) and on
    the head, which is linear: the same scheme, with the linear gain for kaiming_*. Biases: bias_init."""
    act = ACTIVATIONS[cfg.activation]
    for layer in hidden:
        INITS[cfg.init](layer.weight, act, cfg.init_std)
        layer.bias.fill_(cfg.bias_init)
    INITS[cfg.init](head.weight, ACTIVATIONS["linear"], cfg.init_std)
    head.bias.fill_(cfg.bias_init)


class Block(nn.Module):
    def __init__(self, fan_in: int, width: int, cfg, skip: bool):
        super().__init__()
        self.linear = nn.Linear(fan_in, width)
        self.norm = NORM_LAYERS[cfg.norm](width)
        self.act = ACTIVATIONS[cfg.activation].build(width)
        self.skip = skip


class MLP(nn.Module):
    def __init__(self, cfg, input_dim: int, output_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(input_dim if i == 0 else cfg.width, cfg.width, cfg, skip=cfg.residual and i > 0)
            for i in range(cfg.depth)
        )
        self.head = nn.Linear(cfg.width, output_dim)
        self.scale = cfg.branch_scale()
        self.activation = cfg.activation  # its name: the probe's saturation rule for the hidden rows
        init_weights([b.linear for b in self.blocks], self.head, cfg)

    def forward(self, x):
        h = x
        for i in range(len(self.blocks)):
            h = self.block_step(i, h)
        return self.head(h)

    def block_step(self, i: int, h):
        """Hidden block i on its input h (its own residual skip included): one layer's map, which
        the Jacobian spectrum (measure/jacobian.py) differentiates block by block."""
        block = self.blocks[i]
        a = block.act(block.norm(block.linear(h)))
        return h + self.scale * a if block.skip else a

    def probe_layers(self) -> list[ProbeLayer]:
        # δ at the norm's output: the pre-activation z, i.e. the input of the nonlinearity. With batch
        # norm, the Linear's raw output would fold BN's 1/sigma into δ and hide what the activation
        # does to the gradient. The activation statistics: the activation module's output.
        layers = [ProbeLayer(f"hidden{i}", list(b.parameters()), b.linear.weight, delta=b.norm, act=b.act,
                             activation=self.activation) for i, b in enumerate(self.blocks)]
        layers.append(ProbeLayer("output", list(self.head.parameters()), self.head.weight, delta=self.head))
        return layers
