"""The measurements against a hand-computed autograd reference on a tiny network."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from vgrad_cli.activations import ACTIVATIONS
from vgrad_cli.config import validate
from vgrad_cli.models import build_model
from vgrad_cli.measure.probes import LayerProbe
from vgrad_cli.vocab import LAYER_COLUMNS


def tiny(activation="tanh", norm="none", residual=False):
    cfg = validate({"model": {"depth": 3, "width": 4, "activation": activation, "init": "xavier_normal",
                              "norm": norm, "residual": residual, "bias_init": 0.1},
                    "task": {"name": "blobs", "input_dim": 3, "n_classes": 3, "train_size": 16, "eval_size": 4}})
    task = cfg.task.make(0)
    return build_model(cfg.model, task, 0), task


def measure(model, x, y, activation, lr=0.1):
    probe = LayerProbe(model, ACTIVATIONS[activation], keep_activations=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    probe.attach()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    probe.after_backward()
    probe.after_clip()
    probe.before_update()
    opt.step()
    probe.after_update()
    host = probe.to_host({"loss": loss.detach()})
    return probe.rows(0, host), host


def reference(model, x, y, activation, lr=0.1):
    """Straightforward per-layer autograd: the pre-activations z_l and their gradients."""
    zs, acts = [], []
    h = x
    for b in model.blocks:
        z = b.norm(b.linear(h))
        a = b.act(z)
        zs.append(z)
        acts.append(a)
        h = h + a if b.skip else a
    out = model.head(h)
    zs.append(out)
    loss = F.cross_entropy(out, y)
    layers = [list(b.parameters()) for b in model.blocks] + [list(model.head.parameters())]
    flat = [p for ps in layers for p in ps]
    grads = torch.autograd.grad(loss, flat + zs)
    pgrads, zgrads = grads[: len(flat)], grads[len(flat):]
    ref, k = [], 0
    for i, ps in enumerate(layers):
        g = pgrads[k : k + len(ps)]
        k += len(ps)
        weight = ps[0]
        before = torch.cat([p.detach().flatten() for p in ps])
        update = torch.cat([(lr * gi).flatten() for gi in g])  # plain SGD: delta theta = -lr * grad
        row = {
            "grad_norm": torch.cat([gi.flatten() for gi in g]).norm().item(),
            "grad_max_abs": torch.cat([gi.flatten() for gi in g]).abs().max().item(),
            "delta_norm": zgrads[i].norm().item(),
            "weight_norm": weight.detach().norm().item(),
            "update_ratio": (update.norm() / before.norm()).item(),
        }
        if i < len(acts):
            a = acts[i].detach()
            row.update(act_mean=a.mean().item(), act_std=a.std(unbiased=False).item(),
                       act_dead_frac=(a == 0).all(0).float().mean().item())
        ref.append(row)
    return ref


@pytest.mark.parametrize("activation,norm,residual", [("tanh", "none", False), ("relu", "batch", True),
                                                      ("sigmoid", "layer", False), ("prelu", "none", True)])
def test_layer_rows_match_autograd_reference(activation, norm, residual):
    model, task = tiny(activation, norm, residual)
    x, y = task.x_train, task.y_train
    expected = reference(copy.deepcopy(model), x, y, activation)
    rows, host = measure(model, x, y, activation)
    assert [r["layer"] for r in rows] == [0, 1, 2, 3] and rows[-1]["name"] == "output"
    assert set(rows[0]) == set(LAYER_COLUMNS)
    for row, ref in zip(rows, expected):
        for key, value in ref.items():
            assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-9), (row["layer"], key)
        assert row["weight_drift"] == 0.0  # measured before this step's update
    # not applicable -> None (an empty cell), never invented
    assert all(rows[-1][c] is None for c in LAYER_COLUMNS if c.startswith("act_"))
    total = sum(r["grad_norm"] ** 2 for r in rows) ** 0.5
    assert host["grad_norm_total"] == pytest.approx(total, rel=1e-5)
    assert host["grad_norm_clipped"] == pytest.approx(total, rel=1e-5)


def test_saturation_and_dead_units_are_counted():
    model, _ = tiny("sigmoid")
    probe = LayerProbe(model, ACTIVATIONS["sigmoid"], True)
    a = torch.tensor([[[0.005, 0.5, 0.995, 0.5], [0.5, 0.5, 0.999, 0.2]]])  # (layers, batch, units)
    s = probe.act_stats.stats(a)
    assert s["act_saturated_frac"].item() == pytest.approx(3 / 8)
    probe = LayerProbe(model, ACTIVATIONS["relu"], True)
    a = torch.tensor([[[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 3.0, 2.0]]])
    s = probe.act_stats.stats(a)
    assert s["act_dead_frac"].item() == pytest.approx(1 / 4)  # only unit 0 is 0 for every example
    assert s["act_saturated_frac"].item() == 0.0  # relu does not saturate
    # unit 0 (always 0) and unit 3 (always 2) say the same thing for every input
    assert s["act_unresponsive_frac"].item() == pytest.approx(2 / 4)


def test_weight_drift_tracks_distance_from_init():
    model, task = tiny("tanh")
    probe = LayerProbe(model, ACTIVATIONS["tanh"], True)
    w0 = model.blocks[0].linear.weight.detach().clone()
    with torch.no_grad():
        model.blocks[0].linear.weight.mul_(1.5)
    probe.attach()
    F.cross_entropy(model(task.x_train), task.y_train).backward()
    probe.after_backward()
    probe.after_clip()
    host = probe.to_host({})
    assert host["weight_drift"][0] == pytest.approx(0.5, rel=1e-5)
    assert host["weight_norm"][0] == pytest.approx(1.5 * w0.norm().item(), rel=1e-5)


def hooked(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_unlogged_forward_records_nothing():
    model, task = tiny("tanh")
    probe = LayerProbe(model, ACTIVATIONS["tanh"], True)  # building a probe attaches nothing
    assert hooked(model) == 0
    model(task.x_train).sum().backward()
    probe.attach()  # a logged step: hooks for its forward only ...
    assert hooked(model) > 0
    F.cross_entropy(model(task.x_train), task.y_train).backward()
    probe.after_backward()
    assert hooked(model) == 0  # ... gone before the next step


def test_norms64_keeps_float64_range_and_precision():
    from vgrad_cli.measure.norms import norms64 as _norms64

    torch.manual_seed(0)
    ts = [torch.randn(128, 128), torch.randn(128), torch.full((64, 64), 1e-26), torch.full((5000,), 1e20),
          torch.randn(32, 16, 16, 16) * torch.exp(2 * torch.randn(32, 16, 16, 16)), torch.zeros(4096),
          torch.tensor([float("nan")] * 4096), torch.randn(40, 40).t()]  # the last one not contiguous
    got = _norms64(ts)
    want = torch.stack([t.double().norm() for t in ts])
    assert got.dtype == torch.float64 and got.shape == (len(ts),)
    assert got[2].item() == pytest.approx(64 * 1e-26, rel=1e-6)  # float32 squares would be 0
    assert got[3].item() == pytest.approx(5000 ** 0.5 * 1e20, rel=1e-6)  # float32 squares would be inf
    assert got[5].item() == 0.0 and math.isnan(got[6].item())
    finite = [i for i in range(len(ts)) if i != 6]
    assert torch.allclose(got[finite], want[finite], rtol=3e-6, atol=0)
    small = [torch.randn(16), torch.randn(3, 3)]  # only small tensors: the float64 norm itself
    assert torch.equal(_norms64(small), torch.stack(torch._foreach_norm(small, 2, dtype=torch.float64)))


def monitored(tmp_path, every, steps, act=torch.nn.ReLU, loss_of=None, before_update=None, after_update=None):
    """A small model trained `steps` steps by a hand-written loop with Monitor; returns it closed."""
    from vgrad_cli import Monitor

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), act(), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(model, optimizer=opt, out=tmp_path, every=every, on_problem=None, plots=False)
    x, y = torch.randn(16, 4), torch.randint(3, (16,))
    for step in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        mon.step(loss_of(step, loss) if loss_of else loss)
        if before_update:
            before_update(step, model)
        opt.step()
        if after_update:
            after_update(step, model)
    mon.close()
    return mon, model


def test_monitor_keeps_hooks_only_while_the_next_step_is_logged(tmp_path):
    for every, armed_between in ((1, True), (2, False)):
        seen = []
        _, model = monitored(tmp_path, every, 4, after_update=lambda step, model, seen=seen: seen.append(hooked(model) > 0))
        assert hooked(model) == 0
        # after step 0 (logged): armed for step 1 only if step 1 is logged too
        assert seen[0] is armed_between and seen[1] is True


def test_monitor_measures_the_clipped_norm_only_when_clipping_happened(tmp_path):
    from vgrad_cli.rundir.files import read_table

    def clip(step, model):
        if step == 1:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)

    mon, _ = monitored(tmp_path, 1, 2, act=torch.nn.Tanh, before_update=clip)
    m = read_table(mon.path, "metrics.csv")
    assert m[0]["grad_norm_clipped"] == m[0]["grad_norm_total"]
    assert m[1]["grad_norm_clipped"] == pytest.approx(1e-3, rel=1e-4)
    assert m[1]["grad_norm_total"] > 1e-2


def test_monitor_catches_a_non_finite_loss_of_an_unlogged_step(tmp_path):
    # step 2 is not logged (every 5): its loss is checked at step 5
    mon, _ = monitored(tmp_path, 5, 6, loss_of=lambda step, loss: loss * float("nan") if step == 2 else loss)
    assert mon.diverged_step == 2 and mon.summary["status"] == "diverged"
