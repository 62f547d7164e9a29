"""Group 4, scale: a depth-100 width-256 MLP and a tanh RNN over 1,000 time steps.

Each model is trained twice, for N and for 2N steps, each in its own process (peak RSS is per
process): time per step, peak RSS and the size of every table written. Two checks:
- the tables grow linearly: rows = logged steps x layers (x time steps for time.csv), and the
  bytes per row are the same at N and at 2N;
- memory does not grow with the number of steps: peak RSS at 2N ~= peak RSS at N.

    python benchmarks/scale.py --child '<config json>'   (used by run_all.py: one run, JSON out)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

TABLES = ("layers.csv", "metrics.csv", "time.csv")


def mlp_config(quick: bool) -> dict:
    depth, width = (6, 32) if quick else (100, 256)
    return {"name": "scale-mlp", "seed": 0,
            "model": {"kind": "mlp", "depth": depth, "width": width, "activation": "tanh", "init": "xavier_normal"},
            "task": {"name": "blobs", "input_dim": width, "train_size": 4096, "eval_size": 512},
            "train": {"optimizer": "sgd", "lr": 0.01, "batch_size": 128, "device": "cpu"},
            "log": {"every": 10, "eval_every": 100}}


def rnn_config(quick: bool) -> dict:
    seq_len = 30 if quick else 1000
    return {"name": "scale-rnn", "seed": 0,
            "model": {"kind": "rnn", "depth": 1, "width": 64, "activation": "tanh"},
            "task": {"name": "adding", "seq_len": seq_len, "train_size": 2048, "eval_size": 256},
            "train": {"optimizer": "sgd", "lr": 0.01, "batch_size": 64, "device": "cpu", "clip_norm": 1.0},
            "log": {"every": 10, "eval_every": 100}}


def child(cfg_json: str) -> dict:
    """One run in this process; what the parent needs, as JSON on stdout."""
    from vgrad_cli.config import validate
    from vgrad_cli.training.runner import run_experiment

    cfg = validate(json.loads(cfg_json))
    with tempfile.TemporaryDirectory() as tmp:
        path, summary = run_experiment(cfg, tmp)
        with open(path / "metrics.csv", newline="") as fh:
            loop_s = float(list(csv.DictReader(fh))[-1]["time_s"])  # training loop only, at the last step
        tables = {}
        for name in TABLES:
            f = path / name
            if f.exists():
                with open(f, "rb") as fh:
                    header = len(fh.readline())
                    rows = sum(1 for _ in fh)
                size = f.stat().st_size
                tables[name] = {"bytes": size, "rows": rows, "bytes_per_row": (size - header) / max(rows, 1)}
    return {
        "status": summary["status"], "steps": cfg.train.steps,
        "logged_steps": len(range(0, cfg.train.steps + 1, cfg.log.every)) + (cfg.train.steps % cfg.log.every != 0),
        "layers": summary["n_layers"],
        "time_steps": cfg.task.seq_len if cfg.model.kind != "mlp" else 1,
        "wall_s": summary["wall_time_s"],
        "s_per_step": loop_s / cfg.train.steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "tables": tables,
    }


def run_child(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)],
                         check=True, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(name: str, cfg: dict, steps: int) -> dict:
    runs = {}
    for n in (steps, 2 * steps):
        runs[n] = run_child({**cfg, "train": {**cfg["train"], "steps": n}})
        assert runs[n]["status"] == "completed", runs[n]
    small, big = runs[steps], runs[2 * steps]
    tables = {}
    for t in small["tables"]:
        a, b = small["tables"][t], big["tables"][t]
        per_step = {"layers.csv": small["layers"], "metrics.csv": 1,
                    "time.csv": (small["layers"] - 1) * small["time_steps"]}[t]
        tables[t] = {
            "rows_per_logged_step": b["rows"] / big["logged_steps"],
            "rows_expected_per_logged_step": per_step,
            "bytes": {"N": a["bytes"], "2N": b["bytes"]},
            "bytes_per_row": {"N": round(a["bytes_per_row"], 2), "2N": round(b["bytes_per_row"], 2)},
            "bytes_per_row_ratio": b["bytes_per_row"] / a["bytes_per_row"],
            "linear": b["rows"] == big["logged_steps"] * per_step and a["rows"] == small["logged_steps"] * per_step,
        }
    return {
        "config": {k: cfg[k] for k in ("model", "task", "train", "log")},
        "steps": {"N": steps, "2N": 2 * steps},
        "logged_steps": {"N": small["logged_steps"], "2N": big["logged_steps"]},
        "layers": small["layers"], "time_steps": small["time_steps"],
        "s_per_step": big["s_per_step"],
        "peak_rss_mb": {"N": round(small["peak_rss_mb"], 1), "2N": round(big["peak_rss_mb"], 1)},
        "rss_ratio": big["peak_rss_mb"] / small["peak_rss_mb"],
        "tables": tables,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help="run this config (JSON) in this process and print the result")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    ap.error("run it through benchmarks/run_all.py, or pass --child")


if __name__ == "__main__":
    sys.exit(main())
