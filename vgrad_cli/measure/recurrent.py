"""What the probe measures only for recurrent layers: the spectrum of W_hh (layers.csv's
whh_spectral_radius and whh_sigma_max) and the gradient through time (time.csv).

Pascanu et al. (2013): back through time the gradient is multiplied once per step by
W_hh^T diag(phi'), so ||W_hh||_2 = sigma_max < 1/max|phi'| guarantees vanishing, while for a
linearised net the long-run rate per step is the spectral radius rho (sigma_max >= rho; they differ
for a non-normal matrix, e.g. torch's default init: sigma_max 1.14, rho 0.63 at width 64).

Gated layers (lstm, gru) stack one H x H block per gate in W_hh (4H x H, 3H x H): the stack is not
square, so it has no eigenvalues. Each block is measured on its own and a layer's figure is the
largest over its blocks (for an rnn: W_hh itself).
"""

from __future__ import annotations

import torch


def time_rows(step: int, host: dict) -> list[dict]:
    """time.csv rows: ||dL/dh_t|| per stacked layer and time step (recurrent models only), and
    ||dL/dc_t|| for an LSTM (empty for rnn/gru, which have no cell state). host: the probe's
    statistics on the host (LayerProbe.to_host)."""
    cells = host.get("time_cell_grad_norm")
    return [
        {"step": step, "layer": layer, "t": t, "delta_norm": v,
         "cell_grad_norm": cells[layer][t] if cells is not None else None}
        for layer, per_t in enumerate(host.get("time_delta_norm", []))
        for t, v in enumerate(per_t)
    ]


# Wider W_hh blocks are not measured (the columns stay empty, with a note): eigenvalues cost ~n^3.
# Measured on one core of a loaded 2-core Xeon, 4 gate blocks (an LSTM): 3 ms at 64 units, 0.13 s at
# 256, 0.86 s at 512 per logged step, more than the rest of such a step.
WHH_MAX_WIDTH = 256


def spectra_layers(layers) -> tuple[list[int], list[str]]:
    """The indices of the layers whose W_hh is measured, and a note for those left out."""
    recurrent = [i for i, layer in enumerate(layers) if layer.recurrent]
    kept = [i for i in recurrent if layers[i].weight.shape[1] <= WHH_MAX_WIDTH]
    if len(kept) == len(recurrent):
        return kept, []
    return kept, [f"W_hh wider than {WHH_MAX_WIDTH} units: whh_spectral_radius and whh_sigma_max left empty "
                  f"for {', '.join(layers[i].name for i in recurrent if i not in kept)} (an eigendecomposition "
                  f"per logged step would cost more than the step)"]


def whh_spectra(weights: list) -> tuple:
    """weights: each recurrent layer's W_hh ((gates x H) x H). Returns (rho, sigma_max), 1-d tensors
    with one entry per layer, each the largest over the layer's gate blocks. Batched: one eigvals and
    one matrix_norm call per distinct H, on the weights' device."""
    groups: dict = {}  # H -> [(layer, blocks)]
    for i, w in enumerate(weights):
        h = w.shape[1]
        groups.setdefault(h, []).append((i, w.detach().float().reshape(-1, h, h)))
    device = weights[0].device
    rho = torch.zeros(len(weights), device=device)
    sigma = torch.zeros(len(weights), device=device)
    for members in groups.values():
        blocks = torch.cat([b for _, b in members])
        layer = torch.tensor([i for i, b in members for _ in range(b.shape[0])], device=device)
        # a diverging run's weights may be inf/NaN, where LAPACK fails: those blocks read NaN (no host
        # sync to check first)
        finite = torch.isfinite(blocks).flatten(1).all(1)
        blocks = torch.where(finite[:, None, None], blocks, torch.zeros((), device=device))
        nan = torch.full_like(finite, float("nan"), dtype=blocks.dtype)
        rho_b = torch.where(finite, torch.linalg.eigvals(blocks).abs().amax(-1), nan)
        sigma_b = torch.where(finite, torch.linalg.matrix_norm(blocks, ord=2), nan)
        rho.scatter_reduce_(0, layer, rho_b, "amax", include_self=False)
        sigma.scatter_reduce_(0, layer, sigma_b, "amax", include_self=False)
    return rho, sigma
