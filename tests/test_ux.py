"""What a user sees at 80 columns and in a pipe: the header, compare's rows and the plot titles name
what tells two chapters apart; prose wraps; the wording is right."""

import pytest

from conftest import CONFIGS, small
from vgrad_cli.config import load_config
from vgrad_cli.rundir.store import model_text, train_text


def _texts(stem: str) -> tuple[str, str]:
    cfg = load_config(next(CONFIGS.glob(f"{stem}_*.yaml")))
    return model_text(cfg.model.model_dump(mode="json")), train_text(cfg.train.model_dump(mode="json"))


@pytest.mark.parametrize("a, b, shows", [
    ("26", "27", "residual x1/sqrt(depth)"),   # they differ only in model.residual_scale
    ("22", "24", "warm-up 150 steps"),         # ... only in train.warmup_steps
    ("12", "25", "chrono_init 50"),            # ... only in model.chrono_init
    ("12", "14", "forget_bias 1"),             # ... only in model.forget_bias
    ("09", "10", "clip_norm"),                 # ... only in train.clip_norm
])
def test_chapters_that_differ_in_one_key_read_differently(a, b, shows):
    ta, tb = " | ".join(_texts(a)), " | ".join(_texts(b))
    assert ta != tb and shows in tb and shows not in ta, (ta, tb)


def test_defaults_are_not_shown_and_no_double_spaces():
    model, train = _texts("12")
    assert model == "lstm depth 1 width 64 default init", model  # no activation, residual, chrono, forget bias
    assert "warm-up" not in train and "momentum" not in train and train.startswith("adam lr ")


def test_run_header_at_80_columns(cli, write_config, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    cfg = small(name="a-rather-long-run-name-for-the-header",
                model={"kind": "lstm", "depth": 2, "width": 8, "activation": None, "forget_bias": 1.0,
                       "recurrent_init": "orthogonal", "init": "xavier_uniform"},
                task={"name": "adding", "seq_len": 6, "train_size": 64, "eval_size": 32},
                train={"steps": 2, "optimizer": "adam", "lr": 0.01, "warmup_steps": 5})
    r = cli("run", write_config(cfg), "--out", tmp_path / "runs", "--no-plots")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    head = lines[:next(i for i, line in enumerate(lines) if line.startswith("  step "))]
    text = " ".join(line.strip() for line in head)
    for phrase in ("lstm depth 2 width 8", "forget_bias 1", "recurrent orthogonal", "adam lr 0.01",
                   "warm-up 5 steps", "task adding"):
        assert phrase in text, head
    assert all(len(line) <= 80 and line == line.rstrip() and "  " not in line.strip() for line in head), head


def _narrow(text: str, width: int = 80) -> list[str]:
    """Every line within the width (rich pads a table's lines with spaces: prose is checked apart)."""
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), [line for line in lines if len(line) > width]
    return lines


def test_run_and_diagnose_keep_to_80_columns_in_a_pipe(cli, write_config, tmp_path, monkeypatch):
    """Deep sigmoid: a long verdict, theory lines, recommendations with commands, all wrapped."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)
    cfg = small(name="deep-sigmoid-at-eighty-columns", model={"depth": 12, "activation": "sigmoid"},
                train={"steps": 10})
    r = cli("run", write_config(cfg), "--out", "runs", "--no-plots")
    assert r.exit_code == 0, r.output
    assert not any(line.rstrip().endswith("--set") for line in _narrow(r.stdout))  # "try: ... --set KEY=VALUE"
    r = cli("diagnose", "deep-sigmoid", "--runs-dir", "runs")
    assert r.exit_code == 0, r.output
    lines = _narrow(r.stdout)
    theory = next(i for i, line in enumerate(lines) if line.startswith("theory"))
    assert all(line == line.rstrip() for line in lines[theory:]), lines[theory:]  # the prose after the table
    verdict = next(i for i, line in enumerate(lines) if line.startswith("verdict: "))
    assert lines[verdict + 1].startswith("  ") and len(lines[verdict]) > 40  # wrapped, not cut after the head
    commands = [i for i, line in enumerate(lines) if line.startswith("   vgrad run ")]
    assert commands, lines
    for i in commands:  # pasteable: a broken command continues after a backslash
        j, words = i, lines[i].split()
        while lines[j].endswith(" \\"):
            j += 1
            assert lines[j].startswith("       "), lines[j]
            words = words[:-1] + lines[j].split()
        assert words[:2] == ["vgrad", "run"] and words[2].endswith("config.yaml") and words[3] == "--set", words

@pytest.mark.slow
def test_sweep_keeps_to_80_columns(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)
    r = cli("sweep", "depth", "--values", "1,2", "--set", "train.steps=3", "--workers", "1",
            "--out", "a-long-folder-name-so-results-wraps")
    assert r.exit_code == 0, r.output
    lines = _narrow(r.stdout)
    assert any(line.startswith("results:") for line in lines) and any(line.startswith("[2/2] depth=") for line in lines)


# ----------------------------------------------------------------------------- wording


def _run_with_losses(losses: list[float], status: str = "completed"):
    from pathlib import Path

    from vgrad_cli.rundir.store import Run

    metrics = [{"step": 10 * i, "loss": v} for i, v in enumerate(losses)]
    return Run(Path("r"), {"status": status}, {}, [], metrics)


def test_loss_wording_counts_and_signs():
    from vgrad_cli.analysis.indicators import poor_performance, slow_training

    few = poor_performance(_run_with_losses([1.4, 1.3, 1.2, 1.1, 1.0]), 1.4, None)["summary"]
    assert "(mean of the last logged step)" in few, few
    many = poor_performance(_run_with_losses([1.4] * 18 + [1.0, 1.0]), 1.4, None)["summary"]
    assert "(mean of the last 2 logged steps)" in many, many
    # the loss fell, in the last half too: the change reads as a fall, with the losses it compares
    s = slow_training(_run_with_losses([2.0, 1.8, 1.6, 1.4, 1.2, 1.0, 0.8, 0.6, 0.4, 0.2]), 2.0)["summary"]
    assert "over the last half 1 -> 0.2 (-80%)" in s and "+" not in s, s


def test_story_diverged_step_is_a_whole_number():
    from vgrad_cli.story.report import runs_cell

    g = {"seeds": 2, "completed": 0, "diverged": 2, "failed": 0, "interrupted": 0, "diverged_step_n": 2,
         "diverged_step_median": 1.5, "diverged_step_min": 1, "diverged_step_max": 2}
    assert runs_cell(g) == "2 diverged at step 2 [1–2]"
    g.update(diverged_step_median=3.0, diverged_step_min=3, diverged_step_max=3)
    assert runs_cell(g) == "2 diverged at step 3"


def test_set_task_name_switches_to_the_new_tasks_keys():
    """The old task's own keys go; shared ones (train_size, and seq_len between sequence tasks) stay."""
    from vgrad_cli.config import load_config

    cfg = load_config(CONFIGS / "11_rnn_adding.yaml", ["task.name=temporal_order"])
    assert cfg.task.name == "temporal_order" and cfg.task.seq_len == load_config(CONFIGS / "11_rnn_adding.yaml").task.seq_len
    cfg = load_config(CONFIGS / "18_cnn_deep_sigmoid.yaml", ["model.kind=mlp", "model.activation=relu", "task.name=blobs"])
    assert cfg.task.name == "blobs" and not hasattr(cfg.task, "image_size")


def test_a_quoted_command_is_not_broken_across_lines():
    """`vgrad diagnose RUN` in prose moves to the next line whole (it is there to be copied); one
    wider than a line still wraps."""
    import io

    from rich.console import Console

    from vgrad_cli.report.console import print_lines

    buf = io.StringIO()
    console = Console(file=buf, width=60, force_terminal=False)
    print_lines(console, ["symptoms present (explained by `vgrad diagnose deep-sigmoid-20261206-213419-bb10`):",
                          "see `" + "x " * 40 + "`"])
    lines = buf.getvalue().splitlines()
    assert lines[1].strip() == "`vgrad diagnose deep-sigmoid-20261206-213419-bb10`):", lines
    assert all(len(line) <= 60 for line in lines), lines
