"""Residual MLPs without normalisation (analysis/residual.py): the forward stream's growth against
closed forms and a wide net, the scale-invariant gradient ratio against an independent computation,
and the verdict and advice for a net whose forward stream explodes (configs/26)."""

import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from conftest import CONFIGS, TEST_SEED, measure_at_init, seeded, small
from vgrad_cli.analysis import residual
from vgrad_cli.analysis.diagnose import diagnose
from vgrad_cli.config import load_config, validate
from vgrad_cli.models import build_model
from vgrad_cli.rundir.files import read_table
from vgrad_cli.training.runner import run_experiment


def test_shifted_gaussian_means_match_closed_forms():
    """E[relu(b + s z)] = b Phi(b/s) + s pdf(b/s); E[relu(.)^2] = (b^2 + s^2) Phi(b/s) + b s pdf(b/s):
    a kink that the bias moves off the centre of the quadrature (the quadrature the stream uses)."""
    from vgrad_cli.analysis.gaussian import gaussian_mean

    relu = lambda x: torch.relu(torch.as_tensor(x)).numpy()  # noqa: E731
    for b, q in ((0.3, 2.0), (-0.5, 0.7), (0.0, 1.3)):
        s = math.sqrt(q)
        cdf, pdf = 0.5 * math.erfc(-b / s / math.sqrt(2)), math.exp(-(b / s) ** 2 / 2) / math.sqrt(2 * math.pi)
        assert gaussian_mean(relu, q, True, b) == pytest.approx(b * cdf + s * pdf, rel=1e-9)
        assert gaussian_mean(lambda x: relu(x) ** 2, q, True, b) == pytest.approx((b * b + q) * cdf + b * s * pdf, rel=1e-9)


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_stream_recursion_matches_the_relu_closed_form(scale):
    """ReLU, no bias: E[phi(z)] = sqrt(q / 2 pi), E[phi(z)^2] = q / 2 with q = sigma_w^2 m."""
    sw2, mu, m = 2.0, 0.4, 0.9
    pred = residual.stream("relu", sw2, 0.0, scale, 7, mu, m)
    for _ in range(7):
        e1, e2 = math.sqrt(sw2 * m / (2 * math.pi)), sw2 * m / 2
        m, mu = m + 2 * scale * mu * e1 + scale**2 * e2, mu + scale * e1
    assert pred["stream_second_moment"] == pytest.approx(m, rel=1e-10)


def test_forward_growth_matches_a_wide_residual_net():
    """Width 512, depth 12, ReLU + Kaiming, residual, at init: the branch output's RMS from layer 0 to
    layer 11, predicted from layer 0's measured output, against the measurement (two seeds). The
    per-block factor agrees within 5 % (1.61 predicted; a wrong recursion, e.g. without the mean term,
    gives 1.41); the total, x190, within 25 %: each block's gain fluctuates by ~sqrt(2/width), and
    over 11 blocks single draws scatter 0.92-1.22x the prediction (seeds 0-5 at width 512 and 1024)."""
    model = {"kind": "mlp", "depth": 12, "width": 512, "activation": "relu", "init": "kaiming_normal", "residual": True}
    secs = []
    for seed in (0, 1):
        probe, host = measure_at_init("relu", "kaiming_normal", 12, 512, seed=TEST_SEED + seed, batch=128,
                                      residual=True)
        secs.append(residual.section(model, probe.rows(0, host)))
    pred = secs[0]["act_rms_growth_predicted"]
    measured = statistics.fmean(s["act_rms_growth_measured"] for s in secs)
    assert measured ** (1 / 11) == pytest.approx(pred ** (1 / 11), rel=0.05)
    assert measured == pytest.approx(pred, rel=0.25)
    assert 150 < pred < 250 and secs[0]["stream_factor_per_block"] == pytest.approx(1.7, abs=0.05)


def test_relative_gradient_ratio_read_off_the_table_matches_autograd(tmp_path):
    """||dL/dW||/||W|| (every parameter's gradient of the layer over its weight matrix) of layer 0 over
    the last hidden layer, from layers.csv, against the same computed independently at step 0."""
    cfg = validate(small(model={"depth": 5, "width": 16, "activation": "relu", "init": "kaiming_normal",
                                "residual": True, "residual_scale": 0.5}, train={"steps": 1}))
    run_dir, _ = run_experiment(cfg, tmp_path)
    rows = sorted((r for r in read_table(run_dir, "layers.csv") if r["step"] == 0), key=lambda r: r["layer"])
    task = cfg.task.make(cfg.seed)
    net = build_model(cfg.model, task, cfg.seed)
    idx = torch.randint(len(task.x_train), (cfg.train.batch_size,), generator=torch.Generator().manual_seed(cfg.seed + 1))
    F.cross_entropy(net(task.x_train[idx]), task.y_train[idx]).backward()

    def rel(block):
        g = torch.sqrt(sum(p.grad.double().square().sum() for p in block.linear.parameters()))
        return float(g / block.linear.weight.detach().double().norm())

    assert residual.relative_grad_ratio(rows) == pytest.approx(rel(net.blocks[0]) / rel(net.blocks[-1]), rel=1e-5)


def test_exploding_forward_stream_is_named_for_it_and_advised_branch_scaling(tmp_path):
    """configs/26 at init: the verdict names the forward stream, not the gradient (the
    scale-invariant ratio is 0.04-0.13 over seeds 0-4), theory.residual has the prediction, and the
    first recommendation is model.residual_scale = 1/sqrt(depth), then batch norm."""
    run_dir, summary = run_experiment(load_config(CONFIGS / "26_residual_exploding_stream.yaml",
                                                  seeded(["train.steps=1", "log.every=1", "train.device=cpu"])), tmp_path)
    assert summary["verdict"] == "exploding"
    assert summary["verdict_reason"].startswith("the forward stream explodes, not the gradient")
    d = diagnose(run_dir, ablation=False, write=False)
    ev = next(i for i in d["indicators"] if i["key"] == "exploding")["evidence"]
    assert ev["forward_stream"] and ev["act_rms_growth_first_step"] > 1e3
    assert 1e-2 < ev["relative_grad_ratio_first_step"] < 1  # the gradient, scale-invariantly, does not explode
    assert ev["delta_ratio_first_step"] > 100  # ... while delta's ratio says it does
    th = d["theory"]["residual"]
    assert th["applicable"] and th["scale"] == 1.0 and th["act_rms_growth_predicted"] > 1e3
    assert [r["set"] for r in d["recommendations"][:2]] == [{"model.residual_scale": "1/sqrt(depth)"}, {"model.norm": "batch"}]
    assert "'model.residual_scale=1/sqrt(depth)'" in d["recommendations"][0]["command"]  # quoted for the shell
    assert "Zhang et al. 2019" in d["recommendations"][0]["why"]


def test_residual_scale_string_resolves_and_scales_the_branch():
    cfg = validate(small(model={"depth": 16, "residual": True, "residual_scale": "1/sqrt(depth)"}))
    assert cfg.model.branch_scale() == pytest.approx(0.25)
    net = build_model(cfg.model, cfg.task.make(0), 0)
    x = torch.randn(4, cfg.task.input_dim)
    with torch.no_grad():
        h = net.blocks[0].act(net.blocks[0].linear(x))
        b = net.blocks[1]
        expected = h + 0.25 * b.act(b.linear(h))
        for blk in net.blocks[2:]:
            expected = expected + 0.25 * blk.act(blk.linear(expected))
        assert torch.allclose(net(x), net.head(expected), atol=1e-6)


def _reviewer_cnn(tmp_path, *sets):
    """Chapter 19's CNN without batch norm at depth 30 (the reviewer's case), one training step."""
    cfg = load_config(CONFIGS / "19_cnn_relu_residual_batchnorm.yaml",
                      seeded(["model.norm=none", "model.depth=30", "train.steps=1", "log.every=1", "train.device=cpu",
                              *sets]))
    return cfg, run_experiment(cfg, tmp_path)


def test_residual_cnn_without_norm_is_read_as_its_forward_stream(tmp_path):
    """A residual CNN without norm whose stream explodes (branch output RMS x7.2e5-2.0e6 conv0 ->
    conv29 at step 0, delta_norm conv0/conv29 7.2e5-1.2e6, over seeds 0-4) is named for its forward
    stream, its scale-invariant ratio conv0/conv29 (0.052-0.16) reads no explosion, the MLP-only prediction is not quoted, and the
    advice is branch scaling, then batch norm; with s = 0.18 the same net is healthy (ratio 0.15-0.47)."""
    _, (run_dir, summary) = _reviewer_cnn(tmp_path / "a")
    assert summary["verdict"] == "exploding"
    assert summary["verdict_reason"].startswith("the forward stream explodes, not the gradient")
    assert "from conv0 to conv29" in summary["verdict_reason"]
    d = diagnose(run_dir, ablation=False, write=False)
    ev = next(i for i in d["indicators"] if i["key"] == "exploding")["evidence"]
    assert ev["forward_stream"] and ev["act_rms_growth_first_step"] > 1e4
    assert 1e-2 < ev["relative_grad_ratio_first_step"] < 1
    assert ev["delta_ratio_first_step"] > 1e4  # delta's conv0/conv29 ratio mirrors the stream
    th = d["theory"]["residual"]
    assert th["applicable"] is False and th["reason"] == residual.CNN_PREDICTION and th["ends"] == "conv0/conv29"
    assert [r["set"] for r in d["recommendations"][:2]] == [{"model.residual_scale": "1/sqrt(depth)"}, {"model.norm": "batch"}]
    assert "train.clip_norm" not in d["recommendations"][0]["set"]
    _, (_, scaled) = _reviewer_cnn(tmp_path / "b", "model.residual_scale=0.18")
    assert scaled["verdict"] == "healthy"


def test_cnn_act_rms_pools_channels_and_pixels(tmp_path):
    """act_rms from a CNN row (act_mean, act_std measured per channel) is the branch output's RMS over
    batch, channels and pixels, recomputed here from the step-0 batch."""
    cfg = validate(small(model={"kind": "cnn", "depth": 4, "width": 8, "activation": "relu", "init": "kaiming_normal",
                                "residual": True}, task={"name": "shapes", "image_size": 8},
                         train={"steps": 1, "batch_size": 16}))
    run_dir, _ = run_experiment(cfg, tmp_path)
    rows = sorted((r for r in read_table(run_dir, "layers.csv") if r["step"] == 0), key=lambda r: r["layer"])
    task = cfg.task.make(cfg.seed)
    net = build_model(cfg.model, task, cfg.seed)
    idx = torch.randint(len(task.x_train), (cfg.train.batch_size,), generator=torch.Generator().manual_seed(cfg.seed + 1))
    outs = []
    for b in net.blocks:
        b.act.register_forward_hook(lambda m, i, o: outs.append(float(o.detach().double().square().mean().sqrt())))
    with torch.no_grad():
        net(task.x_train[idx])
    assert [residual.act_rms(r) for r in rows[:-1]] == pytest.approx(outs, rel=1e-4)
    assert residual.ends_label(rows, "cnn") == "conv0/conv3"


def test_batch_norm_cnn_chapters_keep_the_delta_reading():
    """Chapters 19 and 21 (batch norm + shortcuts): not a residual net without norm, so their verdict
    still reads delta_norm conv0/last block (tests/test_configs.py checks it is healthy)."""
    for name in ("19_cnn_relu_residual_batchnorm.yaml", "21_cnn_residual_56.yaml"):
        model = load_config(CONFIGS / name, []).model.model_dump()
        assert model["residual"] and not residual.applies(model)
    assert residual.applies({**model, "norm": "none"})
