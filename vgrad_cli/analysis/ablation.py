"""Indicator 5, reliance on upper layers: an ablation probe on the saved weights (model.pt).

Load the trained weights, put the first k hidden layers back to their *initial* weights (from
model.pt["init"], the very values training started from) and measure the training loss on a fixed
set of training batches. If the loss hardly moves, training the early layers contributed nothing:
the upper layers did the work. We reset to W_0 rather than drawing fresh weights because W_0 asks
exactly "what did training these layers add?" and is deterministic; a fresh draw would also change
which random features the layers start with. The model is rebuilt in memory and restored
afterwards (checked); nothing in the run directory is modified.
"""

from __future__ import annotations

import math
from pathlib import Path

from .indicators import THRESHOLDS, indicator, span
from .. import vocab as V

MAX_EXAMPLES = 2048  # the fixed batch set: the first training examples, in train.batch_size batches

NAME = "reliance on upper layers (ablation)"
THRESHOLD = (f"re-initialising the first k hidden layers to their initial weights raises the training loss by "
             f"< {THRESHOLDS['ablation_damage']:.0%} of its final value")


def default_k(n_hidden: int) -> int:
    return max(1, round(n_hidden / 3))


def _not(summary: str, ev: dict | None = None) -> dict:
    return indicator(5, "reliance_on_upper_layers", NAME, "not measurable", summary, ev or {}, THRESHOLD)


def ablation(run_dir: Path, cfg, baseline: float | None, k: int | None = None) -> dict:
    """cfg: the run's validated Config. Returns indicator 5."""
    path = Path(run_dir) / V.MODEL_PT
    if not path.is_file():
        return _not("no model.pt (a diverged run saves no weights)")
    depth = cfg.model.depth
    k = default_k(depth) if k is None else k
    if not 1 <= k < depth:
        return _not(f"k = {k} must leave at least one hidden layer above it (model.depth {depth})", {"k": k})
    import torch

    from ..models import build_model
    from ..tasks.losses import LOSSES
    from ..threads import torch_threads

    with torch_threads(1):  # small models; and diagnose must not crowd a shared machine
        saved = torch.load(path, map_location="cpu", weights_only=True)
        task = cfg.task.make(cfg.seed)
        model = build_model(cfg.model, task, cfg.seed)
        loss_fn = LOSSES[task.loss]
        n = min(len(task.x_train), MAX_EXAMPLES)
        bs = max(2, min(cfg.train.batch_size, n))  # batch norm needs >= 2 per batch
        batches = [(task.x_train[i:i + bs], task.y_train[i:i + bs]) for i in range(0, n - bs + 1, bs)]

        @torch.no_grad()
        def loss_of(state) -> float:
            model.load_state_dict(state)
            model.train()  # as in training: batch norm uses the batch's statistics
            total = sum(float(loss_fn(model(x), y)) * len(x) for x, y in batches)
            return total / sum(len(x) for x, _ in batches)

        # the modules of the first k hidden layers: every state key under their prefixes
        # (blocks.i. for the MLP; layers.i. and norms.i. for recurrent nets), buffers included
        names = {id(p): name for name, p in model.named_parameters()}
        prefixes = {".".join(names[id(p)].split(".")[:2]) + "." for layer in model.probe_layers()[:k] for p in layer.params}
        # (a two-part name such as a transformer's embedding.pos is its own prefix)
        ablated = {key: (saved["init"][key] if any((key + ".").startswith(px) for px in prefixes) else v)
                   for key, v in saved["final"].items()}
        final = loss_of(saved["final"])
        reset = loss_of(ablated)
        at_init = loss_of(saved["init"])
        restored = loss_of(saved["final"])  # the probe leaves the model as it found it
    if not (math.isfinite(final) and math.isfinite(reset)):
        return _not(f"non-finite loss (final {final}, ablated {reset})")
    # The probe asks what training the early layers added to what the model learned. A model that
    # did not beat both its initial loss and the baseline (by 5 %) learned nothing to take away: any
    # percentage would be of a floor, not of an improvement, so the probe says nothing either way.
    beat_init, beat_baseline = final <= 0.95 * at_init, baseline is None or final <= 0.95 * baseline
    ref = baseline if baseline is not None else at_init
    damage = (reset - final) / (ref - final) if beat_init and beat_baseline else None
    ev = {"k": k, "layers_reset": list(range(k)), "reset_to": "initial weights (model.pt['init'])",
          "examples": sum(len(x) for x, _ in batches), "loss_final": final, "loss_ablated": reset,
          "loss_all_at_init": at_init, "baseline_loss": baseline, "damage": damage,
          "restored_loss_matches": abs(restored - final) <= 1e-6 * max(1.0, abs(final))}
    ev["informative"] = damage is not None
    reset_what = f"resetting {span(k)} to {'its' if k == 1 else 'their'} initial weights"
    if damage is None:
        than = f"the baseline {baseline:.3g}" if not beat_baseline else f"its initial loss {at_init:.3g}"
        return _not(f"not informative: the model did not beat {than} (final loss {final:.3g}), so "
                    f"{reset_what} has no improvement to undo (loss {final:.3g} -> {reset:.3g})", ev)
    undone = f"{damage:.0%} of the improvement undone" if damage < 1 else "all of the improvement undone"
    summary = f"{reset_what}: loss {final:.3g} -> {reset:.3g} ({undone})"
    # "hardly moves": relative to the final loss (a well-fitted model whose loss jumps 25x relies
    # on its early layers, even if that jump is small next to the baseline)
    rise = (reset - final) / max(final, 1e-12)
    ev["relative_rise"] = rise
    status = "present" if rise < THRESHOLDS["ablation_damage"] else "absent"
    return indicator(5, "reliance_on_upper_layers", NAME, status, summary, ev, THRESHOLD)
