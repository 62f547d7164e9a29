"""Recurrent runs in `vgrad diagnose`: the measured decay per time step set against the spectrum of
W_hh (Pascanu, Mikolov & Bengio 2013), and an LSTM's cell state (Hochreiter & Schmidhuber 1997).

Back one time step, the gradient is multiplied by J_t = W_hh^T diag(phi'(a_t)). Since
|phi'| <= 1 for tanh and relu, ||J_t|| <= sigma_max(W_hh): sigma_max < 1 is *sufficient* for
vanishing, but not necessary. The product of many J_t's shrinks, in the long run, at the rate of
the spectral radius rho(W_hh) <= sigma_max (exactly so for a linearised net, phi' = 1): a
non-normal W_hh (torch's default init) can have sigma_max > 1 and still vanish at ~rho per step.
For lstm/gru the gates scale every path through W_hh, so rho and sigma_max (the largest over the
gate blocks) describe one path only; an LSTM's memory goes back through its cell state, with the
forget gate as the factor per step and no W_hh on the way.
All figures are at the first logged step (step 0: the init); layers.csv has them at every logged step.
"""

from __future__ import annotations

from .verdict import cell_profile, time_profile


def _per_step(prof: list) -> float | None:
    """(||g_0|| / ||g_T-1||)^(1 / (T-1)): the geometric-mean factor per time step."""
    if len(prof) < 2 or not prof[0] or not prof[-1] or prof[0] < 0 or prof[-1] < 0:
        return None
    return (prof[0] / prof[-1]) ** (1 / (len(prof) - 1))


def recurrent_theory(run) -> dict | None:
    """{layer, step, whh_spectral_radius, whh_sigma_max, time_factor, cell_time_factor, reading}
    for the top stacked layer (the one the verdict reads); None for a run without time.csv."""
    if not run.time or not run.steps:
        return None
    step = run.steps[0]
    time_rows = run.time_rows(step)
    layer, prof = time_profile(time_rows)
    row = next((r for r in run.layer_rows(step) if r.get("layer") == layer), {})
    rho, sigma = row.get("whh_spectral_radius"), row.get("whh_sigma_max")
    out = {"layer": layer, "step": step, "whh_spectral_radius": rho, "whh_sigma_max": sigma,
           "time_factor": _per_step(prof), "cell_time_factor": _per_step(cell_profile(time_rows))}
    out["reading"] = _reading((run.config.get("model") or {}).get("kind", "rnn"), out)
    return out


def _reading(kind: str, r: dict) -> str:
    rho, sigma, decay, cell = r["whh_spectral_radius"], r["whh_sigma_max"], r["time_factor"], r["cell_time_factor"]
    if rho is None or sigma is None:
        return "W_hh's spectrum was not logged (a run written before layers.csv had whh_* columns)"
    if kind != "rnn":
        text = (f"gated ({kind}): the gates scale each path through W_hh, so its rho and sigma_max (largest "
                "over the gate blocks) bound one path only and do not predict the decay")
        if cell is not None:
            text += (f"; the cell state's gradient, the memory path, goes back at {cell:.3f} per step (the "
                     "forget gate; no W_hh on that path)")
        return text
    if sigma < 1:
        text = "sigma_max < 1 (and |phi'| <= 1): vanishing is guaranteed"
    else:
        text = "sigma_max >= 1 does not rule vanishing out (sigma_max < 1 is sufficient, not necessary)"
    text += "; a linearised net's long-run rate per step is rho"
    if decay is not None and rho > 0:
        text += f": measured {decay:.3f} per step = {decay / rho:.2f} x rho"
    return text


def recurrent_line(r: dict) -> str:
    """One console line: W_hh's spectrum beside the measured decay, and what to read from it."""
    if r.get("whh_spectral_radius") is None:
        return f"through time: {r['reading']}"
    return (f"through time (Pascanu et al. 2013), W_hh at step {r['step']}: rho {r['whh_spectral_radius']:.3f}, "
            f"sigma_max {r['whh_sigma_max']:.3f} — {r['reading']}")
