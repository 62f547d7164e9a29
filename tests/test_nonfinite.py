"""The first non-finite value: its step, module and direction, in summary.json, the live warning and
`vgrad diagnose`; on a logged step, between logged steps (the fused gradient check), and in `vgrad
run` (the replay of a diverged run measures the step). A non-finite gradient with a finite loss is
flagged."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import small
from vgrad_cli import GradientProblem, Monitor
from vgrad_cli.config import validate
from vgrad_cli.training.runner import run_experiment


class Net(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3, self.head = (nn.Linear(8, width), nn.Linear(width, width),
                                                   nn.Linear(width, width), nn.Linear(width, 3))

    def forward(self, x):
        return self.head(torch.relu(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))))


def data(n=64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def inf_at(module: nn.Module, step: int):
    """From the `step`-th training forward pass on, `module` returns inf (an overflow inside it)."""
    calls = []

    def hook(m, args, out):
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) > step:
                return out * float("inf")
    return module.register_forward_hook(hook)


def train(mon, model, steps, lr=0.1):
    x, y = data()
    opt = mon.optimizer
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        opt.step()


@pytest.mark.parametrize("every", [1, 10])
def test_a_module_that_returns_inf_is_named_with_its_step(tmp_path, capsys, every):
    model = Net()
    inf_at(model.fc2, 13)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, optimizer=opt, out=tmp_path, every=every, plots=False) as mon:
        train(mon, model, 25)
    found = mon.summary["first_nonfinite"]
    assert mon.summary["diverged_step"] == 13 and found["step"] == 13 and not found["finite_loss"]
    err = " ".join(capsys.readouterr().err.split())
    if every == 1:  # measured at that step: the module, forward
        assert (found["direction"], found["module"]) == ("forward", "fc2")
        assert found["message"] == "step 13: first non-finite in forward output of `fc2`"
    else:  # between logged steps: the step, and where the model is non-finite by the next logged one
        assert found["found_at_step"] == 20 and found["message"].startswith(
            "step 13: a non-finite loss (between logged steps: found at the next logged step 20")
    assert found["message"].removeprefix("step 13: ") in err  # the live warning says it too


class SqrtNet(nn.Module):
    """where(z > 0, sqrt(z), 0): the loss is finite (the NaN of sqrt at z < 0 is masked), but the
    backward multiplies where's 0 by d sqrt/dz = NaN there: torch.where's well-known NaN gradient."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        z = self.fc1(x)
        return self.fc2(torch.where(z > 0, torch.sqrt(z), 0.0))


class Gain(nn.Module):
    """A gain whose gradient is computed through sqrt(g^2): infinite where g = 0, in its own backward."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        with torch.no_grad():
            self.weight[0] = 0.0

    def forward(self, x):
        return x * torch.sqrt(self.weight ** 2)


def test_a_nonfinite_gradient_with_a_finite_loss_is_flagged(tmp_path, capsys):
    model = SqrtNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(GradientProblem) as e, Monitor(model, optimizer=opt, out=tmp_path, every=1, on_problem="raise",
                                                      plots=False) as mon:
        train(mon, model, 3)
    assert e.value.kind == "nonfinite" and e.value.step == 0
    found = mon.summary["first_nonfinite"]
    assert found["finite_loss"] and found["direction"] == "backward" and found["module"] == "fc1"
    assert found["message"] == "step 0: first non-finite in the gradient at the output of `fc1` while the loss is finite"
    # a parameter's own backward: named as the parameter
    model = nn.Sequential(nn.Linear(8, 16), Gain(16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, optimizer=opt, out=tmp_path, every=1, plots=False) as mon:
        train(mon, model, 1)
    assert mon.summary["first_nonfinite"]["message"] == (
        "step 0: first non-finite in the gradient of `1.weight` while the loss is finite")
    assert "vgrad: non-finite gradient found at step 0: first non-finite in the gradient of `1.weight`" in " ".join(
        capsys.readouterr().err.split())


@pytest.mark.parametrize("check", [True, False])
def test_between_logged_steps_the_gradient_check_names_the_step(tmp_path, capsys, check):
    """A NaN gradient with a finite loss from unlogged step 13 on (unit 0 of fc1 dies; the update
    makes its weights NaN, which where() keeps masked in the forward pass: the loss never goes
    non-finite). The fused check of
    step 13's gradients says 13; without it the next logged step, 20, is the first one known."""
    model = SqrtNet()
    with torch.no_grad():
        model.fc1.bias.fill_(3.0)  # every unit alive: no sqrt at 0 ...
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Monitor(model, optimizer=opt, out=tmp_path, every=10, every_step=check, plots=False) as mon:
        for step in range(25):
            if step == 13:
                with torch.no_grad():
                    model.fc1.bias[0] = -1e6  # ... until unit 0 dies: sqrt(0) in the backward
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            mon.step(loss)
            opt.step()
    found = mon.summary["first_nonfinite"]
    assert mon.summary["status"] == "completed" and found["finite_loss"]
    if check:
        assert found["step"] == 13 and found["message"] == (
            "step 13: a non-finite gradient with a finite loss (between logged steps: found at the next logged step 20; "
            "at step 20 the first non-finite value is in forward output of `fc1`)")  # its NaN weights, by then
    else:
        assert found["step"] == 20 and found["module"] == "fc1"
    assert "vgrad: non-finite gradient found at step 20" in " ".join(capsys.readouterr().err.split())


def test_vgrad_run_replays_the_step_and_names_the_module(tmp_path, monkeypatch, cli):
    """vgrad's MLP with hidden3 returning inf from step 7 (an unlogged step): the run diverges there,
    the replay measures step 7 and names hidden3; summary.json and `vgrad diagnose` carry it."""
    import vgrad_cli.training.trainer as trainer

    build = trainer.build_model

    def patched(cfg, task, seed):
        model = build(cfg, task, seed)
        inf_at(model.blocks[3].linear, 7)
        return model
    monkeypatch.setattr(trainer, "build_model", patched)
    cfg = validate(small(model={"depth": 5, "activation": "relu", "init": "kaiming_normal"}, train={"steps": 20},
                         log={"every": 5, "eval_every": 20}))
    run, summary = run_experiment(cfg, tmp_path)
    found = summary["first_nonfinite"]
    assert summary["status"] == "diverged" and summary["diverged_step"] == 7
    assert found == {"step": 7, "direction": "forward", "module": "hidden3", "found_at_step": 7, "finite_loss": False,
                     "message": "step 7: first non-finite in forward output of `hidden3`"}
    res = cli("diagnose", str(run), "--no-ablation", "--format", "json")
    assert res.exit_code == 0 and json.loads(res.output)["first_nonfinite"] == found


@pytest.mark.slow
def test_vgrad_run_of_a_config_that_diverges_names_a_plausible_module(tmp_path):
    """configs/09_exploding.yaml (Kaiming gain 2, 20 layers): the loss is non-finite at step 2; the
    module named is a hidden layer whose forward output overflowed, the ones before it finite."""
    from conftest import ROOT
    from vgrad_cli.config import load_config
    from vgrad_cli.rundir.files import read_table

    run, summary = run_experiment(load_config(ROOT / "configs" / "09_exploding.yaml"), tmp_path)
    found = summary["first_nonfinite"]
    assert found["step"] == summary["diverged_step"] == 2 and found["direction"] == "forward"
    assert found["module"].startswith("hidden")
    rows = [r for r in read_table(run, "layers.csv") if r["step"] == 2]
    k = [r["name"] for r in rows].index(found["module"])
    assert all(math.isfinite(r["act_mean"]) for r in rows[:k]) and not math.isfinite(rows[k]["act_mean"])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_steps_that_are_not_logged_read_no_value_from_the_device(tmp_path, monkeypatch, precision):
    """No item(), tolist(), bool(), float(), int() or cpu() from vgrad's own code between logged
    steps (on a GPU each would wait for the device): fp32 with the fused gradient check; fp16 with a
    loss scaler and a step it skips (step 5)."""
    import sys

    reads = []

    def watched(name, original):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            if caller.f_globals.get("__name__", "").startswith("vgrad_cli"):
                reads.append(f"{name} in {caller.f_globals['__name__']}.{caller.f_code.co_name}")
            return original(self, *args, **kwargs)
        return read
    model, (x, y) = Net(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    with Monitor(model, optimizer=opt, out=tmp_path, every=10, scaler=scaler, plots=False) as mon:
        for step in range(10):
            if step == 1:  # step 0 is logged (it reads its figures, once); watch the steps after it
                for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu"):
                    monkeypatch.setattr(torch.Tensor, name, watched(name, getattr(torch.Tensor, name)))
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            if scaler is None:
                loss.backward()
                mon.step(loss)
                opt.step()
            else:
                (scaler.scale(loss) * (float("inf") if step == 5 else 1.0)).backward()
                mon.step(loss)
                scaler.step(opt)
                scaler.update()
        assert reads == [] and len(mon._between.losses) == 9
        assert len(mon._between.checks) == 9  # the every-step tier: one fused norm per step, on the device
        monkeypatch.undo()
    if scaler is not None:
        assert [m["step"] for m in read_metrics(mon.path) if m.get("skipped")] == [5]


def read_metrics(path):
    from vgrad_cli.rundir.files import read_table

    return read_table(path, "metrics.csv")
