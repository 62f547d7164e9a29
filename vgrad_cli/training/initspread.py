"""Step 0 of K seeds, without training: the measurement behind `--init-seeds K` (analysis/spread.py
summarises it).

Seed s + i (s the config's seed, i = 0 .. K-1) is measured exactly as step 0 of the run
`vgrad run CONFIG --seed s+i` would be: the same task data, the same initial weights, the same
first batch, one forward and backward through the same LayerProbe (the trainer of loop.py is reused,
so nothing about what a factor means can drift). Seed s is the run's own step 0. No update is
applied and nothing is written here; one seed costs one step of the run.
"""

from __future__ import annotations

from ..analysis.spread import summarize
from ..analysis.theory import measured_factor
from ..analysis.verdict import cell_ratio, ends_label, factor_span, ratios, time_ratio
from ..threads import torch_threads
from ..vocab import BELOW_KEY, SPREAD_COLUMNS
from .loop import step0
from .trainer import resolve_device


def measure_seed(cfg, seed: int, device) -> tuple[list[dict], list[dict]]:
    """(layers.csv rows, time.csv rows) of step 0 for `cfg` with `seed`."""
    c = cfg.model_copy(update={"seed": seed})
    return step0(c, c.task.make(seed).to(device), device)


def init_spread(cfg, k: int) -> tuple[dict, list[dict]]:
    """(the `init_spread` summary, init_spread.csv rows) over seeds cfg.seed .. cfg.seed + k - 1."""
    device = resolve_device(cfg.train.device)
    per_seed, table = [], []
    kind, hidden, label = cfg.model.kind, cfg.model.depth, "layer 0/output"
    with torch_threads(cfg.train.cpu_threads if device.type == "cpu" else None):  # as training does
        for seed in range(cfg.seed, cfg.seed + k):
            rows, time_rows = measure_seed(cfg, seed, device)
            # the verdict's ends (a transformer: first and last block) and the theory line's span
            span, hidden = factor_span(rows, kind)
            label = ends_label(rows, kind)
            d = [r.get("delta_norm") for r in span]
            r = ratios(rows, rows, kind=kind)  # a ratio whose first end float32 lost is None, not 0
            below = "delta_norm_ratio_first_step" in r.get(BELOW_KEY, ())
            entry = {"seed": seed, "delta_ratio": r["delta_norm_ratio_first_step"],
                     "grad_ratio": r["grad_norm_ratio_first_step"],
                     # from a 0 or a subnormal layer 0 neither is a measurement
                     "factor": measured_factor(span, hidden) if hidden >= 2 and not below else None,
                     "hidden_ratio": (d[0] / d[hidden - 1]) if hidden >= 2 and d[hidden - 1] and not below else None}
            if below:
                entry[BELOW_KEY] = True
            if time_rows:
                entry.update(time_ratio=time_ratio(time_rows), cell_ratio=cell_ratio(time_rows),
                             across_layers=len(rows) > 2)
            per_seed.append(entry)
            table += [{"seed": seed, **{c: r.get(c) for c in SPREAD_COLUMNS[1:]}} for r in rows]
    return summarize(per_seed, hidden, label), table
