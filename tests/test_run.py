"""`vgrad run` end to end: the run directory, determinism, divergence, signals, SIGKILL."""

import csv
import json
import math
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import CONFIGS, ROOT, only_run_dir, small, vgrad_subprocess
from vgrad_cli.config import load_config, validate
from vgrad_cli.vocab import LAYER_COLUMNS, METRIC_COLUMNS
from vgrad_cli.training.runner import run_experiment


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_writes_the_run_directory(cli, write_config, tmp_path):
    out = tmp_path / "runs"
    result = cli("run", write_config(small(name="demo")), "--out", out, "--set", "train.steps=23")
    assert result.exit_code == 0, result.output
    run = only_run_dir(out)
    assert re.fullmatch(r"demo-\d{8}-\d{6}-[0-9a-f]{4}", run.name)
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "layers.csv", "metrics.csv", "summary.json"}
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["steps"] == 23 and resolved["model"]["bias_init"] == 0.0  # defaults filled in
    assert load_config(run / "config.yaml") == validate(resolved)

    layers = read_csv(run / "layers.csv")
    metrics = read_csv(run / "metrics.csv")
    assert list(layers[0]) == LAYER_COLUMNS and list(metrics[0]) == METRIC_COLUMNS
    logged = [0, 5, 10, 15, 20, 23]  # every 5, plus step 0 and the last step
    assert [int(m["step"]) for m in metrics] == logged
    assert len(layers) == len(logged) * 4  # 3 hidden layers + output
    assert [r["name"] for r in layers[:4]] == ["hidden0", "hidden1", "hidden2", "output"]
    assert all(float(r["grad_norm"]) > 0 for r in layers)
    assert [bool(m["eval_loss"]) for m in metrics] == [True, False, True, False, True, True]
    assert layers[-1]["update_ratio"] == ""  # no update follows the last step
    assert layers[-1]["act_mean"] == ""  # the output layer has no activation

    summary = json.loads((run / "summary.json").read_text())
    for key in ("schema_version", "status", "steps_completed", "final_loss", "final_accuracy", "wall_time_s",
                "verdict", "verdict_reason", "seed", "versions", "grad_norm_ratio_first_step",
                "grad_norm_ratio_last_step", "delta_norm_ratio_first_step", "delta_norm_ratio_last_step"):
        assert key in summary
    assert summary["status"] == "completed" and summary["steps_completed"] == 23
    first = [r for r in layers if r["step"] == "0"]
    assert summary["grad_norm_ratio_first_step"] == pytest.approx(
        float(first[0]["grad_norm"]) / float(first[-1]["grad_norm"]))
    assert summary["final_loss"] == pytest.approx(float(metrics[-1]["loss"]))
    assert "verdict:" in result.stdout and str(run) in result.stdout


def test_same_config_and_seed_give_identical_tables(tmp_path):
    cfg = validate(small(train={"steps": 30}, model={"norm": "batch", "activation": "relu"}))
    a, _ = run_experiment(cfg, tmp_path / "a")
    b, _ = run_experiment(cfg, tmp_path / "b")
    assert (a / "layers.csv").read_text() == (b / "layers.csv").read_text()
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert strip(read_csv(a / "metrics.csv")) == strip(read_csv(b / "metrics.csv"))
    c, _ = run_experiment(validate(small(seed=1, train={"steps": 30}, model={"norm": "batch"})), tmp_path / "c")
    assert (a / "layers.csv").read_text() != (c / "layers.csv").read_text()


def test_never_overwrites_a_run(tmp_path):
    cfg = validate(small(train={"steps": 2}))
    dirs = {run_experiment(cfg, tmp_path)[0] for _ in range(3)}
    assert len(dirs) == 3


def test_divergence_is_caught_and_recorded(tmp_path):
    cfg = validate(small(model={"activation": "relu", "init": "kaiming_normal", "init_std": 3.0, "depth": 8},
                         train={"lr": 5.0, "steps": 200}, log={"every": 7}))
    run, summary = run_experiment(cfg, tmp_path)
    assert summary["status"] == "diverged" and summary["verdict"] == "exploding"
    step = summary["diverged_step"]
    assert 0 < step < 200 and "non-finite" in summary["verdict_reason"]
    metrics = read_csv(run / "metrics.csv")
    assert metrics, "rows logged before the divergence are kept"
    steps = [int(m["step"]) for m in metrics]
    # whatever log.every says (7 here), the last finite step and the non-finite one are in the tables
    assert steps[-2:] == [step - 1, step] and steps == sorted(set(steps))
    assert all(math.isfinite(float(m["loss"])) for m in metrics[:-1]) and not math.isfinite(float(metrics[-1]["loss"]))
    layers = read_csv(run / "layers.csv")
    assert {int(r["step"]) for r in layers} == set(steps)
    assert summary["last_logged_step"] == step - 1  # the summary's figures: the last finite step


def test_divergence_between_logged_steps_replays_to_the_same_rows(tmp_path):
    """The rows written for the diverged run with log.every 7 match a run that logs every step."""
    base = small(model={"activation": "relu", "init": "kaiming_normal", "init_std": 3.0, "depth": 8},
                 train={"lr": 5.0, "steps": 200})
    sparse, s1 = run_experiment(validate({**base, "log": {"every": 7, "eval_every": 1000}}), tmp_path / "a")
    dense, s2 = run_experiment(validate({**base, "log": {"every": 1, "eval_every": 1000}}), tmp_path / "b")
    assert s1["diverged_step"] == s2["diverged_step"]
    step = s1["diverged_step"]
    def pick(rows):
        return [(r["step"], r["layer"], r["grad_norm"], r["delta_norm"]) for r in rows
                if int(r["step"]) in (step - 1, step)]
    assert pick(read_csv(sparse / "layers.csv")) == pick(read_csv(dense / "layers.csv"))


def test_clip_norm_caps_the_applied_gradient(tmp_path):
    cfg = validate(small(model={"init": "normal", "init_std": 1.0}, train={"clip_norm": 0.5, "steps": 20}))
    run, summary = run_experiment(cfg, tmp_path)
    metrics = read_csv(run / "metrics.csv")
    assert all(float(m["grad_norm_total"]) > 0.5 for m in metrics)  # the raw gradient is large ...
    assert all(float(m["grad_norm_clipped"]) == pytest.approx(0.5, rel=1e-4) for m in metrics)  # ... capped


def test_cuda_request_without_cuda_is_a_usage_error(cli, write_config, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the request is valid here")
    result = cli("run", write_config(small(train={"device": "cuda"})), "--out", tmp_path / "runs")
    assert result.exit_code == 2 and "no CUDA device" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_quiet_prints_only_the_path_and_no_color_codes(write_config, tmp_path):
    proc = vgrad_subprocess("run", write_config(small()), "--out", tmp_path / "runs", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(only_run_dir(tmp_path / "runs"))
    proc = vgrad_subprocess("run", write_config(small(name="loud")), "--out", tmp_path / "r2")
    assert "\x1b[" not in proc.stdout  # not a terminal: no escape codes in CI logs
    assert "per-layer gradient" in proc.stdout and "verdict:" in proc.stdout


def _start_long_run(write_config, tmp_path):
    cfg = small(train={"steps": 1_000_000}, log={"every": 1, "eval_every": 1000})
    proc = subprocess.Popen([sys.executable, "-m", "vgrad_cli", "run", str(write_config(cfg)), "--out",
                             str(tmp_path / "runs"), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline:
        runs = list((tmp_path / "runs").glob("*/metrics.csv"))
        if runs and len(runs[0].read_text().splitlines()) > 20:
            return proc, runs[0].parent
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("run did not start logging in time")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_end_the_run_as_interrupted(write_config, tmp_path, sig):
    proc, run = _start_long_run(write_config, tmp_path)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stop_signal"] == sig.name
    metrics = read_csv(run / "metrics.csv")
    assert len(metrics) >= 20 and summary["steps_completed"] >= int(metrics[-1]["step"])
    assert len(read_csv(run / "layers.csv")) == 4 * len(metrics)


@pytest.mark.slow
def test_sigkill_leaves_tables_that_parse(write_config, tmp_path):
    proc, run = _start_long_run(write_config, tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    for name, columns in (("metrics.csv", METRIC_COLUMNS), ("layers.csv", LAYER_COLUMNS)):
        rows = read_csv(run / name)
        assert len(rows) >= 20 and list(rows[0]) == columns
        for row in rows:
            assert None not in row.values() and float(row["step"]) >= 0
    assert json.loads((run / "summary.json").read_text())["status"] == "running"


@pytest.mark.slow
def test_every_bundled_config_runs(tmp_path):
    configs = sorted(CONFIGS.glob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        cfg = load_config(path, ["train.steps=3", "log.every=1", "train.device=cpu",
                                 "task.train_size=256", "task.eval_size=64"])
        run, summary = run_experiment(cfg, tmp_path)
        assert summary["status"] in ("completed", "diverged"), path
        assert (run / "layers.csv").exists()
