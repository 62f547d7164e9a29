"""Group 1, measurement overhead: vgrad's training path vs a bare hand-written PyTorch loop.

Both sides get the same pre-generated task tensors, the same model (vgrad_cli.models.build_model),
the same optimizer, the same batch sampling (torch.randint with the same seeded generator) and the
same torch thread count, and are timed over the whole loop (task generation and process start
excluded). Nothing is subtracted: vgrad's side is `run_experiment` as `vgrad run --no-plots` calls
it (run directory, config.yaml, CSV tables, summary.json, model.pt), with eval only at the first
and the last step.

Bare loops:
  mlp   - forward, cross-entropy, zero_grad, backward, SGD step.
  cell  - the tanh RNN unrolled one time step at a time with torch.rnn_tanh_cell (what vgrad must
          do to see dL/dh_t), then the head.
  fused - the same weights through torch's fused nn.RNN (what a user would write).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time

import torch

from vgrad_cli.config import validate
from vgrad_cli.models import build_model
from vgrad_cli.training.runner import run_experiment
from vgrad_cli.tasks.losses import LOSSES
from vgrad_cli.threads import torch_threads
from vgrad_cli.training.trainer import OPTIMIZERS


def mlp_config(steps=1000, depth=20, width=128, batch=128, every=1) -> dict:
    return {
        "name": "bench-mlp", "seed": 0,
        "model": {"kind": "mlp", "depth": depth, "width": width, "activation": "relu", "init": "kaiming_normal"},
        "task": {"name": "blobs", "input_dim": width, "train_size": 8192, "eval_size": 1024},
        "train": {"optimizer": "sgd", "lr": 0.01, "batch_size": batch, "steps": steps, "device": "cpu"},
        "log": {"every": every, "eval_every": steps},  # eval at step 0 and the last step only
    }


def rnn_config(steps=1000, hidden=64, seq_len=50, batch=64, every=1) -> dict:
    return {
        "name": "bench-rnn", "seed": 0,
        "model": {"kind": "rnn", "depth": 1, "width": hidden, "activation": "tanh"},
        "task": {"name": "adding", "seq_len": seq_len, "train_size": 4096, "eval_size": 512},
        "train": {"optimizer": "sgd", "lr": 0.01, "batch_size": batch, "steps": steps, "device": "cpu",
                  "clip_norm": 1.0},
        "log": {"every": every, "eval_every": steps},
    }


@contextlib.contextmanager
def pregenerated(cfg, task):
    """Make `cfg.task.make` hand back an already generated task, so that no timed region pays for it."""
    cls = type(cfg.task)
    original = cls.make
    cls.make = lambda self, seed: task
    try:
        yield
    finally:
        cls.make = original


def time_vgrad(cfg, task, out_root) -> float:
    """Seconds for vgrad's whole training path (run_experiment, no plots)."""
    with pregenerated(cfg, task):
        start = time.perf_counter()
        _, summary = run_experiment(cfg, out_root)
        elapsed = time.perf_counter() - start
    assert summary["status"] == "completed", summary
    return elapsed


def _bare_setup(cfg, task):
    model = build_model(cfg.model, task, cfg.seed)
    model.train()
    optimizer = OPTIMIZERS[cfg.train.optimizer](model.parameters(), cfg.train)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    return model, optimizer, gen


def _unrolled_forward(model, x):
    """Tanh RNN, one time step at a time with the cell function (depth 1)."""
    rnn = model.layers[0]
    w_ih, w_hh, b_ih, b_hh = rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
    h = x.new_zeros(x.shape[0], model.width)
    for x_t in x.unbind(1):
        h = torch.rnn_tanh_cell(x_t, h, w_ih, w_hh, b_ih, b_hh)
    return model.head(h)  # (batch, outputs), as RecurrentNet's forward returns for one output step


def time_bare(cfg, task, mode: str) -> float:
    """Seconds for a bare loop of cfg.train.steps updates. mode: mlp, cell or fused."""
    with torch_threads(cfg.train.cpu_threads):  # what vgrad's runner sets
        start = time.perf_counter()  # like vgrad's side, building the model and optimizer counts
        model, optimizer, gen = _bare_setup(cfg, task)
        loss_fn = LOSSES[task.loss]
        params = list(model.parameters())
        clip = cfg.train.clip_norm
        xs, ys, n = task.x_train, task.y_train, len(task.x_train)
        batch = cfg.train.batch_size
        for _ in range(cfg.train.steps):
            idx = torch.randint(n, (batch,), generator=gen)
            x, y = xs[idx], ys[idx]
            out = _unrolled_forward(model, x) if mode == "cell" else model(x)
            loss = loss_fn(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
            optimizer.step()
        loss.item()  # a user's loop reads the loss at least once
        return time.perf_counter() - start


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def measure(name: str, cfg_dict: dict, bare_modes: list[str], everies: list[int], reps: int, on_progress=None) -> dict:
    """Alternate bare and vgrad runs (ABAB...) `reps` times; per pair ratios vgrad/bare.

    Returns {"bare": {mode: spread}, "vgrad": {every: spread}, "ratios": {"every<k>/<mode>": spread}}.
    Ratios are taken per repetition (each vgrad time over the bare time measured next to it), so
    slow drifts of the machine's load cancel; their median and min-max are reported.
    """
    cfgs = {e: validate({**cfg_dict, "log": {**cfg_dict["log"], "every": e}}) for e in everies}
    task = cfgs[everies[0]].task.make(cfgs[everies[0]].seed)
    times = {("bare", m): [] for m in bare_modes} | {("vgrad", e): [] for e in everies}
    ratios = {f"every{e}/{m}": [] for e in everies for m in bare_modes}
    with tempfile.TemporaryDirectory() as tmp:
        # one untimed warm-up of each side (first-call allocations, lazy imports)
        for m in bare_modes:
            time_bare(validate({**cfg_dict, "train": {**cfg_dict["train"], "steps": 5}}), task, m)
        time_vgrad(validate({**cfg_dict, "train": {**cfg_dict["train"], "steps": 5}}), task, tmp)
        for rep in range(reps):
            bare_t = {}
            for m in bare_modes:
                bare_t[m] = time_bare(cfgs[everies[0]], task, m)
                times[("bare", m)].append(bare_t[m])
            for e in everies:
                v = time_vgrad(cfgs[e], task, tmp)
                times[("vgrad", e)].append(v)
                for m in bare_modes:
                    ratios[f"every{e}/{m}"].append(v / bare_t[m])
            if on_progress:
                on_progress(f"{name} rep {rep + 1}/{reps}")
    return {
        "config": {k: cfg_dict[k] for k in ("model", "task", "train")},
        "steps": cfg_dict["train"]["steps"],
        "seconds": {f"{side}:{key}": spread(v) for (side, key), v in times.items()},
        "ratios": {k: spread(v) for k, v in ratios.items()},
    }
