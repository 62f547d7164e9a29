import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# Tests that assert a training outcome (learns, dies, diverges) must hold for any seed of a small set,
# since another CPU's floating point changes a run as much as another seed does:
# `VGRAD_TEST_SEED=3 make test` reruns them with seed 3 (the default 0 is what CI runs).
TEST_SEED = int(os.environ.get("VGRAD_TEST_SEED", "0"))


def seeded(sets: list[str] | None = None) -> list[str]:
    """--set overrides for a bundled config, plus the test seed (the configs ship seed 0)."""
    return list(sets or []) + ([f"seed={TEST_SEED}"] if TEST_SEED else [])


def small(**over) -> dict:
    """A tiny, fast config as a dict; keyword args are merged section by section."""
    cfg = {
        "name": "t",
        "seed": TEST_SEED,
        "model": {"kind": "mlp", "depth": 3, "width": 16, "activation": "tanh", "init": "xavier_normal"},
        "task": {"name": "blobs", "train_size": 256, "eval_size": 128},
        "train": {"steps": 20, "batch_size": 32, "lr": 0.1, "device": "cpu"},
        "log": {"every": 5, "eval_every": 10},
    }
    for section, values in over.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


@pytest.fixture
def write_config(tmp_path):
    def write(data, name="cfg.yaml") -> Path:
        p = tmp_path / name
        p.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
        return p

    return write


@pytest.fixture
def cli():
    """Run the typer app in-process; returns the click Result (exit_code, stdout, stderr)."""
    from vgrad_cli.cli.main import app

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def vgrad_subprocess(*args, **kw) -> subprocess.CompletedProcess:
    """Run `python -m vgrad_cli ...` as a user would (real stdout/stderr, real signals)."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "vgrad_cli", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=kw.pop("cwd", ROOT), **kw)


def only_run_dir(out: Path) -> Path:
    dirs = [d for d in out.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def measure_at_init(activation, init, depth, width, seed=0, batch=256, task=None, **model):
    """One forward/backward of a fresh MLP on a blobs batch (or a model.kind and `task` of your
    choice: a dict of task keys), measured by a LayerProbe at step 0. Returns (probe, host statistics)."""
    import torch.nn.functional as F

    from vgrad_cli.activations import ACTIVATIONS
    from vgrad_cli.config import validate
    from vgrad_cli.models import build_model
    from vgrad_cli.measure.probes import LayerProbe

    cfg = validate({"seed": seed, "model": {"depth": depth, "width": width, "activation": activation,
                                            "init": init, **model},
                    "task": {**(task or {"name": "blobs", "input_dim": width}), "train_size": batch, "eval_size": 8}})
    task = cfg.task.make(seed)
    net = build_model(cfg.model, task, seed)
    probe = LayerProbe(net, ACTIVATIONS[activation], True)
    probe.attach()
    F.cross_entropy(net(task.x_train), task.y_train).backward()
    probe.after_backward()
    probe.after_clip()
    return probe, probe.to_host({})
