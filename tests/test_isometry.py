"""Dynamical isometry: the singular values of the hidden-to-hidden Jacobian at init
(measure/jacobian.py, analysis/isometry.py), checked against exact cases and high precision."""

import math

import pytest
import torch

from conftest import TEST_SEED, small
from vgrad_cli.analysis.isometry import jacobian_at_init, jacobian_line
from vgrad_cli.config import validate
from vgrad_cli.measure.jacobian import spectrum


def linear_steps(mats):
    return [lambda h, w=w: h @ w.T for w in mats]


def test_orthogonal_linear_maps_have_every_singular_value_one():
    g = torch.Generator().manual_seed(TEST_SEED)
    qs = [torch.linalg.qr(torch.randn(24, 24, generator=g, dtype=torch.float64))[0] for _ in range(12)]
    sp = spectrum(linear_steps(qs), torch.randn(3, 24, generator=g, dtype=torch.float64))
    assert sp["layers"] == 12 and sp["examples"] == 3
    for key in ("s_max", "s_min", "mean_s2"):
        assert sp[key] == pytest.approx(1.0, abs=1e-12)
    assert sp["std_s2"] < 1e-12


def test_row_jacobians_match_torch_autograd_functional():
    from vgrad_cli.measure.jacobian import row_jacobians

    g = torch.Generator().manual_seed(TEST_SEED)
    w = torch.randn(7, 7, generator=g, dtype=torch.float64)
    step = lambda h: torch.nn.functional.layer_norm(torch.tanh(h @ w.T), (7,))  # noqa: E731
    h = torch.randn(3, 7, generator=g, dtype=torch.float64)
    got = row_jacobians(step, h)
    for e in range(3):
        ref = torch.autograd.functional.jacobian(lambda v: step(v[None])[0], h[e])
        assert torch.allclose(got[e], ref, atol=1e-13)


def test_orthogonal_linear_net_from_a_config_is_an_isometry():
    """vgrad's own orthogonal init draws in float32, so orthogonality holds to ~1e-7 per layer."""
    cfg = validate(small(model={"depth": 10, "width": 32, "activation": "linear", "init": "orthogonal"}))
    j = jacobian_at_init(cfg)
    assert j["applicable"] and j["layers"] == 9 and j["width"] == 32
    assert j["s_max"] == pytest.approx(1.0, abs=1e-5)
    assert j["s_min"] == pytest.approx(1.0, abs=1e-5)
    assert j["isometric"]


def test_small_singular_values_match_high_precision_where_an_svd_of_j_cannot():
    """A Gaussian tanh product whose smallest singular value is far below float64's eps * s_max:
    s_min (through the inverse product) agrees with a 60-digit mpmath SVD of the same J to 1e-8,
    while svdvals(J) itself reports a rounding floor many orders too high."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    n, layers = 10, 30
    g = torch.Generator().manual_seed(100 + TEST_SEED)
    ws = [torch.randn(n, n, generator=g, dtype=torch.float64) / math.sqrt(n) for _ in range(layers)]
    steps = [lambda h, w=w: torch.tanh(h @ w.T) for w in ws]
    h0 = 0.5 * torch.randn(1, n, generator=g, dtype=torch.float64)
    sp = spectrum(steps, h0)
    # the same J in 60 digits: A_l = diag(1 - tanh(z)^2) W, with z from the float64 forward pass
    j, h = mpmath.eye(n), h0[0]
    for w in ws:
        z = w @ h
        d = (1 - torch.tanh(z) ** 2).tolist()
        a = mpmath.matrix([[mpmath.mpf(d[r]) * mpmath.mpf(w[r, c].item()) for c in range(n)] for r in range(n)])
        j, h = a * j, torch.tanh(z)
    s = sorted(mpmath.svd_r(j, compute_uv=False))
    exact_min, exact_max = float(s[0]), float(s[-1])
    assert exact_min < 1e-20 * exact_max  # the case: far below float64's resolution relative to s_max
    assert sp["s_min"] == pytest.approx(exact_min, rel=1e-8)
    assert sp["s_max"] == pytest.approx(exact_max, rel=1e-10)
    assert sp["s_min_svd_of_j"] > 1e3 * exact_min  # what a plain SVD of J would have reported


def tanh_net(init):
    # spirals: inputs of norm <= ~1.5, so the pre-activations start in tanh's near-linear region, as
    # in Pennington et al. (on blobs, whose inputs are larger, tanh saturates and even the
    # orthogonal net's s_min falls to ~3e-3: isometry needs both orthogonal weights and small q)
    return validate(small(model={"depth": 30, "width": 64, "activation": "tanh", "init": init},
                          task={"name": "spirals", "train_size": 64, "eval_size": 32}))


def test_gaussian_and_orthogonal_tanh_share_critical_theory_but_not_the_spectrum():
    """Both are critical in mean field (sigma_w^2 = 1, chi_1 = 1). Measured at width 64, depth 30
    over seeds 0-5: orthogonal s_min 0.18-0.41, Gaussian 5e-37-1e-32 (svdvals(J) would say ~1e-18)."""
    from vgrad_cli.analysis.theory import for_model

    orth, gauss = tanh_net("orthogonal"), tanh_net("xavier_normal")
    for cfg in (orth, gauss):
        assert for_model(cfg.model.model_dump())["regime"] == "critical"
    jo, jg = jacobian_at_init(orth), jacobian_at_init(gauss)
    assert jo["s_min"] > 0.05 and jo["isometric"]
    assert 0 < jg["s_min"] < 1e-25 and not jg["isometric"]
    assert jo["s_min"] / jg["s_min"] > 1e20
    assert jg["s_min_svd_of_j"] > 1e6 * jg["s_min"]
    assert "not isometric" in jacobian_line(jg) and "near isometry" in jacobian_line(jo)


def test_relu_layer_maps_are_singular():
    cfg = validate(small(model={"depth": 6, "width": 32, "activation": "relu", "init": "kaiming_normal"}))
    j = jacobian_at_init(cfg)
    assert j["s_min"] == 0.0 and j["singular_examples"] == j["examples"]
    assert j["s_max"] > 0 and "do not pass at all" in jacobian_line(j)


@pytest.mark.parametrize("model,reason", [
    ({"kind": "rnn", "depth": 2, "activation": "tanh", "init": "default"}, "model.kind rnn"),
    ({"norm": "batch"}, "batch norm couples"),
    ({"depth": 1}, "model.depth 1"),
    ({"kind": "cnn", "activation": "relu", "init": "kaiming_normal"}, "a conv block maps a whole width x H x W feature map"),
    ({"kind": "transformer", "activation": None, "init": "default"}, "attention mixes a sequence's positions"),
])
def test_where_it_does_not_apply_it_says_why(model, reason):
    over = {"model": model}
    if model.get("kind") in ("rnn", "transformer"):
        over["task"] = {"name": "adding", "seq_len": 5, "train_size": 64, "eval_size": 32}
    if model.get("kind") == "cnn":
        over["task"] = {"name": "shapes", "train_size": 64, "eval_size": 32}
    j = jacobian_at_init(validate(small(**over)))
    assert j["applicable"] is False and reason in j["reason"]
    # each kind's own reason: time.csv is the recurrent nets' alternative only
    assert ("time.csv" in j["reason"]) == (model.get("kind") == "rnn")
    assert "not applicable" in jacobian_line(j)


def test_residual_and_layer_norm_nets_are_measured():
    cfg = validate(small(model={"depth": 5, "width": 16, "activation": "tanh", "residual": True, "norm": "layer"}))
    j = jacobian_at_init(cfg)
    assert j["applicable"] and j["layers"] == 4 and j["s_max"] >= j["s_min"] > 0


def test_s_min_below_float64_range_is_reported_as_a_log_not_a_crash():
    """60 layers each shrinking one direction by 1e-10: s_min = 1e-600, J^-1 would reach 1e600 and
    overflow (svdvals on inf raised LinAlgError before the inverse product was rescaled)."""
    g = torch.Generator().manual_seed(TEST_SEED)
    q = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0]
    w = q @ torch.diag(torch.tensor([1.0] * 7 + [1e-10], dtype=torch.float64)) @ q.T
    sp = spectrum(linear_steps([w] * 60), torch.randn(2, 8, generator=g, dtype=torch.float64))
    assert sp["s_min"] == 0.0 and sp["s_min_underflow"] and sp["singular_examples"] == 0
    assert sp["log10_s_min"] == pytest.approx(-600.0, abs=1e-3)  # W's rounding: ~1e-6 relative per layer
    assert sp["s_max"] == pytest.approx(1.0, rel=1e-9)
    assert sp["log10_condition_median"] == pytest.approx(600.0, abs=1e-3)
    line = jacobian_line({**sp, "applicable": True, "isometric": False})
    assert "1e-600 (below float64's range" in line and "do not pass at all" not in line


def test_a_failing_jacobian_is_reported_in_diagnosis_json_not_raised(tmp_path, monkeypatch):
    from vgrad_cli.analysis import isometry
    from vgrad_cli.analysis.diagnose import diagnose
    from vgrad_cli.training.runner import run_experiment

    run_dir, _ = run_experiment(validate(small(train={"steps": 2}, log={"every": 1, "eval_every": 2})), tmp_path)

    def boom(cfg):
        raise RuntimeError("svd failed\nsecond line")

    monkeypatch.setattr(isometry, "jacobian_at_init", boom)
    d = diagnose(run_dir, ablation=False, jacobian=True)
    assert d["jacobian"] == {"applicable": False, "computed": False,
                             "reason": "not computed: RuntimeError: svd failed"}
