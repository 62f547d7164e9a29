"""The CNN (model.kind cnn) and the shapes task: structure, the rows against autograd, per-channel
activation statistics, bad input, and every command on a CNN run (compare, diagnose, sweep, plots,
the Monitor API)."""

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import CONFIGS, seeded, small
from vgrad_cli.activations import ACTIVATIONS
from vgrad_cli.config import load_config, validate
from vgrad_cli.errors import UsageError
from vgrad_cli.measure.probes import LayerProbe
from vgrad_cli.models import build_model
from vgrad_cli.rundir.files import read_table
from vgrad_cli.tasks.images import SHAPES, _mask
from vgrad_cli.training.runner import run_experiment

TINY_TASK = {"name": "shapes", "image_size": 8, "train_size": 64, "eval_size": 32}


def cnn(**model) -> dict:
    """A tiny CNN run as a config dict (seconds to train)."""
    return small(model={"kind": "cnn", "depth": 3, "width": 8, "activation": "relu", "init": "kaiming_normal", **model},
                 task=TINY_TASK, train={"steps": 6, "batch_size": 16}, log={"every": 3, "eval_every": 3})


def build(**model):
    cfg = validate(cnn(**model))
    task = cfg.task.make(cfg.seed)
    return build_model(cfg.model, task, cfg.seed), task


def probed_step(net, x, y) -> dict:
    """One forward/backward measured by vgrad's own probe (as on a logged step); its statistics."""
    probe = LayerProbe(net, ACTIVATIONS["relu"], True)
    probe.attach()
    F.cross_entropy(net(x), y).backward()
    probe.after_backward()
    probe.after_clip()
    host = probe.to_host({})
    probe.detach()
    return host


# ----------------------------------------------------------------------------- the model


def test_blocks_rows_norms_and_shapes():
    net, task = build(depth=4, norm="layer")
    assert task.x_train.shape == (64, 1, 8, 8) and task.input_dim == 1
    assert net(task.x_train[:5]).shape == (5, 4)
    assert [layer.name for layer in net.probe_layers()] == ["conv0", "conv1", "conv2", "conv3", "output"]
    assert all(layer.channel_dim == 1 for layer in net.probe_layers()[:-1])
    assert net.blocks[0].conv.weight.shape == (8, 1, 3, 3) and net.blocks[1].conv.weight.shape == (8, 8, 3, 3)
    norm = net.blocks[1].norm  # layer norm on a conv: GroupNorm(1, C), each example's (C, H, W) together
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 1 and norm.num_channels == 8
    assert isinstance(build(norm="batch")[0].blocks[0].norm, nn.BatchNorm2d)


def test_residual_blocks_after_the_first_add_their_input():
    net, task = build(depth=3, residual=True)
    assert [b.skip for b in net.blocks] == [False, True, True]
    x = task.x_train[:4]
    h0 = net.blocks[0].act(net.blocks[0].conv(x))
    h1 = h0 + net.blocks[1].act(net.blocks[1].conv(h0))
    h2 = h1 + net.blocks[2].act(net.blocks[2].conv(h1))
    assert torch.allclose(net(x), net.head(h2.mean((2, 3))), atol=1e-6)


def test_residual_scale_scales_the_cnn_branches():
    net, task = build(depth=3, residual=True, residual_scale="1/sqrt(depth)")
    assert net.scale == pytest.approx(1 / math.sqrt(3))
    x = task.x_train[:4]
    h = net.blocks[0].act(net.blocks[0].conv(x))  # the first block has no shortcut, so no scale
    for b in net.blocks[1:]:
        h = h + net.scale * b.act(b.conv(h))
    assert torch.allclose(net(x), net.head(h.mean((2, 3))), atol=1e-6)
    unscaled, _ = build(depth=3, residual=True)
    assert not torch.allclose(net(x), unscaled(x), atol=1e-3)  # same seed, same weights: the scale changes it
    with pytest.raises(UsageError, match="it needs model.residual: true and model.kind mlp or cnn "
                                         r"\(got residual false, kind cnn\)"):
        validate(cnn(residual_scale=0.5))


def test_init_uses_fan_in_channels_times_9_and_bias_init():
    net, _ = build(depth=2, width=64, init="kaiming_normal", bias_init=0.1)
    w = net.blocks[1].conv.weight.detach()
    assert float(w.var()) == pytest.approx(2 / (64 * 9), rel=0.05)  # 36,864 draws: ~1 % sd
    assert torch.all(net.blocks[1].conv.bias == 0.1) and torch.all(net.head.bias == 0.1)


def test_rows_are_the_gradients_autograd_gives_and_activation_statistics_are_per_channel():
    """delta_norm: ||dL/dz|| at each block's norm output (the nonlinearity's input), grad_norm over the
    block's parameters; the activation statistics count channels (a channel is dead when it is 0 for
    every image and pixel)."""
    net, task = build(depth=3, width=8, norm="batch")
    with torch.no_grad():
        net.blocks[1].norm.bias[:2] = -100.0  # channels 0 and 1 of block 1: ReLU(BN(.) - 100) = 0 everywhere
    x, y = task.x_train[:16], task.y_train[:16]
    host = probed_step(net, x, y)

    zs = []  # the independent computation: the same forward pass, keeping each z's gradient
    h = x
    for b in net.blocks:
        z = b.norm(b.conv(h))
        z.retain_grad()
        zs.append(z)
        h = b.act(z)
    logits = net.head(h.mean((2, 3)))
    logits.retain_grad()
    net.zero_grad()
    F.cross_entropy(logits, y).backward()
    expected = [float(z.grad.norm()) for z in zs] + [float(logits.grad.norm())]
    assert host["delta_norm"] == pytest.approx(expected, rel=1e-5)
    grads = [math.sqrt(sum(float(p.grad.norm()) ** 2 for p in b.parameters())) for b in net.blocks]
    assert host["grad_norm"][:3] == pytest.approx(grads, rel=1e-5)
    assert host["act_dead_frac"][1] == pytest.approx(2 / 8)  # per channel: 2 of 8 dead
    assert host["act_dead_frac"][0] == 0


def test_same_config_and_seed_same_tables(tmp_path):
    cfg = validate(cnn(norm="batch", residual=True))
    a, _ = run_experiment(cfg, tmp_path / "a")
    b, _ = run_experiment(cfg, tmp_path / "b")
    assert (a / "layers.csv").read_text() == (b / "layers.csv").read_text()
    assert not (a / "time.csv").exists()  # through-time tables are for recurrent models only


# ----------------------------------------------------------------------------- the task


def make(seed=0, **task):
    return validate({"model": {"kind": "cnn"}, "task": {"name": "shapes", "train_size": 2000, "eval_size": 500,
                                                        **task}}).task.make(seed)


def test_shapes_are_seeded_standardised_images_with_a_log_k_baseline():
    a, b, c = make(0), make(0), make(1)
    assert a.x_train.shape == (2000, 1, 16, 16) and a.x_eval.shape == (500, 1, 16, 16)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert set(a.y_train.tolist()) == {0, 1, 2, 3} and a.output_dim == 4 and a.loss == "cross_entropy"
    assert a.baseline_loss == pytest.approx(math.log(4), abs=0.02)
    assert a.chance_accuracy == pytest.approx(0.25, abs=0.05)
    x = torch.cat([a.x_train, a.x_eval])
    assert float(x.mean()) == pytest.approx(0, abs=1e-4) and float(x.std()) == pytest.approx(1, abs=1e-4)
    d = make(0, image_size=24, n_classes=6, noise=0.0)
    assert d.x_train.shape[-2:] == (24, 24) and set(d.y_train.tolist()) == set(range(6))
    assert len(d.x_train[0].unique()) == 2  # without noise: shape and background


def test_every_shape_is_its_own_mask():
    grid = torch.arange(-6, 7, dtype=torch.float32)
    dy, dx = grid.view(-1, 1).expand(13, 13), grid.view(1, -1).expand(13, 13)
    masks = [_mask(s, dy, dx, torch.tensor(4.0)) for s in SHAPES]
    assert all(m.sum() > 8 for m in masks)
    assert all(not torch.equal(a, b) for i, a in enumerate(masks) for b in masks[i + 1:])


BAD = [
    ({"model": {"kind": "cnn"}, "task": {"name": "adding"}}, "task.name 'adding' does not fit model.kind 'cnn'"),
    ({"model": {"kind": "cnn"}, "task": {"name": "blobs"}}, "task.name 'blobs' does not fit model.kind 'cnn'"),
    ({"model": {"kind": "rnn"}, "task": {"name": "shapes"}}, "task.name 'shapes' does not fit model.kind 'rnn'; it takes model.kind: cnn"),
    ({"model": {"kind": "mlp"}, "task": {"name": "shapes"}}, "task.name 'shapes' does not fit model.kind 'mlp'"),
    ({"model": {"kind": "cnn", "recurrent_init": "orthogonal"}}, "model.recurrent_init and model.recurrent_std apply to rnn, lstm and gru only"),
    ({"model": {"kind": "cnn", "forget_bias": 1.0}}, "model.forget_bias applies to model.kind lstm only (got kind cnn)"),
    ({"model": {"kind": "cnn", "init": "identity"}}, "model.init identity needs a square matrix"),
    ({"model": {"kind": "cnn"}, "task": {"name": "shapes", "image_size": 4}}, "task.image_size: must be >= 8"),
    ({"model": {"kind": "cnn"}, "task": {"name": "shapes", "n_classes": 7}}, "task.n_classes: must be <= 6"),
    ({"model": {"kind": "cnn", "depth": 100, "width": 64}, "task": {"name": "shapes", "image_size": 64}},
     "x task.image_size^2 makes"),
]


@pytest.mark.parametrize("data,message", BAD, ids=[m[:40] for _, m in BAD])
def test_cnn_bad_input(data, message):
    with pytest.raises(UsageError) as e:
        validate(data)
    assert message in str(e.value)


def test_cnn_defaults_and_bad_input_through_the_cli(cli, write_config, tmp_path):
    cfg = validate({"model": {"kind": "cnn"}})
    assert cfg.task.name == "shapes" and cfg.model.activation == "relu"
    out = tmp_path / "runs"
    result = cli("run", write_config({**cnn(), "task": {"name": "adding"}}), "--out", out)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'cfg.yaml'}: task.name 'adding' does not fit model.kind 'cnn'; it takes model.kind: rnn, lstm, gru, transformer"]
    assert not out.exists()


# ----------------------------------------------------------------------------- every command on a CNN run


@pytest.mark.slow
def test_run_compare_diagnose_and_plots_read_a_cnn_run(cli, write_config, tmp_path):
    out = tmp_path / "runs"
    plain = write_config(cnn(depth=6, activation="sigmoid", init="xavier_normal"), "plain.yaml")
    resid = write_config(cnn(depth=6, activation="sigmoid", init="xavier_normal", residual=True, norm="batch"), "res.yaml")
    assert cli("run", plain, "--out", out, "--name", "plain", "--quiet").exit_code == 0
    assert cli("run", resid, "--out", out, "--name", "resid", "--quiet").exit_code == 0
    run_dir = next(out.glob("plain-*"))
    assert {p.name for p in (run_dir / "plots").iterdir()} >= {"gradient_flow.png", "activations.png"}
    result = cli("compare", run_dir, next(out.glob("resid-*")), "--format", "json")
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)["sections"][0]["layers"]
    assert len(first) == 7 and all(set(r["runs"]) == {"A", "B"} for r in first)  # 6 blocks + head, both runs
    result = cli("diagnose", run_dir, "--format", "json")
    assert result.exit_code == 0, result.output
    diagnosis = json.loads((run_dir / "diagnosis.json").read_text())
    theory = diagnosis["theory"]
    # a plain CNN is the MLP theory with fan_in = 9 x channels: sigmoid + Xavier, sigma_w^2 = 1
    assert theory["applicable"] and theory["sigma_w2"] == pytest.approx(1.0) and theory["measured_factor"] > 0
    assert diagnosis["verdict"] == "vanishing"  # 0.236 per block: conv0/conv5 ~7e-4
    assert "delta_norm conv0/conv5" in json.loads((run_dir / "summary.json").read_text())["verdict_reason"]
    assert diagnosis["recommendations"][0]["set"]["model.activation"] == "relu"  # the MLP's advice applies
    assert "plain CNN, fan_in 9 x channels" in theory["theory"]
    resid_dir = next(out.glob("resid-*"))
    assert cli("diagnose", resid_dir, "--format", "json").exit_code == 0
    theory = json.loads((resid_dir / "diagnosis.json").read_text())["theory"]
    assert not theory["applicable"] and "residual" in theory["reason"]  # said, not predicted


def test_a_cnns_ratio_compares_its_first_and_last_conv_blocks(tmp_path):
    """The head reads the last block's global average, which alone puts that block's delta ~1/sqrt(H·W)
    below the output layer's: summary ratios, verdict and text compare conv0 with the last block.
    A 2-block sigmoid CNN on 8x8: conv0/conv1 ~0.24 (one sigmoid block), healthy; against the
    output layer it is ~1/8 of that, below the verdict's 1e-2."""
    cfg = validate(cnn(depth=2, activation="sigmoid", init="xavier_normal"))
    run_dir, summary = run_experiment(cfg, tmp_path)
    rows = [r for r in read_table(run_dir, "layers.csv") if r["step"] == 0]
    assert [r["name"] for r in rows] == ["conv0", "conv1", "output"]
    for col in ("delta_norm", "grad_norm"):
        assert summary[f"{col}_ratio_first_step"] == pytest.approx(rows[0][col] / rows[1][col], rel=1e-6)
    assert 0.05 < summary["delta_norm_ratio_first_step"] < 1 and rows[0]["delta_norm"] / rows[2]["delta_norm"] < 1e-2
    assert summary["verdict"] != "vanishing"
    one = validate(cnn(depth=1))  # one block: nothing to compare it with but the output layer
    run_dir, summary = run_experiment(one, tmp_path)
    rows = [r for r in read_table(run_dir, "layers.csv") if r["step"] == 0]
    assert summary["delta_norm_ratio_first_step"] == pytest.approx(rows[0]["delta_norm"] / rows[1]["delta_norm"], rel=1e-6)


def test_cnn_ratio_label_in_the_verdict_and_the_progress_line():
    from vgrad_cli.analysis.verdict import ends_label

    rows = [{"layer": i, "name": n} for i, n in enumerate(["conv0", "conv1", "conv2", "output"])]
    assert ends_label(rows, "cnn") == "conv0/conv2" and ends_label(rows, "mlp") == "layer 0/output"
    assert ends_label(rows[2:], "cnn") == "layer 0/output"  # one block and the head


def test_isometry_says_why_a_cnn_has_no_jacobian_spectrum():
    from vgrad_cli.analysis.isometry import not_applicable

    reason = not_applicable(validate(cnn()))
    assert reason.startswith("model.kind cnn:") and "feature map" in reason and "recurrent" not in reason


@pytest.mark.slow
def test_sweep_depth_over_a_cnn_config(cli, write_config, tmp_path):
    base = write_config(cnn(), "base.yaml")
    out = tmp_path / "sweep"
    result = cli("sweep", "depth", "--config", base, "--values", "1,3", "--set", "train.steps=2", "--out", out,
                 "--workers", "1")
    assert result.exit_code == 0, result.output
    sweep = next(out.iterdir())
    rows = list(csv.DictReader((sweep / "sweep.csv").open()))
    assert [(r["depth"], r["status"]) for r in rows] == [("1", "completed"), ("3", "completed")]
    assert all(float(r["theory_factor"]) == pytest.approx(1.0) for r in rows)  # ReLU + Kaiming, fan_in 9 x width


def test_monitor_on_vgrads_cnn_gives_the_rows_vgrad_run_gives(tmp_path):
    """The Monitor API on a CNN in a loop of one's own: it takes the rows the model declares
    (probe_layers) and gives the numbers vgrad's own probe gives."""
    from vgrad_cli import Monitor

    net, task = build(depth=3)
    x, y = task.x_train[:16], task.y_train[:16]
    own = probed_step(net, x, y)
    net.zero_grad()
    with Monitor(net, out=tmp_path, name="cnn", every=1, plots=False) as mon:
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        mon.step(loss)
    rows = read_table(mon.path, "layers.csv")
    assert [r["name"] for r in rows] == ["conv0", "conv1", "conv2", "output"]
    assert [r["grad_norm"] for r in rows] == pytest.approx(own["grad_norm"], rel=1e-6)
    assert [r["delta_norm"] for r in rows] == pytest.approx(own["delta_norm"], rel=1e-6)
    assert [r["act_dead_frac"] for r in rows[:3]] == pytest.approx(own["act_dead_frac"][:3])


# ----------------------------------------------------------------------------- the chapters' claim


def twins(*stems: str, tmp_path) -> list[tuple[dict, float]]:
    """Bundled chapters as shipped (the test seed aside): each one's summary and its mean training
    loss from step 100 on, over the task's baseline."""
    out = []
    for stem in stems:
        cfg = load_config(CONFIGS / f"{stem}.yaml", seeded(["train.device=cpu"]))
        run_dir, summary = run_experiment(cfg, tmp_path)
        losses = [m["loss"] for m in read_table(run_dir, "metrics.csv") if m["step"] >= 100]
        out.append((summary, sum(losses) / len(losses) / summary["baseline_loss"]))
    return out


@pytest.mark.slow
def test_plain_56_block_cnn_does_not_train_where_its_residual_twin_does(tmp_path):
    """He et al. 2016 with the bundled chapters 20 and 21 as shipped (56 conv blocks, width 8, batch
    norm, ReLU + Kaiming, 150 Adam steps on 12x12 shapes). The plain net's gradient explodes at init
    (batch norm, Yang et al. 2019: conv0/conv55 delta 6.5e3-2.4e4x over seeds 0-2; the residual
    net's 27-70x, 190-710x less on the same seed) and its training loss stays at the baseline: mean
    over steps 100-150 0.98-0.99x it; the residual one falls to 0.29-0.66x it. Asserted: plain
    above 0.95x, residual below 0.8x; plain's ratio above 1e3 and 20x the residual's."""
    (plain, plain_late), (res, res_late) = twins("20_cnn_plain_56", "21_cnn_residual_56", tmp_path=tmp_path)
    assert plain_late > 0.95 and res_late < 0.8
    assert plain["delta_norm_ratio_first_step"] > 1e3 and plain["delta_norm_ratio_first_step"] > 20 * res["delta_norm_ratio_first_step"]


@pytest.mark.slow
def test_deep_sigmoid_cnn_learns_nothing_where_its_rescued_twin_learns(tmp_path):
    """Chapters 18 and 19 as shipped (12 conv blocks of 16 channels, 200 Adam steps on 12x12 shapes):
    the sigmoid net's gradient vanishes at init (conv0/conv11 delta 5e-8-1.1e-7 over seeds 0-2) and
    its training loss stays at the baseline (mean over steps 100-200: ~1.0x it); with ReLU + Kaiming,
    batch norm and shortcuts it falls to 0.16-0.58x it and eval accuracy ends at 0.69-0.90 (chance
    ~0.28). Asserted: plain above 0.95x, rescued below 0.8x and eval accuracy above 0.5."""
    (plain, plain_late), (res, res_late) = twins("18_cnn_deep_sigmoid", "19_cnn_relu_residual_batchnorm", tmp_path=tmp_path)
    assert plain_late > 0.95 and res_late < 0.8
    assert res["final_eval_accuracy"] > 0.5 > plain["final_eval_accuracy"]
    assert plain["delta_norm_ratio_first_step"] < 1e-4 < 1e-2 < res["delta_norm_ratio_first_step"]


def test_theory_and_advice_for_a_batch_norm_cnn_that_explodes():
    """Batch norm's growth (Yang et al. 2019) holds per channel for a CNN: chapter 20 measures 1.20
    [1.17-1.20] per block; the advice for a plain BN stack that explodes is the shortcut."""
    from vgrad_cli.analysis.advice import recommend
    from vgrad_cli.analysis.theory import for_model

    cfg = validate(cnn(depth=56, norm="batch")).to_dict()
    assert for_model(cfg["model"])["factor"] == pytest.approx(math.sqrt(math.pi / (math.pi - 1)), rel=1e-3)
    assert recommend(cfg, "exploding", {}, False)[0]["set"] == {"model.residual": True}
    cfg["model"]["residual"] = True  # already residual: no such advice
    assert all(r["set"] != {"model.residual": True} for r in recommend(cfg, "exploding", {}, False))
