"""The PNGs: each run's plots/ and `compare --plot`. They must exist, have the size the module
promises, not be blank, and survive zeros, NaN and infinities in the tables."""

import json
import math
import shutil

import pytest
from conftest import small
from PIL import Image

from vgrad_cli.config import validate
from vgrad_cli.report.compare_plot import compare_plot
from vgrad_cli.report.plots import DPI, FIGSIZE, write_run_plots
from vgrad_cli.training.runner import run_experiment

RUN_PLOTS = ["gradient_flow", "grad_heatmap", "loss", "activations", "steps"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a, _ = run_experiment(validate(small(name="tanh")), root)
    b, _ = run_experiment(validate(small(name="relu", model={"depth": 5, "activation": "relu", "init": "kaiming_normal"},
                                         log={"activations": False})), root)
    return a, b


def check_png(path, kind):
    assert path.is_file(), path
    with Image.open(path) as im:
        w, h = FIGSIZE[kind]
        assert im.size == (round(w * DPI), round(h * DPI))
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 20, f"{path.name} looks blank: {len(colours)} colours"
    # not one flat colour with a few specks: no colour covers more than 97% of the pixels
    assert max(n for n, _ in colours) < 0.97 * im.size[0] * im.size[1]


def test_every_run_gets_its_plots(runs):
    a, _ = runs
    written = write_run_plots(a)
    assert written == [a / "plots" / f"{k}.png" for k in RUN_PLOTS]
    for kind in RUN_PLOTS:
        check_png(a / "plots" / f"{kind}.png", kind)


def test_no_activation_plot_without_activations(runs):
    _, b = runs
    names = [p.name for p in write_run_plots(b)]
    assert names == ["gradient_flow.png", "grad_heatmap.png", "loss.png", "steps.png"]


def test_recurrent_run_gets_the_through_time_curve(runs, tmp_path):
    d = shutil.copytree(runs[0], tmp_path / "rnn-20990101-000000-0000")
    with open(d / "time.csv", "w") as f:
        f.write("step,layer,t,delta_norm\n")
        for step in (0, 10, 20):
            for t in range(40):
                f.write(f"{step},0,{t},{math.exp(-(39 - t) * 0.5)}\n")
    paths = {p.name: p for p in write_run_plots(d)}
    check_png(paths["gradient_through_time.png"], "gradient_through_time")


def test_zero_nan_inf_and_diverged_values_do_not_crash(runs, tmp_path):
    d = shutil.copytree(runs[0], tmp_path / "bad-20990101-000000-0000")
    lines = (d / "layers.csv").read_text().splitlines()
    head = lines[0].split(",")
    g, dn = head.index("grad_norm"), head.index("delta_norm")
    out = [lines[0]]
    for i, ln in enumerate(lines[1:]):
        cells = ln.split(",")
        cells[g] = ["0.0", "nan", "inf", "-1.0", ""][i % 5]      # nothing a log axis can show...
        cells[dn] = "0.0" if i % 2 else cells[dn]
        out.append(",".join(cells))
    (d / "layers.csv").write_text("\n".join(out) + "\n")
    m = (d / "metrics.csv").read_text().splitlines()
    m[-1] = ",".join(["20", "nan", "", "inf", "inf", "", "", "0.1", "1.0"])
    (d / "metrics.csv").write_text("\n".join(m) + "\n")
    s = json.loads((d / "summary.json").read_text())
    s.update(status="diverged", verdict="exploding")
    (d / "summary.json").write_text(json.dumps(s))
    for p in write_run_plots(d):
        assert p.stat().st_size > 0
    with Image.open(d / "plots" / "grad_heatmap.png") as im:
        assert im.size == (1000, 550)


def test_compare_plot(runs, tmp_path, cli):
    out = compare_plot(list(runs), tmp_path / "cmp.png")
    check_png(out, "compare")
    r = cli("compare", *runs, "--plot", tmp_path / "sub" / "side.png", "--step", "last")
    assert r.exit_code == 0, r.output
    check_png(tmp_path / "sub" / "side.png", "compare")
    r = cli("compare", *runs, "--plot", tmp_path / "side.jpg2")
    assert r.exit_code == 2 and ".png, .svg or .pdf" in r.output


# ----------------------------------------------------------------------------- what the figures show


def fake_run(activation="sigmoid", kind="mlp", hidden=3, steps=(0, 10, 20), status="completed", metrics=None,
             **summary):
    """A run built in memory: every hidden layer logs the three activation statistics."""
    from pathlib import Path

    from vgrad_cli.rundir.store import Run

    layers = [{"step": s, "layer": i, "name": f"hidden{i}", "grad_norm": 0.1 * (i + 1), "delta_norm": 0.01 * (i + 1),
               "act_saturated_frac": 0.0, "act_dead_frac": 0.0, "act_unresponsive_frac": 0.5}
              for s in steps for i in range(hidden)]
    layers += [{"step": s, "layer": hidden, "name": "output", "grad_norm": 1.0, "delta_norm": 0.1} for s in steps]
    metrics = metrics or [{"step": s, "loss": 1.0 / (s + 1), "accuracy": 0.5} for s in steps]
    return Run(Path(f"/nonexistent/{activation}-20990101-000000-0000"), {"status": status, **summary},
               {"model": {"kind": kind, "depth": hidden, "activation": activation}}, layers, metrics)


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions make, kept open instead of written."""
    import matplotlib.pyplot as plt

    from vgrad_cli.report import compare_plot, plots

    made = []
    for module in (plots, compare_plot):
        monkeypatch.setattr(module, "save", lambda fig, path: made.append(fig) or path)
    yield made
    for fig in made:
        plt.close(fig)


@pytest.mark.parametrize("activation, kind, expected", [
    ("sigmoid", "mlp", ["act_unresponsive_frac", "act_saturated_frac"]),
    ("tanh", "rnn", ["act_unresponsive_frac", "act_saturated_frac"]),
    (None, "lstm", ["act_unresponsive_frac", "act_saturated_frac"]),   # gated: a tanh-like hidden state
    ("relu", "mlp", ["act_dead_frac", "act_unresponsive_frac"]),
    ("leaky_relu", "mlp", ["act_dead_frac", "act_unresponsive_frac"]),
    ("gelu", "mlp", ["act_dead_frac", "act_unresponsive_frac"]),
    ("linear", "mlp", ["act_unresponsive_frac"]),
])
def test_activation_panels_follow_the_activation(activation, kind, expected, figures, tmp_path):
    from vgrad_cli.report.plots import ACT_TITLES, activation_columns, activations

    run = fake_run(activation, kind)
    assert activation_columns(run) == expected
    activations(run, tmp_path / "a.png")
    assert [ax.get_title() for ax in figures[0].axes] == [ACT_TITLES[c] for c in expected]


def test_deep_sigmoid_activation_plot_shows_its_unresponsive_units(figures, tmp_path):
    from vgrad_cli.report.plots import activations

    activations(fake_run("sigmoid", hidden=20), tmp_path / "a.png")
    ax = figures[0].axes[0]
    assert ax.get_title().startswith("unresponsive") and ax.get_xlabel().startswith("hidden layer")
    assert all(list(ln.get_ydata()) == [0.5] * 20 for ln in ax.get_lines())


def test_one_layer_recurrent_net_gets_lines_over_training_steps(figures, tmp_path):
    from vgrad_cli.report.plots import activations, grad_heatmap

    run = fake_run("tanh", "rnn", hidden=1, steps=tuple(range(0, 100, 10)))
    grad_heatmap(run, tmp_path / "h.png")
    activations(run, tmp_path / "a.png")
    heat, act = figures
    (ax,) = heat.axes
    assert not ax.get_images() and len(ax.get_lines()) == 2          # layer 0 and the output, not 2 colour rows
    assert ax.get_xlabel() == "training step" and ax.get_yscale() == "log"
    assert list(ax.get_lines()[0].get_xdata()) == list(range(0, 100, 10))
    for ax in act.axes:
        assert ax.get_xlabel() == "training step" and len(ax.get_lines()[0].get_xdata()) == 10


def test_diverged_run_loss_plot_is_legible(figures, tmp_path):
    """NaN at step 2: one logged row. Its points carry markers, the baseline is on the axis, and the
    step where the loss became non-finite is marked."""
    from vgrad_cli.report.plots import loss_curves

    metrics = [{"step": 0, "loss": 1400.0, "accuracy": 0.34, "eval_loss": 1e21, "eval_accuracy": 0.24}]
    run = fake_run("relu", status="diverged", steps=(0,), metrics=metrics, diverged_step=2, baseline_loss=1.39,
                   chance_accuracy=0.27)
    loss_curves(run, tmp_path / "loss.png")
    ax = figures[0].axes[0]
    train = next(ln for ln in ax.get_lines() if ln.get_label() == "train (batch)")
    assert train.get_marker() == "o"
    lo, hi = ax.get_ylim()
    assert lo <= 1.39 <= hi and hi >= 1e21
    assert any(ln.get_label().startswith("diverged at step 2") and list(ln.get_xdata()) == [2, 2]
               for ln in ax.get_lines())


def test_compare_legend_does_not_cover_the_curves(runs, tmp_path, figures):
    from vgrad_cli.report.compare_plot import compare_plot

    copies = [shutil.copytree(runs[0], tmp_path / f"run{i}-20990101-000000-000{i}") for i in range(6)]
    compare_plot(copies, tmp_path / "cmp.png")
    fig = figures[0]
    fig.canvas.draw()
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 6 and all(ax.get_legend() is None for ax in fig.axes)
    box = legend.get_window_extent()
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent()), ax.get_title()
