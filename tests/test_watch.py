"""`vgrad watch RUN`: the view once (--once), a run followed while it trains (a `vgrad run`
subprocess and a `vgrad watch` subprocess, one line per logged step through a pipe), and the
redrawn view on a terminal (a pseudo-terminal)."""

import os
import pty
import re
import subprocess
import sys
import threading
import time

import pytest

from conftest import CONFIGS, ROOT, only_run_dir, small


@pytest.fixture
def finished(tmp_path, cli, write_config):
    cfg = small(model={"kind": "mlp", "depth": 6, "width": 16, "activation": "sigmoid", "init": "xavier_normal"})
    assert cli("run", write_config(cfg), "--out", tmp_path / "runs", "--quiet", "--no-plots").exit_code == 0
    return only_run_dir(tmp_path / "runs")


def test_watch_once_prints_the_latest_step(finished, cli):
    res = cli("watch", finished, "--once")
    assert res.exit_code == 0, res.output
    out = res.output
    assert finished.name in out and "completed" in out and "step 20/20" in out
    rows = [line for line in out.splitlines() if re.match(r"\s+\d+\s+(hidden\d|output)\s", line)]
    assert len(rows) == 7 and all("█" in line or "▏" in line for line in rows), out  # 6 hidden + output, with bars
    assert "vanishing gradients at step 0" in out and "verdict: vanishing" in out


def test_watch_says_what_is_wrong(tmp_path, cli):
    res = cli("watch", "nothing-here", "--runs-dir", tmp_path, "--once")
    assert res.exit_code == 2 and "no run 'nothing-here'" in res.output
    res = cli("watch", tmp_path, "--interval", "0")
    assert res.exit_code == 2 and "--interval must be > 0" in res.output


def test_watch_on_a_terminal_draws_the_view(finished):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "vgrad_cli", "watch", str(finished), "--interval", "0.1"], cwd=ROOT,
                            stdout=slave, stderr=slave, env={**os.environ, "COLUMNS": "80", "LINES": "30", "TERM": "xterm"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closed: the watch ended
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    raw = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[1A" in raw  # redrawn in place (cursor up), not printed as lines
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert "hidden0" in screen and "output" in screen and "verdict: vanishing" in screen


@pytest.mark.slow
def test_watch_follows_a_run_while_it_trains(tmp_path):
    """One line per logged step, in order, the first ones before the run ends; the watch ends with it."""
    env = {**os.environ, "NO_COLOR": "1"}
    run = subprocess.Popen([sys.executable, "-m", "vgrad_cli", "run", CONFIGS / "01_deep_sigmoid.yaml", "--out", tmp_path,
                            "--steps", "2000", "--set", "log.every=100", "--quiet", "--no-plots"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not any(tmp_path.glob("*/layers.csv")) and time.time() < deadline:
        time.sleep(0.05)
    path = only_run_dir(tmp_path)
    watch = subprocess.Popen([sys.executable, "-m", "vgrad_cli", "watch", path, "--interval", "0.2"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []

    def read():
        for line in watch.stdout:
            lines.append((time.time(), line.rstrip("\n")))

    reader = threading.Thread(target=read)
    reader.start()
    assert run.wait(timeout=240) == 0, run.stderr.read()
    run_ended = time.time()
    assert watch.wait(timeout=30) == 0, watch.stderr.read()
    reader.join()
    steps = [int(m[1]) for _, text in lines if (m := re.match(r"step (\d+)/2000 ", text))]
    assert steps == list(range(0, 2001, 100)), lines
    assert lines[0][0] < run_ended  # it showed the run while the run was going
    assert "vanishing gradients at step 0" in "\n".join(t for _, t in lines)
    assert lines[-1][1].startswith("verdict: vanishing")
