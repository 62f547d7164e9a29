"""The Transformer encoder: an embedding, `depth` blocks (multi-head self-attention and an MLP, each
in a residual branch), then a Linear head on the last `output_steps` positions.

    embedding   h_0 = x W_e + b_e + P            (P: a learned positional embedding, one row per t)
    post (Vaswani et al. 2017):  h = LN(h + Attn(h));     h = LN(h + MLP(h))
    pre  (Xiong et al. 2020):    h = h + Attn(LN(h));     h = h + MLP(LN(h));  a final LN before the head

The attention is not causal: the sequence tasks put their targets on the last positions and never
in the input, so every position may see the whole sequence (as a BERT-style encoder does).
Attention is written from nn.Linear and scaled_dot_product_attention, so every parameter is in a
module vgrad declares. No dropout: a measurement must not depend on a random mask.

Rows of layers.csv, one per block (docs/run-format.md): `embedding`, `block0` ... `block{depth-1}`,
`output`. A block's δ is the gradient at its output, the residual stream after the block (the same
(batch, time, width) tensor for every block, so δ is comparable across blocks); the embedding's δ is
at h_0, the stream entering block 0; the output row's δ at the head's output. A block's activation
statistics are those of its MLP's hidden units; the embedding's, those of h_0.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..activations import ACTIVATIONS
from ..inits import INITS
from ..measure.layers import ProbeLayer

MLP_RATIO = 4  # the MLP's hidden width is 4 x width, as in Vaswani et al. and BERT
POS_STD = 0.02  # the positional embedding's init (BERT's): small beside the input projection


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, h):
        b, t, w = h.shape
        # (batch, time, 3 width) -> three (batch, heads, time, width/heads)
        q, k, v = self.qkv(h).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, no mask
        return self.out(a.transpose(1, 2).reshape(b, t, w))


class Block(nn.Module):
    def __init__(self, width: int, cfg):
        super().__init__()
        self.post = cfg.norm_position == "post"
        self.attn = SelfAttention(width, cfg.heads)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.ff1 = nn.Linear(width, MLP_RATIO * width)
        self.act = ACTIVATIONS[cfg.activation].build(MLP_RATIO * width)
        self.ff2 = nn.Linear(MLP_RATIO * width, width)

    def mlp(self, h):
        z = self.ff1(h)
        # (batch x time, units): PReLU's per-unit slopes read axis 1 as the units
        return self.ff2(self.act(z.reshape(-1, z.shape[-1])).view(z.shape))

    def forward(self, h):
        if self.post:
            h = self.norm1(h + self.attn(h))
            return self.norm2(h + self.mlp(h))
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class Embedding(nn.Module):
    def __init__(self, input_dim: int, width: int, seq_len: int):
        super().__init__()
        self.proj = nn.Linear(input_dim, width)
        self.pos = nn.Parameter(torch.zeros(seq_len, width))

    def forward(self, x):
        return self.proj(x) + self.pos[: x.shape[1]]


class Transformer(nn.Module):
    def __init__(self, cfg, input_dim: int, output_dim: int, seq_len: int, output_steps: int = 1):
        super().__init__()
        self.output_steps = output_steps
        self.activation = cfg.activation  # its name: the probe's saturation rule for the blocks' MLP units
        self.embedding = Embedding(input_dim, cfg.width, seq_len)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg) for _ in range(cfg.depth))
        # Post-LN's last block already ends in a LayerNorm; Pre-LN's stream needs one before the head
        self.final_norm = nn.LayerNorm(cfg.width) if cfg.norm_position == "pre" else nn.Identity()
        self.head = nn.Linear(cfg.width, output_dim)
        self._init(cfg)

    @torch.no_grad()
    def _init(self, cfg):
        linear, act = ACTIVATIONS["linear"], ACTIVATIONS[cfg.activation]
        layers = [(self.embedding.proj.weight, linear), (self.head.weight, linear)]
        for b in self.blocks:
            # q, k and v are three matrices stacked in one Linear: each is initialised on its own
            layers += [(w, linear) for w in b.attn.qkv.weight.chunk(3, 0)]
            layers += [(b.attn.out.weight, linear), (b.ff1.weight, act), (b.ff2.weight, linear)]
        for w, a in layers:
            INITS[cfg.init](w, a, cfg.init_std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.bias.fill_(cfg.bias_init)
        self.embedding.pos.normal_(0.0, POS_STD)

    def forward(self, x):  # x: (batch, time, features)
        h = self.embedding(x)
        for block in self.blocks:
            h = block(h)
        out = self.head(self.final_norm(h[:, -self.output_steps :]))
        return out.squeeze(1) if self.output_steps == 1 else out

    def probe_layers(self) -> list[ProbeLayer]:
        emb = self.embedding
        layers = [ProbeLayer("embedding", list(emb.parameters()), emb.proj.weight, delta=emb, act=emb,
                             activation="linear")]
        layers += [ProbeLayer(f"block{i}", list(b.parameters()), b.ff1.weight, delta=b, act=b.act,
                              activation=self.activation) for i, b in enumerate(self.blocks)]
        head = list(self.final_norm.parameters()) + list(self.head.parameters())
        layers.append(ProbeLayer("output", head, self.head.weight, delta=self.head))
        return layers
