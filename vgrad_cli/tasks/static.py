"""Fixed-size-input tasks for MLPs. Baselines (input-blind loss) are in docs/tasks.md."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from .base import TaskBase, classification, regression


class Teacher(TaskBase):
    """Regression on the outputs of a random tanh teacher MLP; targets standardised (baseline MSE ~1)."""

    name: Literal["teacher"] = "teacher"
    input_dim: int = Field(16, ge=1)
    output_dim: int = Field(1, ge=1)
    teacher_depth: int = Field(2, ge=1)
    teacher_width: int = Field(32, ge=1)
    noise: float = Field(0.0, ge=0, description="std of Gaussian noise added to the standardised targets")

    def generate(self, n, g):
        import torch

        x = torch.randn(n, self.input_dim, generator=g)
        h, fan_in = x, self.input_dim
        for _ in range(self.teacher_depth):
            w = torch.randn(fan_in, self.teacher_width, generator=g) / math.sqrt(fan_in)
            h, fan_in = torch.tanh(1.5 * h @ w), self.teacher_width
        y = h @ (torch.randn(fan_in, self.output_dim, generator=g) / math.sqrt(fan_in))
        y = (y - y.mean(0)) / y.std(0).clamp_min(1e-8)
        return x, y + self.noise * torch.randn(y.shape, generator=g)

    def finish(self, xt, yt, xe, ye):
        return regression(xt, yt, xe, ye)


class Spirals(TaskBase):
    """Two interleaved spirals (2 classes); with input_dim > 2 the plane is embedded by a random rotation."""

    name: Literal["spirals"] = "spirals"
    turns: float = Field(1.5, gt=0, description="how many times each spiral winds around the centre")
    noise: float = Field(0.05, ge=0, description="std of Gaussian noise on each coordinate")
    input_dim: int = Field(2, ge=2)

    def generate(self, n, g):
        import torch

        y = torch.randint(0, 2, (n,), generator=g)
        r = torch.rand(n, generator=g) * 0.9 + 0.1
        theta = r * self.turns * 2 * math.pi + y * math.pi
        x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1) * 1.5
        x = x + self.noise * torch.randn(x.shape, generator=g)
        if self.input_dim > 2:
            q, _ = torch.linalg.qr(torch.randn(self.input_dim, 2, generator=g))
            x = x @ q.T
        return x, y

    def finish(self, xt, yt, xe, ye):
        return classification(xt, yt, xe, ye, 2)


class Parity(TaskBase):
    """n-bit parity of +-1 inputs: the label is 1 when the number of +1 bits is odd."""

    name: Literal["parity"] = "parity"
    n_bits: int = Field(8, ge=1, le=64)

    def generate(self, n, g):
        import torch

        bits = torch.randint(0, 2, (n, self.n_bits), generator=g)
        return bits.float() * 2 - 1, bits.sum(1) % 2

    def finish(self, xt, yt, xe, ye):
        return classification(xt, yt, xe, ye, 2)


class Blobs(TaskBase):
    """Gaussian mixture: n_classes isotropic clusters with centres drawn N(0, separation^2)."""

    name: Literal["blobs"] = "blobs"
    n_classes: int = Field(4, ge=2)
    input_dim: int = Field(8, ge=1)
    separation: float = Field(2.0, gt=0, description="std of the cluster centres (cluster std is 1)")

    def generate(self, n, g):
        import torch

        centres = torch.randn(self.n_classes, self.input_dim, generator=g) * self.separation
        y = torch.randint(0, self.n_classes, (n,), generator=g)
        return centres[y] + torch.randn(n, self.input_dim, generator=g), y

    def finish(self, xt, yt, xe, ye):
        return classification(xt, yt, xe, ye, self.n_classes)
