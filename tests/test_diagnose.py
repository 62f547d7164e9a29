"""`vgrad diagnose`: every indicator on a real run built to show it and on one built not to,
the verdict and recommendations, --try, the errors, and that the run's tables are left alone."""

import hashlib
import json
import shutil

import pytest

from conftest import small
from vgrad_cli.config import load_config, validate
from vgrad_cli.analysis.diagnose import diagnose, short_report
from vgrad_cli.training.runner import run_experiment

RELU = {"activation": "relu", "init": "kaiming_normal"}
ADDING = {"name": "adding", "seq_len": 40, "train_size": 256, "eval_size": 64}
CASES = {
    # a ReLU/Kaiming MLP that learns blobs: no indicator present
    "healthy": small(model={"depth": 4, "width": 32, **RELU}, train={"steps": 150, "batch_size": 64},
                     log={"every": 10, "eval_every": 50}),
    # a deep sigmoid MLP: vanishing, with its consequences
    "sigmoid": small(model={"depth": 12, "width": 16, "activation": "sigmoid", "init": "xavier_normal"},
                     train={"steps": 60}),
    # Adam at a large learning rate kills ReLU units. lr 0.2, not 0.05: at 0.05 the dead fraction at the
    # end spreads 0.29-0.62 over seeds 0-5 around the 0.4 threshold (and an AMD CPU's run did not die);
    # at 0.2 it is 0.61-0.81
    "dying": small(model={"depth": 6, "width": 32, **RELU}, train={"optimizer": "adam", "lr": 0.2, "steps": 200, "batch_size": 64},
                   log={"every": 10, "eval_every": 50}),
    # Kaiming with gain 2.5 instead of ReLU's 1.41: diverges
    "exploding": small(model={"depth": 12, "width": 32, **RELU, "init_std": 2.5}, train={"steps": 40, "lr": 0.01}),
    # the same, clipped: completes, still exploding across layers; clipping on every step
    "clipped": small(model={"depth": 12, "width": 32, **RELU, "init_std": 2.5}, train={"steps": 40, "lr": 0.01, "clip_norm": 1.0}),
    # a good network with a learning rate too small to move: not a gradient problem
    "underfit": small(model={"depth": 4, "width": 32, **RELU}, train={"steps": 40, "lr": 1e-5}),
    # a tanh RNN on the adding problem: vanishing through time
    "rnn": small(model={"kind": "rnn", "depth": 1, "width": 16, "activation": "tanh", "init": "default"}, task=ADDING,
                 train={"optimizer": "adam", "lr": 0.001, "steps": 40}, log={"every": 10, "eval_every": 20}),
    # an IRNN (identity recurrent init): the gradient keeps its size through time
    "irnn": small(model={"kind": "rnn", "depth": 2, "width": 16, "activation": "relu", "init": "xavier_normal",
                         "recurrent_init": "identity"}, task=ADDING,
                  train={"optimizer": "adam", "lr": 0.001, "steps": 40, "clip_norm": 1.0}, log={"every": 10, "eval_every": 20}),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    out = {}
    for name, cfg in CASES.items():
        run_dir, _ = run_experiment(validate({**cfg, "name": name}), root)
        out[name] = (run_dir, diagnose(run_dir))
    return out


def status(runs, name, key):
    return next(i for i in runs[name][1]["indicators"] if i["key"] == key)


# (indicator, run built to show it, run built not to)
SHOWN = [
    ("slow_training", "sigmoid", "healthy"),
    ("slow_training", "underfit", "clipped"),
    ("poor_performance", "sigmoid", "healthy"),
    ("poor_performance", "rnn", "healthy"),
    ("gradient_decay", "sigmoid", "healthy"),
    ("gradient_decay", "rnn", "irnn"),
    ("unresponsive_units", "sigmoid", "healthy"),
    ("unresponsive_units", "dying", "underfit"),
    ("weights_barely_moving", "sigmoid", "healthy"),
    ("weights_barely_moving", "underfit", "rnn"),
    ("dying_relu", "dying", "healthy"),
    ("exploding", "exploding", "healthy"),
    ("exploding", "clipped", "irnn"),
]


@pytest.mark.parametrize("key, shows, not_", SHOWN)
def test_indicator_present_where_built_and_absent_where_not(runs, key, shows, not_):
    yes, no = status(runs, shows, key), status(runs, not_, key)
    assert yes["status"] == "present", yes
    assert no["status"] == "absent", no
    for i in (yes, no):
        assert i["summary"] and i["threshold"] and isinstance(i["evidence"], dict)


def test_healthy_run_shows_nothing_and_needs_nothing(runs):
    d = runs["healthy"][1]
    assert d["verdict"] == "healthy" and d["present"] == [] and d["recommendations"] == []


@pytest.mark.parametrize("name, verdict", [("healthy", "healthy"), ("sigmoid", "vanishing"), ("dying", "dying-relu"),
                                           ("exploding", "exploding"), ("clipped", "exploding"),
                                           ("underfit", "underfitting"), ("rnn", "vanishing")])
def test_verdict(runs, name, verdict):
    assert runs[name][1]["verdict"] == verdict


def test_gradient_decay_evidence_per_layer_and_through_time(runs):
    ev = status(runs, "sigmoid", "gradient_decay")["evidence"]
    first = ev["first_step"]
    assert len(first["grad_norm"]) == len(first["delta_norm"]) == 13  # 12 hidden + output
    assert first["delta"]["ratio"] < 1e-4 and first["delta"]["orders_per_step"] < -0.3
    assert first["delta"]["db_per_step"] == pytest.approx(20 * first["delta"]["orders_per_step"])
    t = status(runs, "rnn", "gradient_decay")["evidence"]["first_step"]["time"]
    assert t["T"] == 40 and t["ratio"] < 1e-4


def test_ablation_resets_early_layers_and_leaves_the_run_alone(runs, tmp_path):
    run_dir, _ = runs["healthy"]
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.iterdir() if p.is_file()
              and p.name != "diagnosis.json"}
    d = diagnose(run_dir, k=2)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.iterdir() if p.is_file()
             and p.name != "diagnosis.json"}
    assert before == after
    ev = status({"x": (run_dir, d)}, "x", "reliance_on_upper_layers")["evidence"]
    assert ev["k"] == 2 and ev["layers_reset"] == [0, 1] and ev["restored_loss_matches"]
    assert ev["loss_ablated"] > 2 * ev["loss_final"]
    assert json.loads((run_dir / "diagnosis.json").read_text())["indicators"][4]["evidence"]["k"] == 2
    # a model that learned: a percentage of what it learned ("layer 0": its, not their, weights)
    healthy = status(runs, "healthy", "reliance_on_upper_layers")
    assert healthy["summary"].startswith("resetting layer 0 to its initial weights: loss ") and "% of the" in healthy["summary"]
    # one that learned nothing (lr 1e-5) has nothing to undo: not informative, no percentage, not present
    flat = status(runs, "underfit", "reliance_on_upper_layers")
    assert flat["status"] == "not measurable" and flat["evidence"]["informative"] is False, flat
    assert flat["summary"].startswith("not informative: the model did not beat ") and "%" not in flat["summary"]
    # not measurable: no layer left above, or no model.pt (a diverged run)
    assert status(runs, "rnn", "reliance_on_upper_layers")["status"] == "not measurable"
    assert status(runs, "exploding", "reliance_on_upper_layers")["status"] == "not measurable"


def test_ablation_finds_reliance_on_upper_layers_when_the_first_layers_never_moved(runs, tmp_path):
    """The indicator's 'present' path on real files: a copy of the healthy run whose final weights
    keep layers 0-1 at their initial values (as if those layers had never learned). The model still
    beat the baseline (its upper layers learned), and resetting layers 0-1 changes nothing."""
    import torch

    run_dir = tmp_path / "frozen"
    shutil.copytree(runs["healthy"][0], run_dir)
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    for key in saved["final"]:
        if key.startswith(("blocks.0.", "blocks.1.")):
            saved["final"][key] = saved["init"][key].clone()
    torch.save(saved, run_dir / "model.pt")
    d = diagnose(run_dir, k=2, jacobian=False)
    item = status({"x": (run_dir, d)}, "x", "reliance_on_upper_layers")
    ev = item["evidence"]
    assert ev["informative"] and ev["loss_final"] < 0.95 * ev["baseline_loss"], ev
    assert ev["loss_ablated"] == pytest.approx(ev["loss_final"], rel=1e-6) and ev["relative_rise"] < 1e-6
    assert item["status"] == "present" and "reliance_on_upper_layers" in d["present"]


def test_dying_relu_trend_and_exploding_supporting_evidence(runs):
    ev = status(runs, "dying", "dying_relu")["evidence"]
    assert ev["mean_last"] > ev["mean_first"] + 0.2 and ev["trend"][0]["step"] == 0
    ex = status(runs, "clipped", "exploding")["evidence"]
    assert ex["clipping_active_frac"] == 1.0 and ex["delta_ratio_first_step"] > 100
    # clipping on every step alone does not make an explosion (the IRNN's loss is simply large)
    irnn = status(runs, "irnn", "exploding")
    assert irnn["evidence"]["clipping_active_frac"] == 1.0 and irnn["status"] == "absent"


def test_recommendations_name_keys_and_predict_with_theory(runs):
    top = runs["sigmoid"][1]["recommendations"][0]
    assert top["set"] == {"model.activation": "relu", "model.init": "kaiming_normal", "model.init_std": None, "train.lr": 0.05}
    assert top["theory_factor_after"] == pytest.approx(1.0)
    assert {"model.norm": "batch"} in [r["set"] for r in runs["sigmoid"][1]["recommendations"]]
    assert runs["dying"][1]["recommendations"][0]["set"] == {"model.activation": "leaky_relu"}
    assert runs["exploding"][1]["recommendations"][0]["set"] == {"model.init_std": None}
    assert runs["rnn"][1]["recommendations"][0]["set"]["model.kind"] == "lstm"
    th = runs["sigmoid"][1]["theory"]
    assert th["applicable"] and th["measured_factor"] == pytest.approx(th["factor"], rel=0.25)
    assert runs["rnn"][1]["theory"]["applicable"] is False and runs["rnn"][1]["theory"]["measured_time_factor"] < 1


@pytest.mark.parametrize("name", list(CASES))
def test_one_verdict_for_run_show_and_diagnose(runs, cli, name):
    """summary.json (what `vgrad run`, `show`, `runs` and sweeps print) and diagnosis.json agree."""
    run_dir, d = runs[name]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["verdict"] == d["verdict"] == json.loads((run_dir / "diagnosis.json").read_text())["verdict"]
    assert f"verdict: {d['verdict']}" in cli("show", run_dir).output


def test_one_layer_recurrent_evidence_is_through_time(runs):
    """A one-layer rnn's 'layer 0 / output' is the recurrent layer against its linear head: the
    evidence for vanishing is the gradient through time, and it alone is quoted."""
    g = status(runs, "rnn", "gradient_decay")
    assert g["status"] == "present" and "||dL/dh_0||" in g["summary"] and "layer 0/output" not in g["summary"]
    assert {v["where"] for v in g["evidence"]["vanishing_at"]} == {"through time"}
    stacked = status(runs, "irnn", "gradient_decay")  # two stacked layers: the layer ratio counts too
    assert "layer 0/output" in stacked["summary"]


def test_advice_quotes_theory_only_where_the_change_can_move_it(runs):
    recs = runs["exploding"][1]["recommendations"] + runs["dying"][1]["recommendations"]
    for r in recs:
        assert ("theory_factor_after" in r) == any(k.startswith("model.") for k in r["set"]), r
    assert any(r["set"] == {"train.lr": pytest.approx(0.02)} and "theory_factor_after" not in r for r in recs)


@pytest.mark.parametrize("name", ["sigmoid", "rnn", "exploding"])
def test_try_prints_only_keys_that_apply_to_the_model_kind(runs, cli, name):
    import yaml

    from vgrad_cli.config import KIND_ONLY

    res = cli("diagnose", runs[name][0], "--try", "--no-ablation")
    model = yaml.safe_load(res.stdout)["model"]
    ignored = {k for k, kinds in KIND_ONLY.items() if model["kind"] not in kinds}
    assert ignored and not ignored & set(model), model  # e.g. an MLP's has no recurrent_init


def test_short_report(runs):
    for name in ("healthy", "sigmoid", "exploding"):
        lines = short_report(runs[name][1])
        assert 1 <= len(lines) <= 6 and lines[0].startswith("diagnosis: ")
    lines = short_report(runs["sigmoid"][1])
    assert len(lines) >= 3 and lines[-1].startswith("try: ") and "--set model.activation=relu" in lines[-1]


@pytest.mark.parametrize("name", ["sigmoid", "rnn", "exploding", "dying"])
def test_try_prints_a_config_that_loads(runs, cli, tmp_path, name):
    run_dir, d = runs[name]
    res = cli("diagnose", run_dir, "--try", "--no-ablation")
    assert res.exit_code == 0, res.output
    path = tmp_path / "fix.yaml"
    path.write_text(res.stdout)
    cfg = load_config(path)
    for key, value in d["recommendations"][0]["set"].items():
        section, field = key.split(".")
        assert getattr(getattr(cfg, section), field) == value
    res = cli("diagnose", run_dir, "--write", tmp_path / "w.yaml", "--rec", "2", "--no-ablation")
    assert res.exit_code == 0 and load_config(tmp_path / "w.yaml").name.endswith("-fix")


def test_cli_report_and_json(runs, cli):
    run_dir, _ = runs["sigmoid"]
    res = cli("diagnose", run_dir)
    assert res.exit_code == 0, res.output
    for word in ("slow or stalled", "dying ReLU", "present", "theory", "verdict: vanishing", "--set model.activation=relu"):
        assert word in res.stdout, word
    res = cli("diagnose", run_dir, "--format", "json", "--no-ablation")
    assert json.loads(res.stdout)["verdict"] == "vanishing"


def test_cli_bad_input_is_one_line_exit_2(runs, cli, tmp_path):
    healthy, _ = runs["healthy"]
    broken = tmp_path / "broken"
    shutil.copytree(healthy, broken)
    (broken / "layers.csv").unlink()
    (tmp_path / "empty").mkdir()
    for args in ([tmp_path / "nope"], [tmp_path / "empty"], [broken], [healthy, "--try"], [healthy, "--k", "0"],
                 ["nope", "--runs-dir", tmp_path]):
        res = cli("diagnose", *args)
        assert res.exit_code == 2, (args, res.output)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output, res.stderr


def test_a_healthy_verdict_names_the_indicators_that_are_present_anyway():
    """'no indicator present' only when none is: a run whose gradient is fine but whose early layers
    the ablation probe finds unnecessary is healthy, and the sentence says what was found."""
    from vgrad_cli.analysis.diagnose import decide

    def item(key, name, status):
        return {"key": key, "name": name, "status": status, "summary": name, "evidence": {}}

    keys = {"slow_training": "slow or stalled training", "poor_performance": "poor performance",
            "gradient_decay": "gradient decay", "unresponsive_units": "unresponsive units",
            "reliance_on_upper_layers": "reliance on upper layers (ablation)",
            "weights_barely_moving": "early-layer weights barely moving", "dying_relu": "dying ReLU",
            "exploding": "exploding gradients"}
    none = {k: item(k, n, "absent") for k, n in keys.items()}
    assert decide(none) == ("healthy", "no indicator present", False)
    some = {**none, "reliance_on_upper_layers": item("reliance_on_upper_layers", keys["reliance_on_upper_layers"],
                                                     "present")}
    verdict, why, _ = decide(some)
    assert verdict == "healthy" and "no indicator present" not in why and "reliance on upper layers" in why


def test_run_prints_its_suggestion_as_a_command_that_pastes(write_config, tmp_path):
    """The end of `vgrad run` at 60 columns: the suggestion is `vgrad run CONFIG --set ...`,
    continued after a backslash where it wraps (never broken inside `--set KEY=VALUE`)."""
    import os
    import shlex
    import subprocess
    import sys

    cfg = write_config(CASES["sigmoid"])
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "60"}
    proc = subprocess.run([sys.executable, "-m", "vgrad_cli", "run", str(cfg), "--out", str(tmp_path / "runs"), "--no-plots"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("try"))
    assert lines[at].endswith(":") and lines[at + 1].startswith("  vgrad run "), proc.stdout
    command = []
    for line in lines[at + 1:]:
        command.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    assert len(command) > 1 and all(len(line) <= 60 for line in lines[at:at + len(command) + 1])
    words = shlex.split(" ".join(command))
    assert words[:2] == ["vgrad", "run"] and words[2].endswith("config.yaml")
    assert "model.activation=relu" in words and words[words.index("model.activation=relu") - 1] == "--set"
