"""The bundled configs tell the story they say they tell.

Each config's first line declares the verdict it must give at initialization
(`# expect-at-init: ...`); two full runs check the dying-ReLU chapter, which happens during training.
"""

import re

import pytest

from conftest import CONFIGS
from vgrad_cli.config import load_config
from vgrad_cli.training.runner import run_experiment

FAST = ["train.steps=1", "log.every=1", "train.device=cpu"]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_verdict_at_init_matches_the_story(path, tmp_path):
    expected = re.match(r"# expect-at-init: (\w+)", path.read_text()).group(1)
    _, summary = run_experiment(load_config(path, FAST), tmp_path)
    assert summary["verdict"] == expected, summary["verdict_reason"]


def test_dying_relu_dies_and_leaky_relu_learns(tmp_path):
    short = ["train.device=cpu"]  # the full 1000 steps: the collapse comes after step ~700
    dying_dir, dying = run_experiment(load_config(CONFIGS / "07_dying_relu.yaml", short), tmp_path)
    leaky_dir, leaky = run_experiment(load_config(CONFIGS / "08_leaky_relu.yaml", short), tmp_path)
    from vgrad_cli.rundir.files import read_table

    last = [r for r in read_table(dying_dir, "layers.csv") if r["step"] == 1000 and r["act_dead_frac"] is not None]
    assert max(r["act_dead_frac"] for r in last) == 1.0  # a whole layer has died
    assert dying["final_eval_loss"] > 0.9 * dying["baseline_loss"]  # ... and nothing is learned
    last = [r for r in read_table(leaky_dir, "layers.csv") if r["step"] == 1000 and r["act_dead_frac"] is not None]
    assert all(r["act_dead_frac"] == 0 for r in last)
    assert leaky["final_eval_loss"] < 0.5 * leaky["baseline_loss"]


def test_lstm_learns_the_adding_problem_where_a_tanh_rnn_cannot(tmp_path):
    """The classic demonstration, with the bundled configs as shipped (seq_len 50, hidden 64,
    batch 64, Adam 1e-3, clip 1.0, 3000 steps): ~15 s for the RNN and ~40 s for the LSTM on 2 cores."""
    _, rnn = run_experiment(load_config(CONFIGS / "11_rnn_adding.yaml", ["train.device=cpu"]), tmp_path)
    _, lstm = run_experiment(load_config(CONFIGS / "12_lstm_adding.yaml", ["train.device=cpu"]), tmp_path)
    assert lstm["final_eval_loss"] < 0.05
    assert rnn["final_eval_loss"] > 0.12  # near the 0.167 baseline of predicting 1.0
    assert rnn["time_ratio_last_step"] < 1e-2 < lstm["time_ratio_last_step"]
