"""The MLP builder: structure, layer order, and the statistics of every initialization."""

import math

import pytest
import torch

from vgrad_cli.activations import ACTIVATIONS
from vgrad_cli.config import validate
from vgrad_cli.models import build_model


def mlp(seed=0, input_dim=256, **model):
    cfg = validate({"model": {"depth": 3, "width": 256, **model}, "task": {"name": "blobs", "input_dim": input_dim}})
    task = cfg.task.model_copy(update={"train_size": 8, "eval_size": 8}).make(seed)
    return build_model(cfg.model, task, seed), cfg


def hidden_weights(model):
    return [b.linear.weight.detach() for b in model.blocks]


@pytest.mark.parametrize(
    "init,activation,expected_var",
    [
        ("kaiming_normal", "relu", lambda fi, fo: 2 / fi),
        ("kaiming_uniform", "relu", lambda fi, fo: 2 / fi),
        ("kaiming_normal", "tanh", lambda fi, fo: (5 / 3) ** 2 / fi),
        ("kaiming_normal", "leaky_relu", lambda fi, fo: 2 / (1 + 0.01**2) / fi),
        ("xavier_normal", "relu", lambda fi, fo: 2 / (fi + fo)),
        ("xavier_uniform", "sigmoid", lambda fi, fo: 2 / (fi + fo)),
        ("lecun_normal", "selu", lambda fi, fo: 1 / fi),
        ("normal", "relu", lambda fi, fo: 0.01**2),
        ("uniform", "relu", lambda fi, fo: 0.05**2 / 3),
        ("default", "relu", lambda fi, fo: 1 / (3 * fi)),  # torch's kaiming_uniform(a=sqrt 5)
    ],
)
def test_init_variance(init, activation, expected_var):
    model, _ = mlp(init=init, activation=activation)
    for w in hidden_weights(model):
        fo, fi = w.shape
        assert w.var().item() == pytest.approx(expected_var(fi, fo), rel=0.05)
        assert abs(w.mean().item()) < 0.05 * math.sqrt(expected_var(fi, fo))


def test_init_std_sets_std_bound_or_gain():
    w = hidden_weights(mlp(init="normal", init_std=0.3)[0])[1]
    assert w.std().item() == pytest.approx(0.3, rel=0.03)
    w = hidden_weights(mlp(init="uniform", init_std=0.2)[0])[1]
    assert w.abs().max().item() <= 0.2 and w.abs().max().item() > 0.19
    w = hidden_weights(mlp(init="kaiming_normal", init_std=3.0)[0])[1]
    assert w.var().item() == pytest.approx(9 / 256, rel=0.05)
    w = hidden_weights(mlp(init="xavier_normal", init_std=2.0)[0])[1]
    assert w.var().item() == pytest.approx(4 * 2 / 512, rel=0.05)


def test_orthogonal_rows_are_orthonormal():
    for w in hidden_weights(mlp(init="orthogonal", activation="linear")[0])[1:]:
        assert torch.allclose(w @ w.T, torch.eye(w.shape[0]), atol=1e-4)


def test_bias_init():
    model, _ = mlp(init="kaiming_normal", bias_init=0.25)
    for b in model.blocks:
        assert torch.all(b.linear.bias == 0.25)
    assert torch.all(model.head.bias == 0.25)


def test_structure_and_layer_order():
    model, _ = mlp(depth=4, width=32, input_dim=7, norm="batch", residual=True, activation="prelu")
    layers = model.probe_layers()
    assert [layer.name for layer in layers] == ["hidden0", "hidden1", "hidden2", "hidden3", "output"]
    assert layers[0].weight.shape == (32, 7) and layers[-1].weight.shape == (4, 32)
    # grad_norm covers every parameter of a block: Linear weight+bias, BN gamma+beta, PReLU slopes
    assert len(layers[1].params) == 5
    assert [b.skip for b in model.blocks] == [False, True, True, True]
    assert isinstance(model.blocks[0].norm, torch.nn.BatchNorm1d)


def test_residual_block_adds_its_input():
    model, _ = mlp(depth=2, width=8, input_dim=8, residual=True, activation="relu", init="kaiming_normal")
    x = torch.randn(5, 8)
    h0 = model.blocks[0].act(model.blocks[0].linear(x))
    h1 = h0 + model.blocks[1].act(model.blocks[1].linear(h0))
    assert torch.allclose(model(x), model.head(h1), atol=1e-6)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_every_activation_builds_and_runs(name):
    model, _ = mlp(depth=2, width=16, input_dim=4, activation=name)
    out = model(torch.randn(3, 4))
    assert out.shape == (3, 4) and torch.isfinite(out).all()


def test_same_seed_same_weights():
    a, _ = mlp(seed=3, init="xavier_normal")
    b, _ = mlp(seed=3, init="xavier_normal")
    c, _ = mlp(seed=4, init="xavier_normal")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.blocks[0].linear.weight, c.blocks[0].linear.weight)
