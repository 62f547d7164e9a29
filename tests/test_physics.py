"""Where theory gives a number, the measurement must reproduce it (at step 0, before any update).

Mean-field theory (Poole et al. 2016; Schoenholz et al. 2017): the back-propagated error delta_l
changes by sqrt(chi_1) per layer; ReLU: chi_1 = sigma_w^2 / 2, so Kaiming-normal (sigma_w^2 = 2)
gives 1.00 and Xavier-normal at equal fan-in/out (sigma_w^2 = 1) gives 1/sqrt(2) = 0.707.
Sigmoid's derivative is at most 0.25, so a deep sigmoid net vanishes geometrically.
"""

import math

import pytest

from conftest import measure_at_init


def per_layer_delta_factor(activation, init, depth, width, seeds=3, batch=256, **model):
    """Geometric-mean factor of delta_norm between consecutive hidden layers, averaged over seeds."""
    factors, host = [], None
    for seed in range(seeds):
        _, host = measure_at_init(activation, init, depth, width, seed, batch, **model)
        d = host["delta_norm"][:depth]  # hidden layers only
        factors.append((d[0] / d[-1]) ** (1 / (depth - 1)))
    return sum(factors) / len(factors), host


def test_relu_kaiming_normal_keeps_the_gradient():
    factor, _ = per_layer_delta_factor("relu", "kaiming_normal", depth=30, width=256)
    assert factor == pytest.approx(1.0, abs=0.05)


def test_relu_xavier_normal_shrinks_by_one_over_sqrt2():
    factor, _ = per_layer_delta_factor("relu", "xavier_normal", depth=30, width=256)
    assert factor == pytest.approx(1 / math.sqrt(2), rel=0.05)


def test_deep_sigmoid_vanishes_below_the_derivative_bound():
    factor, host = per_layer_delta_factor("sigmoid", "xavier_normal", depth=10, width=64)
    assert factor < 0.25  # sigmoid' <= 0.25 and Xavier keeps ||W|| ~ 1
    assert factor == pytest.approx(0.23, abs=0.03)
    assert host["grad_norm"][0] / host["grad_norm"][-1] < 1e-4  # orders of magnitude below the output


def test_linear_orthogonal_preserves_the_norm_exactly_per_layer():
    factor, _ = per_layer_delta_factor("linear", "orthogonal", depth=10, width=64, seeds=1)
    assert factor == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("remedy", [{"norm": "batch"}, {"residual": True}])
def test_batch_norm_and_residual_rescue_deep_sigmoid(remedy):
    plain, _ = per_layer_delta_factor("sigmoid", "xavier_normal", depth=20, width=64, seeds=1)
    rescued, _ = per_layer_delta_factor("sigmoid", "xavier_normal", depth=20, width=64, seeds=1, **remedy)
    assert plain ** 19 < 1e-10
    assert rescued ** 19 > 1e-2


def test_tiny_gradients_are_measured_not_rounded_to_zero():
    """A 40-layer sigmoid net's layer-0 error is ~1e-26: far below float32's square-root range.
    Norms accumulate in float64, so the value is measured (and still follows ~0.23x per layer)."""
    factor, host = per_layer_delta_factor("sigmoid", "xavier_normal", depth=40, width=32, seeds=1)
    assert all(d > 0 for d in host["delta_norm"]) and all(g > 0 for g in host["grad_norm"])
    assert host["delta_norm"][0] < 1e-20
    assert factor == pytest.approx(0.23, abs=0.03)


@pytest.mark.parametrize("init, chi_1", [("kaiming_normal", 1.0), ("xavier_normal", 0.5)])
def test_plain_relu_cnn_follows_the_mlp_theory_with_fan_in_channels_times_9(init, chi_1):
    """A 3x3 conv with C input channels is the MLP's theory with fan_in = 9C (Xavier: fan_out = 9C too,
    so sigma_w^2 = 1): sqrt(chi_1) = 1.00 for Kaiming, 0.707 for Xavier-normal, at 64 channels.
    Zero padding gives the border pixels fewer inputs, which lowers the factor slightly: measured
    0.990 +- 0.015 (sd over 10 seeds) for Kaiming at 16x16, 0.9995 at 32x32; asserted within 3 %.
    The theory vgrad diagnose uses (analysis/theory.py) must give the same number."""
    from vgrad_cli.analysis.theory import for_model

    depth, factors = 12, []
    for seed in range(5):
        _, host = measure_at_init("relu", init, depth, 64, seed, batch=8, task={"name": "shapes"}, kind="cnn")
        d = host["delta_norm"][:depth]  # the conv blocks' rows, not the head
        factors.append((d[0] / d[-1]) ** (1 / (depth - 1)))
    predicted = for_model({"kind": "cnn", "depth": depth, "width": 64, "activation": "relu", "init": init})
    assert predicted["factor"] == pytest.approx(math.sqrt(chi_1), rel=1e-6)
    assert sum(factors) / len(factors) == pytest.approx(math.sqrt(chi_1), rel=0.03)
