"""The every-step tier (steps.csv): the loss, the total gradient norm before and after the loop's
clipping, the learning rate and a finiteness flag of every step, logged or not — checked against
what torch computes at each step of a real loop."""

import math

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import small
from vgrad_cli import Monitor
from vgrad_cli import vocab as V
from vgrad_cli.config import validate
from vgrad_cli.training.runner import run_experiment


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def _train(tmp_path, steps=13, every=5, clip=0.5, nan_at=None, **options):
    """A user's loop with clipping and a learning-rate schedule; returns (run dir, what torch saw)."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    g = torch.Generator().manual_seed(1)
    seen = []
    with Monitor(model, opt, out=tmp_path, every=every, clip_norm=clip, on_problem=None, plots=False,
                 **options) as mon:
        for step in range(steps):
            x, y = torch.randn(32, 8, generator=g), torch.randint(3, (32,), generator=g)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            if step == nan_at:
                model[2].weight.grad[0, 0] = float("nan")
            mon.step(loss)
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            seen.append({"loss": loss.item(), "total": total.item(), "after": after.item(),
                         "lr": opt.param_groups[0]["lr"]})
            opt.step()
            sched.step()
    return mon.path, seen


def test_every_step_has_its_loss_norms_and_learning_rate(tmp_path):
    path, seen = _train(tmp_path)
    steps = pd.read_csv(path / V.STEPS_CSV)
    assert list(steps.columns) == V.STEP_COLUMNS
    assert steps["step"].tolist() == list(range(13))  # logged (0, 5, 10) and not alike
    for row, s in zip(steps.to_dict("records"), seen):
        assert row["loss"] == pytest.approx(s["loss"], rel=1e-6)
        assert row["grad_norm_total"] == pytest.approx(s["total"], rel=1e-5)   # before clipping
        assert row["grad_norm_clipped"] == pytest.approx(s["after"], rel=1e-4)  # what the optimizer applied
        assert row["lr"] == pytest.approx(s["lr"])                              # the schedule, step by step
        assert row["finite"] == 1
    assert steps["grad_norm_total"].max() > 0.5 >= steps["grad_norm_clipped"].max() - 1e-6  # clipping was active
    assert steps["lr"].nunique() == 4  # 0.1, 0.05, 0.025, 0.0125
    # the logged steps' rows are metrics.csv's figures
    metrics = pd.read_csv(path / V.METRICS_CSV).set_index("step")
    for step in (0, 5, 10):
        assert steps.set_index("step").loc[step, "grad_norm_total"] == pytest.approx(metrics.loc[step, "grad_norm_total"])


def test_a_nan_gradient_between_logged_steps_is_a_non_finite_row(tmp_path):
    path, _ = _train(tmp_path, steps=9, every=5, nan_at=7)
    steps = pd.read_csv(path / V.STEPS_CSV).set_index("step")
    assert steps.loc[7, "finite"] == 0 and math.isnan(steps.loc[7, "grad_norm_total"])
    assert steps.loc[6, "finite"] == 1 and steps.loc[:6, "finite"].all()


def test_every_step_false_writes_no_steps_csv(tmp_path):
    path, _ = _train(tmp_path, steps=7, every_step=False)
    assert not (path / V.STEPS_CSV).exists()
    assert (path / V.METRICS_CSV).exists()


@pytest.mark.parametrize("every_step", [True, False])
def test_vgrad_run_writes_a_row_per_step_unless_the_config_turns_it_off(tmp_path, every_step):
    cfg = validate(small(train={"steps": 23, "clip_norm": 1.0}, log={"every": 10, "every_step": every_step}))
    run_dir, summary = run_experiment(cfg, tmp_path, plots=False)
    assert summary["status"] == V.COMPLETED
    if not every_step:
        assert not (run_dir / V.STEPS_CSV).exists()
        return
    steps = pd.read_csv(run_dir / V.STEPS_CSV)
    assert steps["step"].tolist() == list(range(24))  # 23 updates and the last, measured step
    assert (steps["finite"] == 1).all() and (steps["grad_norm_clipped"] <= 1.0 + 1e-5).all()
    assert (steps["grad_norm_clipped"] <= steps["grad_norm_total"] + 1e-6).all()
    metrics = pd.read_csv(run_dir / V.METRICS_CSV).set_index("step")
    for step in metrics.index:  # where both have it, the two tables agree
        assert steps.set_index("step").loc[step, "loss"] == pytest.approx(metrics.loc[step, "loss"])


def test_steps_plot_is_drawn(tmp_path):
    from vgrad_cli.report.plots import write_run_plots

    path, _ = _train(tmp_path, steps=12)
    write_run_plots(path)
    png = path / V.PLOTS_DIR / "steps.png"
    assert png.is_file() and png.stat().st_size > 10_000


def test_a_tensor_learning_rate_is_read_per_step_as_a_number(tmp_path):
    """A capturable/compiled optimizer's lr is a tensor a scheduler changes in place: each step's row
    holds that step's value (copied on the device, read with the logged step's transfer)."""
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    g = torch.Generator().manual_seed(1)
    with Monitor(model, opt, out=tmp_path, every=4, on_problem=None, plots=False) as mon:
        for _ in range(6):
            loss = nn.functional.cross_entropy(model(torch.randn(16, 8, generator=g)), torch.randint(3, (16,), generator=g))
            opt.zero_grad()
            loss.backward()
            mon.step(loss)
            opt.step()
            sched.step()
    steps = pd.read_csv(mon.path / V.STEPS_CSV)
    assert steps["lr"].tolist() == pytest.approx([0.01 * 0.5 ** k for k in range(6)])
    metrics = pd.read_csv(mon.path / V.METRICS_CSV).set_index("step")
    assert metrics.loc[4, "lr"] == pytest.approx(0.01 * 0.5 ** 4)


def test_numpy_numbers_are_numbers(tmp_path):
    import numpy as np
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, opt, out=tmp_path, every=2, on_problem=None, plots=False) as mon:
        for step in range(3):
            loss = nn.functional.cross_entropy(model(torch.randn(4, 8)), torch.randint(3, (4,)))
            opt.zero_grad()
            loss.backward()
            mon.step(np.float32(loss.item()))
            mon.log_metrics(accuracy=np.float32(0.5), seen=np.int64(step))
            opt.step()
    steps = pd.read_csv(mon.path / V.STEPS_CSV)
    assert steps["step"].tolist() == [0, 1, 2] and steps["loss"].notna().all()
    metrics = pd.read_csv(mon.path / V.METRICS_CSV)
    assert metrics["accuracy"].tolist() == [0.5] * 3 and metrics["seen"].tolist() == [0, 1, 2]
