"""The singular values of a network's Jacobian, layer map by layer map (dynamical isometry).

Pennington, Schoenholz & Ganguli 2017: a network learns fast when the singular values s of its
input-output Jacobian J = A_L ... A_1 (A_l = d h_l / d h_{l-1}, one per layer map) all stay near 1,
not only their mean square (which is what chi_1 predicts). We compute each A_l per example (in
float64, by autograd) and multiply them:

- s_max, mean s^2 and the variance of s^2 come from svdvals(J): these are dominated by the large
  singular values, which float64 gets to ~1e-15 relative;
- s_min does NOT: svdvals(J) is only accurate down to ~eps * s_max, and a Gaussian tanh net at depth
  30 has s_min ~ 1e-46 (float64 reports its rounding floor, ~1e-19; float32 ~1e-10). So s_min is
  1 / s_max(J^-1), with J^-1 = A_1^-1 ... A_L^-1 multiplied layer by layer: the largest singular
  value of that product is again accurate to ~1e-13 relative. A layer whose A_l is exactly
  singular (a ReLU unit at 0 zeroes a row) makes J singular: s_min = 0 exactly.
- J^-1 can outgrow float64 (s_min < ~1e-308: a GELU + Kaiming net at depth 30, width 512), so the
  inverse product is rescaled after every layer and its scale kept as a log: log10_s_min is exact
  even where s_min itself underflows to 0 (`s_min_underflow` says so; `singular_examples` counts
  the exactly singular ones).

Square layer maps only (width -> width): the caller leaves out the input and output layers.
Imports torch only.
"""

from __future__ import annotations

import math

import torch


def layer_jacobians(steps, h0):
    """Per-example Jacobians of each layer map, in float64, walking the batch through the layers.
    steps: callables on a batch (n, width) -> (n, width) whose rows do not interact (no batch norm
    in training mode); h0: (n, width). Yields (n, width, width) tensors, A_1 first."""
    h = h0.detach().to(torch.float64)
    for step in steps:
        yield row_jacobians(step, h)
        with torch.no_grad():
            h = step(h)


def row_jacobians(step, h):
    """J[e, i, j] = d step(h)[e, i] / d h[e, j], with one backward pass: the batch is repeated
    width times, copy i keeps only output i, and since rows are independent the gradient of copy
    i is row i of every example's Jacobian. (torch.func.jacrev gives the same, but its first call
    costs ~2 s of set-up, and this runs at the end of every `vgrad run`.)"""
    n, width = h.shape
    rep = h.detach().unsqueeze(0).expand(width, n, width).reshape(width * n, width).clone().requires_grad_(True)
    with torch.enable_grad():
        out = step(rep).reshape(width, n, -1)
        if out.shape[-1] != width:
            raise ValueError(f"a layer map must be square: {width} -> {out.shape[-1]}")
        i = torch.arange(width)
        (grad,) = torch.autograd.grad(out[i, :, i].sum(), rep)
    return grad.reshape(width, n, width).transpose(0, 1)


@torch.no_grad()
def spectrum(steps, h0) -> dict:
    """Singular values of J = A_L ... A_1 for every example of h0, pooled over the examples."""
    n, width = h0.shape
    eye = torch.eye(width, dtype=torch.float64).expand(n, width, width)
    j, j_inv, singular = eye.clone(), eye.clone(), torch.zeros(n, dtype=torch.bool)
    log10_inv_scale = torch.zeros(n, dtype=torch.float64)  # J^-1 = j_inv * 10^log10_inv_scale
    layers = 0
    for a in layer_jacobians(steps, h0):
        layers += 1
        j = a @ j
        inv, info = torch.linalg.inv_ex(a)  # info > 0: an exactly singular layer map
        singular |= info > 0
        j_inv = j_inv @ torch.where((info > 0)[:, None, None], eye, inv)
        # keep the product near 1 so it never overflows: each layer's inverse can be ~1e10
        scale = j_inv.abs().amax(dim=(1, 2)).clamp_min(1e-300)
        j_inv = j_inv / scale[:, None, None]
        log10_inv_scale += scale.log10()
    s = torch.linalg.svdvals(j)                      # (n, width), descending
    log10_s_min = -(torch.linalg.svdvals(j_inv)[:, 0].log10() + log10_inv_scale)
    s_min = torch.where(singular, torch.zeros(n, dtype=torch.float64), 10.0 ** log10_s_min)
    s_max = s[:, 0]
    s2 = s.square()
    log10_cond = [math.inf if sing else math.log10(a) - b
                  for a, b, sing in zip(s_max.tolist(), log10_s_min.tolist(), singular.tolist())]
    nonsingular = [b for b, sing in zip(log10_s_min.tolist(), singular.tolist()) if not sing]
    return {
        "layers": layers, "width": width, "examples": n,
        "mean_s2": float(s2.mean()), "std_s2": float(s2.std(correction=0)),
        "s_max": float(s_max.max()), "s_min": float(s_min.min()),
        # log10 of the smallest non-singular example's s_min, exact where s_min underflows float64
        "log10_s_min": min(nonsingular) if nonsingular else None,
        "s_min_underflow": bool(((s_min == 0) & ~singular).any()),
        # how far the spectrum spreads: the condition number s_max / s_min, per example (median)
        "log10_condition_median": _median(log10_cond),
        "singular_examples": int(singular.sum()),
        # what an SVD of J itself would have said: its smallest value, for the record (a float64
        # rounding floor where the true s_min is far below eps * s_max)
        "s_min_svd_of_j": float(s[:, -1].min()),
    }


def _median(values: list[float]) -> float:
    v = sorted(values)
    m = len(v) // 2
    return v[m] if len(v) % 2 else (v[m - 1] + v[m]) / 2
