"""Image tasks for convolutional models (model.kind cnn). Inputs are (batch, 1, size, size): one
grayscale channel. Baselines are in docs/tasks.md.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .base import TaskBase, classification

# The classes, in order: `n_classes: k` uses the first k. Each is a mask of the pixels within
# "radius" r of the centre (dy, dx: offsets from it, in pixels).
SHAPES = ("square", "disc", "plus", "triangle", "ring", "x")


def _mask(shape: str, dy, dx, r):
    ay, ax = dy.abs(), dx.abs()
    if shape == "square":
        return (ay <= r) & (ax <= r)
    if shape == "disc":
        return dy**2 + dx**2 <= r**2
    if shape == "plus":  # two bars, 3 pixels thick
        return ((ay <= 1) & (ax <= r)) | ((ax <= 1) & (ay <= r))
    if shape == "triangle":  # apex up, base at dy = r: the width grows from 0 to 2r going down
        return (dy >= -r) & (dy <= r) & (ax <= (dy + r) / 2)
    if shape == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (r - 2) ** 2)
    return ((ax - ay).abs() <= 1) & (ay <= r)  # "x": the two diagonals


class Shapes(TaskBase):
    """Small grayscale images of one shape each (square, disc, plus, triangle, ring, x: the first
    `n_classes`) at a random position and size, with Gaussian pixel noise; the label is the shape."""

    model_kinds: ClassVar[tuple[str, ...]] = ("cnn",)
    name: Literal["shapes"] = "shapes"
    image_size: int = Field(16, ge=8, le=64, description="images are image_size x image_size pixels")
    n_classes: int = Field(4, ge=2, le=len(SHAPES), description=f"shape classes: the first k of {', '.join(SHAPES)}")
    noise: float = Field(0.3, ge=0, description="std of Gaussian noise on each pixel (shapes are 1 on a 0 background)")
    train_size: int = Field(4096, ge=1, description="images in the fixed training set")
    eval_size: int = Field(512, ge=1, description="images in the fixed held-out evaluation set")

    def generate(self, n, g):
        import torch

        s = self.image_size
        y = torch.randint(0, self.n_classes, (n,), generator=g)
        # radius between s/8 and s/4 (2..4 pixels at 16x16), centre so the shape stays inside
        lo, hi = max(2, s // 8), max(3, s // 4)
        r = torch.randint(lo, hi + 1, (n,), generator=g).float()
        cy = r + torch.rand(n, generator=g) * (s - 1 - 2 * r)
        cx = r + torch.rand(n, generator=g) * (s - 1 - 2 * r)
        grid = torch.arange(s, dtype=torch.float32)
        dy = (grid.view(1, s, 1) - cy.round().view(n, 1, 1)).expand(n, s, s)
        dx = (grid.view(1, 1, s) - cx.round().view(n, 1, 1)).expand(n, s, s)
        r = r.view(n, 1, 1)
        x = torch.zeros(n, s, s)
        for k, shape in enumerate(SHAPES[: self.n_classes]):
            pick = y == k
            x[pick] = _mask(shape, dy[pick], dx[pick], r[pick]).float()
        x = x + self.noise * torch.randn(x.shape, generator=g)
        # standardise (one mean and std over every pixel): inputs of unit scale, as the theory assumes
        x = (x - x.mean()) / x.std().clamp_min(1e-8)
        return x.unsqueeze(1), y

    def finish(self, xt, yt, xe, ye):
        data = classification(xt, yt, xe, ye, self.n_classes)
        data.input_dim = xt.shape[1]  # input channels
        return data
