"""Mean-field gradient growth of a batch-norm MLP at init (Yang et al. 2019, "A mean field theory of
batch normalization"; numpy only, no torch).

vgrad's block is z = W h + b -> y = BN(z) (batch statistics; gamma 1, beta 0 at init) -> phi(y), and
`delta_norm` is measured at y. One block back:

    delta_l = phi'(y_l) * W_{l+1}^T BN'(delta_{l+1}),   BN'(g)_i = P_i g_i / sigma_i,

with sigma_i the batch std of unit i's z, and P_i the projection that removes, over the batch, the
mean of g_i and its component along y_i. At large batch and width:
- each unit's y is standardised over the batch, so y ~ N(0, 1) at every layer, whatever the init;
- sigma_i^2 = Var_batch(sum_j W_ij phi(y_j)) = sigma_w^2 Var(phi(y)): the *variance* of the
  activation this time (BN removes the bias and the activation's mean);
- P_i removes 2 of B directions, an O(1/B) share of ||delta||^2;
so ||delta||^2 grows going backward by

    chi_BN = sigma_w^2 E[phi'(y)^2] / (sigma_w^2 Var(phi(y))) = E[phi'(y)^2] / Var(phi(y)),  y ~ N(0, 1),

independent of the weights' scale and the bias (batch norm is scale-invariant). ReLU: (1/2) /
(1/2 - 1/(2 pi)) = pi/(pi - 1) = 1.467, Yang et al.'s gradient-explosion rate of BN-ReLU at large
batch: 1.211 per layer in ||delta||. Every layer starts from the same N(0, 1), so there is no
finite-depth trajectory: the prediction at the run's depth is the same figure.

Domain of validity: large batch (finite batches raise the rate: measured at width 256, depth 30,
ReLU +0.7 % per layer at batch 128, +2.3 % at batch 32), wide layers, the gradient-independence
approximation (tanh, sigmoid and GELU measure 1-1.5 % above it at batch 512, ReLU 0.4 %).
"""

from __future__ import annotations


from .gaussian import KINKED, PHI, gaussian_mean

# Below this batch size the finite-batch correction exceeds ~2 % per layer (measured, ReLU).
LARGE_BATCH = 64


def bn_chi(activation: str) -> float:
    """E[phi'(y)^2] / Var(phi(y)), y ~ N(0, 1): the growth of ||delta||^2 per BN block going backward."""
    phi, dphi = PHI[activation]
    kinked = activation in KINKED
    mean = gaussian_mean(phi, 1.0, kinked)
    var = gaussian_mean(lambda x: phi(x) ** 2, 1.0, kinked) - mean**2
    return gaussian_mean(lambda x: dphi(x) ** 2, 1.0, kinked) / var


def small_batch_note(batch_size: int | None) -> str | None:
    if batch_size is None or batch_size >= LARGE_BATCH:
        return None
    return (f"batch {batch_size}: the batch-norm prediction holds for large batches; a small batch raises the "
            "growth (measured for ReLU at width 256: +2.3 % per layer at batch 32)")
