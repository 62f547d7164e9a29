"""The activations as numpy functions (phi, phi') and Gaussian expectations E[f(z)] by quadrature.

Shared by the mean-field theory of plain MLPs (theory.py) and of batch-norm MLPs (theory_bn.py);
numpy only, no torch (tests/test_theory.py checks phi against torch's modules).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from numpy.polynomial.legendre import leggauss

# Gauss-Hermite (probabilists') nodes and weights: E[f(z)] ~ sum w_i f(x_i) / sqrt(2 pi), exact
# for polynomials and fast for smooth f. Across a kink it converges only like 1/n (ELU: 1e-3 at
# 160 nodes), so activations with a kink at 0 integrate each side of the kink on its own, where
# the integrand is smooth: Gauss-Legendre of f * pdf on [-12, kink] and [kink, 12] in units of the
# standard deviation (the tail beyond 12 is < 1e-32).
_NODES, _WEIGHTS = hermegauss(120)
_WEIGHTS = _WEIGHTS / math.sqrt(2 * math.pi)
_LX, _LW = leggauss(160)
_TAIL = 12.0
KINKED = ("relu", "leaky_relu", "prelu", "elu", "selu")

SELU_LAMBDA = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))  # overflow-free


def _normal_cdf(x):
    from math import erf

    return 0.5 * (1 + np.vectorize(erf)(x / math.sqrt(2)))


def _leaky(slope):
    return (lambda x: np.where(x > 0, x, slope * x), lambda x: np.where(x > 0, 1.0, slope))


# name -> (phi, phi'), for every activation in activations.py (prelu: its slope at init, 0.25).
PHI = {
    "sigmoid": (_sigmoid, lambda x: _sigmoid(x) * (1 - _sigmoid(x))),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "relu": _leaky(0.0),
    "leaky_relu": _leaky(0.01),
    "prelu": _leaky(0.25),
    "elu": (lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))), lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))),
    "gelu": (lambda x: x * _normal_cdf(x), lambda x: _normal_cdf(x) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    "silu": (lambda x: x * _sigmoid(x), lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x)))),
    "selu": (lambda x: SELU_LAMBDA * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
             lambda x: SELU_LAMBDA * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0)))),
    "linear": (lambda x: x, lambda x: np.ones_like(x)),
}

def gaussian_mean(f, q: float, kinked: bool = False, mean: float = 0.0) -> float:
    """E[f(mean + sqrt(q) z)], z ~ N(0, 1): Gauss-Hermite, or on each side of the kink where f has
    one at 0 (z = -mean / sqrt(q)). q = 0 is the point mass f(mean) (at a kink: the mean of both sides)."""
    if q <= 0:
        return float(np.mean(f(mean + np.array([-1e-12, 1e-12]))))
    s = math.sqrt(q)
    if not kinked:
        return float(np.dot(_WEIGHTS, f(mean + s * _NODES)))
    kink = min(max(-mean / s, -_TAIL), _TAIL)
    total = 0.0
    for lo, hi in ((-_TAIL, kink), (kink, _TAIL)):
        if hi > lo:
            x = (hi - lo) / 2 * _LX + (hi + lo) / 2
            w = (hi - lo) / 2 * _LW * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
            total += float(np.dot(w, f(mean + s * x)))
    return total
