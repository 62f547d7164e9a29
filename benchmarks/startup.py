"""Group 2, start-up: wall time of `vgrad --help` and of `vgrad compare A B` on two finished runs.

Each is a fresh process, as a user starts it (interpreter start and imports included); one untimed
call first warms the page cache. Targets: --help <= 0.3 s, compare <= 1 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from overhead import spread


def vgrad_command() -> list[str]:
    """The installed `vgrad` script next to this interpreter (what a user runs), else `python -m`."""
    script = Path(sys.executable).parent / "vgrad"
    if script.exists():
        return [str(script)]
    found = shutil.which("vgrad")
    return [found] if found else [sys.executable, "-m", "vgrad_cli"]


def wall(cmd: list[str], reps: int) -> list[float]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)  # warm-up, untimed
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return times


def two_runs(root: Path, steps: int) -> list[Path]:
    """Two small finished runs (an MLP at two depths), written in-process."""
    from vgrad_cli.config import validate
    from vgrad_cli.training.runner import run_experiment

    runs = []
    for depth in (4, 8):
        cfg = validate({"name": f"startup-d{depth}", "model": {"depth": depth, "width": 32, "activation": "tanh"},
                        "task": {"name": "spirals", "train_size": 512, "eval_size": 128},
                        "train": {"steps": steps, "device": "cpu"}, "log": {"every": 10}})
        path, _ = run_experiment(cfg, root)
        runs.append(path)
    return runs


def measure(reps: int, quick: bool) -> dict:
    vgrad = vgrad_command()
    help_t = wall(vgrad + ["--help"], reps)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = two_runs(Path(tmp), steps=20 if quick else 200)
        compare_t = wall(vgrad + ["compare", str(a), str(b)], reps)
    return {
        "command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(vgrad)),
        "help_s": spread(help_t),
        "compare_s": spread(compare_t),
    }
