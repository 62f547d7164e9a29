"""Monitor on models vgrad did not build, in loops vgrad did not write: the numbers against an
independent computation, the layers it finds, optimizer bookkeeping, warnings, and that every
command reads the run it writes."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ROOT
from vgrad_cli import GradientProblem, Monitor
from vgrad_cli.rundir.files import read_table


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))          # functional ReLU: no module to hook
        return F.relu(x + self.bn2(self.conv2(out)))


class ResCNN(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.layer1 = nn.Sequential(Block(c), Block(c))
        self.head = nn.Linear(c, 4)

    def forward(self, x):
        return self.head(self.layer1(F.relu(self.stem(x))).mean((2, 3)))


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def layer_grad_norms(model, names: list[str]) -> dict:
    """The independent computation: per layer, sqrt(sum of squared per-parameter gradient norms)
    over the parameters of the module with that name (its own, not its children's)."""
    mods = dict(model.named_modules())
    return {n: sum(float(p.grad.double().norm()) ** 2 for p in mods[n].parameters(recurse=False)) ** 0.5 for n in names}


def train(model, mon, steps, opt=None, clip=None, x=None, y=None, check=None):
    x, y = (x, y) if x is not None else data()
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if check is not None:
            check(step)
        mon.step(loss)
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()


def test_residual_cnn_with_functional_relu_matches_an_independent_computation(tmp_path):
    torch.manual_seed(0)
    model = ResCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    expected = {}
    names = ["stem", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer1.0.bn2",
             "layer1.1.conv1", "layer1.1.bn1", "layer1.1.conv2", "layer1.1.bn2", "head"]
    with Monitor(model, optimizer=opt, out=tmp_path, name="rescnn", every=5, plots=False) as mon:
        train(model, mon, 11, opt=opt, clip=0.5,
              check=lambda s: expected.setdefault(s, layer_grad_norms(model, names)) if s % 5 == 0 else None)
    rows = read_table(mon.path, "layers.csv")
    assert [r["name"] for r in rows if r["step"] == 0] == names  # modules with parameters, in call order
    assert sorted({r["step"] for r in rows}) == [0, 5, 10]
    for r in rows:
        assert r["grad_norm"] == pytest.approx(expected[r["step"]][r["name"]], rel=1e-6)
    metrics = read_table(mon.path, "metrics.csv")
    for m in metrics:  # before clipping in step(), after it in the optimizer's pre-hook
        assert m["grad_norm_total"] == pytest.approx(sum(v ** 2 for v in expected[m["step"]].values()) ** 0.5, rel=1e-6)
        assert m["grad_norm_clipped"] == pytest.approx(min(0.5, m["grad_norm_total"]), rel=1e-4)
    first = {r["name"]: r for r in rows if r["step"] == 0}
    # activations: F.relu's output reaches the next conv as its input; a conv feeding its BN directly has none
    assert first["layer1.0.bn1"]["act_dead_frac"] is not None and first["layer1.0.conv1"]["act_dead_frac"] is None
    assert first["layer1.0.bn1"]["act_saturated_frac"] is None  # an activation seen only as an input: unknown kind
    assert all(r["update_ratio"] > 0 for r in rows) and first["stem"]["weight_drift"] == 0
    summary = json.loads((mon.path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_completed"] == 11 and summary["verdict"] == "healthy"


def test_delta_is_the_gradient_at_each_layers_output(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    outs = {}

    def keep(i):
        def hook(mod, args, out):
            out.retain_grad()
            outs[i] = out
        return hook

    handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    mon = Monitor(model, out=tmp_path, every=1, plots=False)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    mon.step(loss)
    mon.close()
    for h in handles:
        h.remove()
    rows = read_table(mon.path, "layers.csv")
    assert [r["name"] for r in rows] == ["0", "2", "4"]
    for r, i in zip(rows, (0, 2, 4)):
        assert r["delta_norm"] == pytest.approx(float(outs[i].grad.double().norm()), rel=1e-6)
    # the Tanh modules' outputs are the activations: saturation is known for tanh
    assert rows[0]["act_saturated_frac"] is not None and rows[-1]["act_mean"] is None


def test_dead_units_behind_functional_relu_are_found(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 32), nn.Linear(32, 32), nn.Linear(32, 2)
            with torch.no_grad():
                self.b.bias.fill_(-100.0)  # every unit of b below zero for any input: F.relu kills them all

        def forward(self, x):
            return self.c(F.relu(self.b(F.relu(self.a(x)))))

    model = Net()
    mon = Monitor(model, out=tmp_path, every=1, on_problem=None, plots=False)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    mon.step(loss)
    mon.close()
    rows = {r["name"]: r for r in read_table(mon.path, "layers.csv")}
    assert rows["b"]["act_dead_frac"] == 1.0 and rows["a"]["act_dead_frac"] < 1.0
    assert json.loads((mon.path / "summary.json").read_text())["verdict"] == "dying-relu"


def deep_sigmoid(depth=12, width=32):
    torch.manual_seed(0)
    layers = []
    for i in range(depth):
        layers += [nn.Linear(8 if i == 0 else width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 2))


def test_warn_once_raise_or_stay_silent(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # the warning wraps to the terminal: one warning, several lines
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    model = deep_sigmoid()
    mon = Monitor(model, out=tmp_path, every=2, plots=False)  # on_problem="warn" is the default
    train(model, mon, 6, x=x, y=y)
    mon.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert all(len(line) <= 80 or " " not in line.strip() for line in lines), lines
    err = " ".join(line.strip() for line in lines).split(" vgrad: ")  # continuation lines are indented
    assert len(err) == 1 and sum(not line.startswith(" ") for line in lines) == 1 and err[0].startswith(
        "vgrad: vanishing gradients at step 0: delta_norm of layer '0' (input side) / layer '24' (output) = ")
    assert str(mon.path) in err[0]
    model = deep_sigmoid()
    mon = Monitor(model, out=tmp_path, every=2, on_problem="raise", plots=False)
    with pytest.raises(GradientProblem) as e:
        train(model, mon, 6, x=x, y=y)
    assert e.value.kind == "vanishing" and e.value.step == 0
    mon.close()
    model = deep_sigmoid()
    with Monitor(model, out=tmp_path, every=2, on_problem=None, plots=False) as mon:
        train(model, mon, 4, x=x, y=y)
    assert capsys.readouterr().err == ""
    assert json.loads((mon.path / "summary.json").read_text())["verdict"] == "vanishing"


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    torch.manual_seed(0)
    model = ResCNN(4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data(32)
    seen = {}
    with Monitor(model, optimizer=opt, out=tmp_path, every=2, plots=False) as mon:
        for step in range(5):
            opt.zero_grad()
            for xs, ys in ((x[:16], y[:16]), (x[16:], y[16:])):
                loss = F.cross_entropy(model(xs), ys) / 2
                loss.backward()
                mon.step(loss)
            seen[step] = layer_grad_norms(model, ["stem", "head"])
            opt.step()
    rows = [r for r in read_table(mon.path, "layers.csv") if r["name"] in ("stem", "head")]
    assert sorted({r["step"] for r in rows}) == [0, 2, 4]
    for r in rows:  # the accumulated gradient of both micro-batches
        assert r["grad_norm"] == pytest.approx(seen[r["step"]][r["name"]], rel=1e-6)


def test_layers_narrow_or_group(tmp_path):
    torch.manual_seed(0)
    model = ResCNN(4)
    with Monitor(model, out=tmp_path, every=1, layers=["stem", "layer1.1"], plots=False) as mon:
        train(model, mon, 1)
    assert [r["name"] for r in read_table(mon.path, "layers.csv")] == [
        "stem", "layer1.1.conv1", "layer1.1.bn1", "layer1.1.conv2", "layer1.1.bn2"]
    model = ResCNN(4)
    expected = {}
    groups = {"stem": ["stem"], "block0": ["layer1.0"], "block1": ["layer1.1"], "head": ["head"]}
    with Monitor(model, out=tmp_path, every=1, layers=groups, plots=False) as mon:
        train(model, mon, 1, check=lambda s: expected.update(
            {g: sum(float(p.grad.double().norm()) ** 2 for n, p in model.named_parameters()
                    if any(n.startswith(m + ".") for m in ms)) ** 0.5 for g, ms in groups.items()}))
    rows = read_table(mon.path, "layers.csv")
    assert [r["name"] for r in rows] == list(groups)
    for r in rows:
        assert r["grad_norm"] == pytest.approx(expected[r["name"]], rel=1e-6)


def test_unlogged_steps_leave_no_hooks(tmp_path):
    torch.manual_seed(0)
    model = ResCNN(4)
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    counts = []
    with Monitor(model, out=tmp_path, every=3, plots=False) as mon:
        train(model, mon, 7, check=lambda s: counts.append(hooks()))
    assert [c > 0 for c in counts] == [True, False, False, True, False, False, True]
    assert hooks() == 0


def test_without_optimizer_update_columns_stay_empty_and_without_args_bad_input_is_clear(tmp_path):
    torch.manual_seed(0)
    model = ResCNN(4)
    with Monitor(model, out=tmp_path, every=1, plots=False) as mon:
        train(model, mon, 2)
    rows = read_table(mon.path, "layers.csv")
    assert all(r["update_ratio"] is None for r in rows) and rows[-1]["weight_drift"] > 0
    for kwargs, msg in (({"every": 0}, "every must be an integer >= 1"), ({"on_problem": "loud"}, "on_problem must be"),
                        ({"layers": "stem"}, "layers must be")):
        with pytest.raises(ValueError, match=msg):
            Monitor(model, out=tmp_path, **kwargs)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        Monitor(lambda x: x, out=tmp_path)


def test_divergence_is_recorded_and_the_commands_read_the_run(tmp_path, cli):
    torch.manual_seed(0)
    model = ResCNN(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = data(32)
    with Monitor(model, optimizer=opt, out=tmp_path, every=4, on_problem=None) as mon:
        for step in range(9):
            loss = F.cross_entropy(model(x), y) * (float("nan") if step == 6 else 1.0)
            opt.zero_grad()
            loss.backward()
            mon.step(loss)
            if step != 6:
                opt.step()
            else:  # a non-finite gradient is not applied, as a GradScaler would skip it
                mon._after_update(opt, (), {})
    summary = json.loads((mon.path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] == 6 and summary["verdict"] == "exploding"
    for args in (("show", mon.path), ("diagnose", mon.path), ("compare", mon.path, mon.path), ("runs", "--runs-dir", tmp_path)):
        res = cli(*args)
        assert res.exit_code == 0, (args, res.output)
    d = json.loads((mon.path / "diagnosis.json").read_text())
    assert d["verdict"] == "exploding"
    ablation = next(i for i in d["indicators"] if i["key"] == "reliance_on_upper_layers")
    assert ablation["status"] == "not measurable" and "your own" in ablation["summary"]
    assert d["recommendations"] and all(r["command"] is None for r in d["recommendations"])
    assert (mon.path / "plots" / "gradient_flow.png").is_file()


def test_compiled_model_records_exact_gradients_and_leaves_delta_empty(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
    expected = {}
    with Monitor(compiled, optimizer=opt, out=tmp_path, every=2, plots=False) as mon:
        train(compiled, mon, 3, opt=opt, x=x, y=y,
              check=lambda s: expected.setdefault(s, layer_grad_norms(model, ["0", "2"])) if s % 2 == 0 else None)
    rows = read_table(mon.path, "layers.csv")
    for r in rows:
        assert r["grad_norm"] == pytest.approx(expected[r["step"]][r["name"]], rel=1e-6)
        assert r["delta_norm"] is None and r["act_dead_frac"] is None and r["update_ratio"] > 0
    summary = json.loads((mon.path / "summary.json").read_text())
    assert any("torch.compile" in n for n in summary["notes"])


def test_importing_vgrad_cli_stays_light():
    code = ("import sys, vgrad_cli; assert 'torch' not in sys.modules; "
            "from vgrad_cli import Monitor; assert 'torch' in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_update_ratio_with_clipping_and_a_parameter_without_gradient(tmp_path):
    """Plain SGD clipped by norm, one module unused (its gradient None): each row's update_ratio is
    still the update the optimizer applied, lr ||clipped g|| / ||W|| (the unused row: 0)."""
    import pandas as pd

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.unused, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 8), torch.randint(2, (16,))
    with Monitor(model, opt, out=tmp_path, every=1, clip_norm=0.01, on_problem=None, plots=False) as mon:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
    rows = pd.read_csv(mon.path / "layers.csv").set_index("name")
    for name in ("a", "b"):
        params = [(p, before[f"{name}.{k}"]) for k, p in getattr(model, name).named_parameters()]
        upd = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in params)).item()
        old = torch.sqrt(sum((b ** 2).sum() for _, b in params)).item()
        assert rows.loc[name, "update_ratio"] == pytest.approx(upd / old, rel=1e-4), name
