"""Every bad input: one clear line, exit code 2, no traceback, no run directory."""

import pytest

from conftest import small, vgrad_subprocess


def assert_clean_error(result, out_dir, *fragments):
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert "Traceback" not in err and "Traceback" not in result.stdout
    for f in fragments:
        assert f in err, err
    assert not out_dir.exists() or not any(out_dir.iterdir()), "a run directory was created"


CASES = [
    ("missing file", None, [], "not found"),
    ("empty", "", [], "is empty"),
    ("invalid yaml", "model: [1, 2\n", [], "invalid YAML"),
    ("not a mapping", "- a\n- b\n", [], "must be a mapping"),
    ("object tag", "seed: !!python/object/new:int [3]\n", [], "is not allowed"),
    ("unknown key", small(model={"dept": 3}), [], "unknown key 'model.dept' (did you mean 'model.depth'?)"),
    ("wrong type", small(model={"width": "wide"}), [], "model.width: expected an integer (got 'wide')"),
    ("depth 0", small(model={"depth": 0}), [], "model.depth: must be >= 1"),
    ("lr 0", small(train={"lr": 0}), [], "train.lr: must be > 0"),
    ("unknown activation", small(model={"activation": "swish"}), [], "choose one of: sigmoid, tanh"),
    ("unknown task", small(task={"name": "xor"}), [], "'xor' is not a known task"),
    ("both clips", small(train={"clip_norm": 1, "clip_value": 1}), [], "both set"),
    ("set without =", small(), ["--set", "model.depth"], "expected KEY=VALUE"),
    ("set unknown key", small(), ["--set", "model.deepth=3"], "unknown key 'model.deepth'"),
    ("set bad value", small(), ["--set", "train.steps=-5"], "train.steps: must be >= 1"),
    ("set key without its section", small(), ["--set", "depth=40"], "unknown key 'depth' (did you mean 'model.depth'?)"),
    ("set a task key of another task", small(), ["--set", "task.seq_len=40"],
     "unknown key 'task.seq_len' (only tasks adding, temporal_order take 'seq_len')"),
    ("--steps 0", small(), ["--steps", "0"], "--steps 0: train.steps: must be >= 1"),
    ("--name with space", small(), ["--name", "my run"], "may hold only letters"),
    ("residual_scale not a number", small(model={"residual": True, "residual_scale": "1/depth"}), [],
     "model.residual_scale: must be a number > 0 or the string '1/sqrt(depth)' (got '1/depth')"),
    ("residual_scale true", small(model={"residual": True}), ["--set", "model.residual_scale=true"],
     "model.residual_scale: must be a number > 0 or the string '1/sqrt(depth)' (got True)"),
    ("residual_scale without residual", small(), ["--set", "model.residual_scale=0.5"],
     "model.residual_scale scales a residual branch: it needs model.residual: true"),
    ("heads on an mlp", small(model={"heads": 4}), [], "model.heads applies to model.kind transformer only (got kind mlp)"),
    ("norm_position on an rnn", small(model={"kind": "rnn", "activation": "tanh"}, task={"name": "adding"}),
     ["--set", "model.norm_position=pre"], "model.norm_position applies to model.kind transformer only (got kind rnn)"),
    ("unknown norm_position", small(model={"kind": "transformer", "activation": None, "norm_position": "middle"},
                                    task={"name": "adding"}), [], "'middle' is not a known norm_position; choose one of: post, pre"),
    ("heads not dividing width", small(model={"kind": "transformer", "activation": None, "width": 16, "heads": 3},
                                       task={"name": "adding"}), [], "model.heads 3 must divide model.width 16"),
    ("transformer on a static task", small(model={"kind": "transformer", "activation": None}), [],
     "task.name 'blobs' does not fit model.kind 'transformer'; it takes model.kind: mlp"),
    ("norm on a transformer", small(model={"kind": "transformer", "activation": None, "norm": "batch"},
                                    task={"name": "adding"}), [], "model.norm and model.residual do not apply to a transformer"),
    ("identity init on a transformer", small(model={"kind": "transformer", "activation": None, "init": "identity"},
                                             task={"name": "adding"}), [],
     "model.init identity needs a square matrix; a transformer's MLP weights (width -> 4*width)"),
    ("negative warmup", small(train={"warmup_steps": -1}), [], "train.warmup_steps: must be >= 0"),
    # switching the task drops the old task's own keys (seq_len): what is left is the kind mismatch
    ("image task on an rnn via --set", small(model={"kind": "rnn", "activation": "tanh"}, task={"name": "adding", "seq_len": 9}),
     ["--set", "task.name=shapes"], "--set task.name=shapes: task.name 'shapes' does not fit model.kind 'rnn'; it takes model.kind: cnn"),
    ("sequence task on a cnn via --set", small(model={"kind": "cnn", "activation": "relu"}, task={"name": "shapes", "image_size": 8}),
     ["--set", "task.name=adding"], "--set task.name=adding: task.name 'adding' does not fit model.kind 'cnn'"),
    ("a key set for a task that does not take it", small(model={"kind": "rnn", "activation": "tanh"}, task={"name": "adding"}),
     ["--set", "task.name=shapes", "--set", "task.seq_len=30"], "--set task.seq_len=30: unknown key 'task.seq_len'"),
]


@pytest.mark.parametrize("label,data,args,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(cli, write_config, tmp_path, label, data, args, message):
    path = tmp_path / "missing.yaml" if data is None else write_config(data)
    out = tmp_path / "runs"
    result = cli("run", path, "--out", out, *args)
    assert_clean_error(result, out, message)
    assert len(result.stderr.strip().splitlines()) == 1


def test_error_from_a_real_process_is_one_line_on_stderr(write_config, tmp_path):
    p = write_config(small(model={"activation": "sigmod"}))
    proc = vgrad_subprocess("run", p, "--out", tmp_path / "runs")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {p}: model.activation: 'sigmod' is not a known activation; choose one of: sigmoid, tanh, "
        "relu, leaky_relu, prelu, elu, gelu, silu, selu, linear (did you mean 'sigmoid'?)"
    )
    assert proc.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from vgrad_cli.cli.main import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['run', '--help']); assert r.exit_code == 0, r.output; "
            "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_validation_does_not_import_torch(write_config):
    import subprocess
    import sys

    p = write_config(small())
    code = ("import sys; from vgrad_cli.config import load_config; load_config(sys.argv[1]); "
            "assert 'torch' not in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True)
    assert proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("args,message", [
    (["run", "--bogus"], "error: vgrad run: No such option: --bogus"),
    (["run"], "error: vgrad run: Missing argument 'config'."),
    (["export", "x"], "error: vgrad export: Missing option '--to'."),
    (["run", "a.yaml", "b.yaml"], "error: vgrad run: Got unexpected extra argument(s) (b.yaml)"),
    (["report", "some-run", "-o"], "error: vgrad report: Option '-o' requires an argument."),
    (["sweep", "depth", "--workers", "two"], "error: vgrad sweep: Invalid value for '--workers'"),
])
def test_a_parser_error_is_one_line_too(tmp_path, args, message):
    """What the parser rejects (an unknown option, a missing argument) reads like vgrad's own
    errors: one line on stderr naming the command, exit code 2, not click's boxed block."""
    proc = vgrad_subprocess(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert "-h)" in lines[0] and "Traceback" not in proc.stderr and proc.stdout == ""
