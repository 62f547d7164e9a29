"""The bundled configs tell the story they say they tell.

Each config's first line declares the verdict it must give at initialization
(`# expect-at-init: ...`); two full runs check the dying-ReLU chapter, which happens during training.
"""

import re

import pytest

from conftest import CONFIGS, seeded
from vgrad_cli.config import load_config
from vgrad_cli.training.runner import run_experiment

FAST = ["train.steps=1", "log.every=1", "train.device=cpu"]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_verdict_at_init_matches_the_story(path, tmp_path):
    expected = re.match(r"# expect-at-init: (\w+)", path.read_text()).group(1)
    _, summary = run_experiment(load_config(path, FAST), tmp_path)
    assert summary["verdict"] == expected, summary["verdict_reason"]


@pytest.mark.slow
def test_dying_relu_dies_and_leaky_relu_keeps_every_unit(tmp_path):
    """Chapters 7 and 8 as shipped. Measured over seeds 0-5: ReLU ends with 71-84 % of its hidden
    units dead (the verdict's line: 40 %), one layer 97-100 % dead, and a final eval loss of
    0.34-1.0x the baseline after a training loss below 0.02x it; leaky ReLU: 0 % dead on every seed.
    (Whether leaky ReLU then learns at this Adam step size varies with the seed: not asserted.)"""
    short = seeded(["train.device=cpu"])  # the full 1000 steps: the collapse comes after step ~700
    dying_dir, dying = run_experiment(load_config(CONFIGS / "07_dying_relu.yaml", short), tmp_path)
    leaky_dir, leaky = run_experiment(load_config(CONFIGS / "08_leaky_relu.yaml", short), tmp_path)
    from vgrad_cli.rundir.files import read_table

    assert dying["verdict"] == "dying-relu", dying["verdict_reason"]
    last = [r for r in read_table(dying_dir, "layers.csv") if r["step"] == 1000 and r["act_dead_frac"] is not None]
    assert max(r["act_dead_frac"] for r in last) >= 0.9  # a layer has (almost) entirely died
    losses = [m["loss"] for m in read_table(dying_dir, "metrics.csv")]
    assert min(losses) < 0.05 * dying["baseline_loss"] < 0.25 * dying["baseline_loss"] < dying["final_eval_loss"]
    last = [r for r in read_table(leaky_dir, "layers.csv") if r["step"] == 1000 and r["act_dead_frac"] is not None]
    assert all(r["act_dead_frac"] == 0 for r in last)


@pytest.mark.slow
def test_lstm_learns_the_adding_problem_where_a_tanh_rnn_cannot(tmp_path):
    """The classic demonstration, with the bundled configs as shipped (seq_len 50, hidden 64,
    batch 64, Adam 1e-3, clip 1.0, 3000 steps): ~15 s for the RNN and ~40 s for the LSTM on 2 cores."""
    _, rnn = run_experiment(load_config(CONFIGS / "11_rnn_adding.yaml", seeded(["train.device=cpu"])), tmp_path)
    _, lstm = run_experiment(load_config(CONFIGS / "12_lstm_adding.yaml", seeded(["train.device=cpu"])), tmp_path)
    baseline = lstm["baseline_loss"]  # predicting 1.0: 0.172 on this eval set
    # Half the baseline, not a tuned figure: the final MSEs move with the CPU and the seed (LSTM 0.029
    # here, 0.063 on an AMD EPYC, its eval loss swinging late in training; the RNN 0.116-0.171)
    assert lstm["final_eval_loss"] < 0.5 * baseline < rnn["final_eval_loss"]
    # both start vanishing through time; the LSTM opens the path (0.18-0.51 at the end over seeds 0 and 2).
    # The RNN's own end-of-training ratio is not asserted: seed 2 ends at 4.8 while still near the baseline
    assert rnn["time_ratio_first_step"] < 1e-6 and lstm["time_ratio_first_step"] < 1e-6
    assert lstm["time_ratio_last_step"] > 1e-2
