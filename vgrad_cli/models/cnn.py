"""The CNN: `depth` conv blocks (3x3 convolution, `width` channels, zero padding 1 so the image keeps
its size -> norm -> activation), then global average pooling and a linear head.

The same rows as the MLP (models/mlp.py): one per block, δ at the norm's output (the input of the
nonlinearity), then the head. With `residual`, blocks after the first add their output to their
input (the first changes the channels from the image's to `width`, so it has no skip: He et al.
2016's identity shortcuts), scaled by `residual_scale` s as in the MLP: h <- h + s * F(h). `norm: layer` is GroupNorm(1, width): each example's (C, H, W)
normalised together, as LayerNorm over a block's whole output, with one scale and shift per channel
(not per pixel), so it does not fix the image size.
"""

from __future__ import annotations

from torch import nn

from ..activations import ACTIVATIONS
from ..measure.layers import ProbeLayer
from .mlp import init_weights

NORM_LAYERS = {"none": lambda width: nn.Identity(), "batch": nn.BatchNorm2d,
               "layer": lambda width: nn.GroupNorm(1, width)}
KERNEL = 3


class ConvBlock(nn.Module):
    def __init__(self, channels_in: int, width: int, cfg, skip: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, width, KERNEL, padding=KERNEL // 2)
        self.norm = NORM_LAYERS[cfg.norm](width)
        self.act = ACTIVATIONS[cfg.activation].build(width)  # PReLU: one slope per channel
        self.skip = skip


class CNN(nn.Module):
    def __init__(self, cfg, channels_in: int, output_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            ConvBlock(channels_in if i == 0 else cfg.width, cfg.width, cfg, skip=cfg.residual and i > 0)
            for i in range(cfg.depth)
        )
        self.head = nn.Linear(cfg.width, output_dim)
        self.scale = cfg.branch_scale()  # residual_scale: 1.0 unless set (only with residual)
        self.activation = cfg.activation  # its name: the probe's saturation rule for the conv rows
        init_weights([b.conv for b in self.blocks], self.head, cfg)  # a conv's fan_in: channels_in x 9

    def forward(self, x):  # x: (batch, channels, height, width)
        h = x
        for block in self.blocks:
            a = block.act(block.norm(block.conv(h)))
            h = h + self.scale * a if block.skip else a
        return self.head(h.mean((2, 3)))

    def probe_layers(self) -> list[ProbeLayer]:
        # the channels are the units (axis 1): activation statistics per channel, over batch and pixels
        layers = [ProbeLayer(f"conv{i}", list(b.parameters()), b.conv.weight, delta=b.norm, act=b.act, channel_dim=1,
                             activation=self.activation) for i, b in enumerate(self.blocks)]
        layers.append(ProbeLayer("output", list(self.head.parameters()), self.head.weight, delta=self.head))
        return layers
