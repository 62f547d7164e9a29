"""The PNGs: each run's plots/ and `compare --plot`. They must exist, have the size the module
promises, not be blank, and survive zeros, NaN and infinities in the tables."""

import json
import math
import shutil

import pytest
from conftest import small
from PIL import Image

from vgrad_cli.config import validate
from vgrad_cli.report.plots import DPI, FIGSIZE, compare_plot, write_run_plots
from vgrad_cli.training.runner import run_experiment

RUN_PLOTS = ["gradient_flow", "grad_heatmap", "loss", "activations"]


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
    assert names == ["gradient_flow.png", "grad_heatmap.png", "loss.png"]


def test_recurrent_run_gets_the_through_time_curve(runs, tmp_path):
    d = shutil.copytree(runs[0], tmp_path / "rnn-20990101-000000-0000")
    with open(d / "time.csv", "w") as f:
        f.write("step,layer,t,delta_norm\n")
        for step in (0, 10, 20):
            for t in range(40):
                f.write(f"{step},0,{t},{math.exp(-(39 - t) * 0.5)}\n")
    paths = write_run_plots(d)
    assert paths[-1].name == "gradient_through_time.png"
    check_png(paths[-1], "gradient_through_time")


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
