"""The config schema: defaults, overrides, and a clear error naming the key for every bad input."""

import pytest

from vgrad_cli.activations import ACTIVATIONS
from vgrad_cli.config import Config, apply_overrides, load_config, validate
from vgrad_cli.errors import UsageError
from vgrad_cli.inits import INITS


def test_three_line_config_gets_documented_defaults(write_config):
    cfg = load_config(write_config("model:\n  depth: 12\n  activation: sigmoid\n"))
    assert cfg.model.depth == 12 and cfg.model.activation == "sigmoid"
    assert cfg.model.width == 64 and cfg.train.optimizer == "sgd" and cfg.log.every == 10
    assert cfg.task.name == "spirals" and cfg.task.train_size == 8192
    assert cfg.train.clip_norm is None and cfg.model.norm == "none"


def test_issue_example_config_validates(write_config):
    text = """
name: deep-sigmoid
seed: 0
model: {kind: mlp, depth: 20, width: 64, activation: sigmoid, init: xavier_normal, init_std: null,
        bias_init: 0.0, norm: none, residual: false}
task: {name: spirals}
train: {optimizer: sgd, lr: 0.1, momentum: 0.0, batch_size: 128, steps: 1000, clip_norm: null,
        clip_value: null, device: auto}
log: {every: 10, activations: true}
"""
    cfg = load_config(write_config(text))
    assert cfg.run_name() == "deep-sigmoid"
    assert Config.model_validate(cfg.to_dict()) == cfg  # the resolved config round-trips


def test_set_overrides_parse_yaml_scalars(write_config):
    cfg = load_config(write_config("model: {depth: 3}\n"),
                      ["model.depth=30", "train.lr=1e-3", "model.residual=true", "train.clip_norm=null",
                       "task.name=parity", "task.n_bits=4"])
    assert cfg.model.depth == 30 and cfg.train.lr == 0.001 and cfg.model.residual is True
    assert cfg.task.name == "parity" and cfg.task.n_bits == 4


@pytest.mark.parametrize("item", ["model.depth", "=3", "model..depth=3"])
def test_malformed_set(item):
    with pytest.raises(UsageError, match="KEY=VALUE"):
        apply_overrides({}, [item])


def test_errors_from_set_name_the_flag_not_the_file(write_config):
    with pytest.raises(UsageError, match=r"^--set train.steps=-5: train.steps: must be >= 1"):
        load_config(write_config("model: {depth: 3}\n"), ["train.steps=-5"])
    with pytest.raises(UsageError, match=r"cfg.yaml: train.lr: must be > 0"):
        load_config(write_config("train: {lr: 0}\n"), ["train.steps=5"])


def test_set_into_a_value_is_an_error():
    with pytest.raises(UsageError, match="'seed' is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


BAD = [
    ({"model": {"depth": 0}}, "model.depth: must be >= 1 (got 0)"),
    ({"model": {"width": 0}}, "model.width: must be >= 1"),
    ({"model": {"depth": "deep"}}, "model.depth: expected an integer (got 'deep')"),
    ({"model": {"depth": 2.5}}, "model.depth: expected an integer"),
    ({"train": {"lr": 0}}, "train.lr: must be > 0 (got 0)"),
    ({"train": {"lr": -1}}, "train.lr: must be > 0"),
    ({"train": {"steps": 0}}, "train.steps: must be >= 1"),
    ({"train": {"batch_size": 0}}, "train.batch_size: must be >= 1"),
    ({"log": {"every": 0}}, "log.every: must be >= 1"),
    ({"train": {"clip_norm": 0}}, "train.clip_norm: must be > 0"),
    ({"train": {"clip_norm": -1.0}}, "train.clip_norm: must be > 0"),
    ({"train": {"clip_value": -0.5}}, "train.clip_value: must be > 0"),
    ({"model": {"init_std": 0}}, "model.init_std: must be > 0"),
    ({"model": {"activation": "sigmod"}}, "model.activation: 'sigmod' is not a known activation; choose one of: sigmoid, tanh, relu"),
    ({"model": {"init": "he"}}, "model.init: 'he' is not a known init; choose one of: default, xavier_uniform"),
    ({"model": {"norm": "group"}}, "model.norm: 'group' is not a known norm; choose one of: none, batch, layer"),
    ({"train": {"optimizer": "adamw"}}, "train.optimizer: 'adamw' is not a known optimizer; choose one of: sgd, adam, rmsprop"),
    ({"train": {"device": "tpu"}}, "train.device: 'tpu' is not a known device"),
    ({"model": {"kind": "mamba"}}, "model.kind: 'mamba' is not a known model kind"),
    ({"task": {"name": "mnist"}}, "task.name: 'mnist' is not a known task; choose one of: teacher, spirals, parity, blobs"),
    ({"task": {"n_bits": 4}}, "task.name is missing"),
    ({"train": {"clip_norm": 1.0, "clip_value": 1.0}}, "train.clip_norm and train.clip_value are both set"),
    ({"modle": {}}, "unknown key 'modle' (did you mean 'model'?)"),
    ({"model": {"activaton": "relu"}}, "unknown key 'model.activaton' (did you mean 'model.activation'?)"),
    ({"task": {"name": "parity", "n_bitz": 3}}, "unknown key 'task.n_bitz' (did you mean 'task.n_bits'?)"),
    ({"model": 5}, "model: expected a mapping of keys (got 5)"),
    ({"name": "a b"}, "name: 'a b' may hold only letters"),
    ({"train": {"optimizer": "adam", "momentum": 0.9}}, "train.momentum applies to sgd and rmsprop only"),
    ({"model": {"norm": "batch"}, "train": {"batch_size": 1}}, "model.norm: batch needs train.batch_size >= 2"),
    ({"train": {"lr": float("inf")}}, "train.lr: must be a finite number"),
    ({"train": {"lr": float("nan")}}, "train.lr: must be a finite number"),
    ({"train": {"lr": 1e300}}, "train.lr: must be <= 1e+06"),
    ({"model": {"init_std": float("inf")}}, "model.init_std: must be a finite number"),
    ({"model": {"depth": 100000}}, "above vgrad's limit of 1e+08; use a smaller depth or width"),
    ({"model": {"width": 100000, "depth": 1}}, "parameters, above vgrad's limit"),
    ({"train": {"batch_size": 1000000}, "model": {"width": 1024, "depth": 8}}, "activations per step, above vgrad's limit"),
]


@pytest.mark.parametrize("data,message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_values_name_the_key(data, message):
    with pytest.raises(UsageError) as e:
        validate(data)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_suggests_the_closest_activation():
    with pytest.raises(UsageError, match=r"did you mean 'leaky_relu'\?"):
        validate({"model": {"activation": "leaky_rely"}})


def test_every_registered_name_is_accepted():
    for act in ACTIVATIONS:
        validate({"model": {"activation": act}})
    for init in INITS:
        validate({"model": {"init": init}})


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "is empty"),
        ("# just a comment\n", "holds no keys"),
        ("model: {depth: 3\n", "invalid YAML in"),
        ("model:\n  depth: 3\n   width: 4\n", "line 3"),
        ("- 1\n- 2\n", "must be a mapping of keys"),
        ("just a string", "must be a mapping of keys"),
        ("model: !!python/object/apply:os.system ['echo hi']\n", "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"),
    ],
)
def test_unreadable_yaml(write_config, text, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(write_config(text))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UsageError, match="is a directory"):
        load_config(tmp_path)


def test_binary_file(tmp_path):
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(UsageError, match="cannot read config file"):
        load_config(p)
