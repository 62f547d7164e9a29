"""Underflow honesty: a gradient below float32's range is said to be so (never 0 or a dead layer),
and step 0 measured again in float64 gives the true ratio and per-layer factor."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import small
from vgrad_cli.analysis.diagnose import diagnose
from vgrad_cli.config import validate
from vgrad_cli.models import build_model
from vgrad_cli.rundir.files import read_table
from vgrad_cli.training.runner import run_experiment

# depth-30 sigmoid with init normal (std 0.01): sqrt(chi_1) = 0.014 per layer at width 32, so layer
# 0's delta is ~1e-55 of the output's: exactly 0 in float32 for the first layers
DEEP = {"depth": 30, "width": 32, "activation": "sigmoid", "init": "normal"}


def _first_rows(run_dir, name="layers.csv"):
    return sorted((r for r in read_table(run_dir, name) if r["step"] == 0), key=lambda r: r["layer"])


def _float64_ratio(cfg) -> float:
    """Independently: the same initial weights and first batch in float64, delta at block 0's
    pre-activation over delta at the logits."""
    task = cfg.task.make(cfg.seed)
    net = build_model(cfg.model, task, cfg.seed).double()
    idx = torch.randint(len(task.x_train), (cfg.train.batch_size,), generator=torch.Generator().manual_seed(cfg.seed + 1))
    z0 = net.blocks[0].linear(task.x_train[idx].double())
    z0.retain_grad()
    h = net.blocks[0].act(z0)
    for b in net.blocks[1:]:
        h = b.act(b.linear(h))
    out = net.head(h)
    out.retain_grad()
    F.cross_entropy(out, task.y_train[idx]).backward()
    return float(z0.grad.norm() / out.grad.norm())


def test_underflow_reads_below_float32_range_and_float64_step0_has_the_true_ratio(tmp_path, cli):
    cfg = validate(small(model=DEEP, train={"steps": 2}, log={"every": 1}))
    run_dir, summary = run_experiment(cfg, tmp_path)
    f32, f64 = _first_rows(run_dir), _first_rows(run_dir, "layers_float64.csv")
    assert f32[0]["delta_norm"] == 0  # the case: float32 lost layer 0's delta entirely
    truth = _float64_ratio(cfg)
    assert 0 < truth < 1e-45
    ratio = f64[0]["delta_norm"] / f64[-1]["delta_norm"]
    assert ratio == pytest.approx(truth, rel=0.02)
    assert summary["delta_norm_ratio_first_step"] == pytest.approx(truth, rel=0.02)
    assert summary["float64_init"]["delta_norm_ratio"] == pytest.approx(truth, rel=0.02)
    d = diagnose(run_dir, ablation=False, write=False)
    decay = next(i for i in d["indicators"] if i["key"] == "gradient_decay")
    assert "below float32 range (< 1e-38)" in decay["summary"] and "measured in float64" in decay["summary"]
    assert "dead" not in decay["summary"] and "no gradient" not in str(decay["evidence"])
    th = d["theory"]
    assert th["measured_precision"] == "float64" and th["measured_factor"] == pytest.approx(th["factor"], rel=0.1)
    shown = cli("show", run_dir).stdout
    assert "< 1e-38" in shown and "step 0 measured again in float64" in shown


def test_float64_init_on_request_repeats_step0_exactly(tmp_path):
    """log.float64_init: true on a run that does not underflow: the float64 rows are the float32 ones
    to float32's precision (same weights, same batch), and the summary's ratios stay float32's."""
    cfg = validate(small(train={"steps": 1}, log={"float64_init": True}))
    run_dir, summary = run_experiment(cfg, tmp_path)
    f32, f64 = _first_rows(run_dir), _first_rows(run_dir, "layers_float64.csv")
    assert len(f32) == len(f64)
    for a, b in zip(f32, f64):
        for col in ("grad_norm", "delta_norm", "weight_norm", "act_std"):
            if a[col] is not None:
                assert b[col] == pytest.approx(a[col], rel=1e-4), (a["layer"], col)
    assert summary["delta_norm_ratio_first_step"] == f32[0]["delta_norm"] / f32[-1]["delta_norm"]


def test_no_float64_pass_without_underflow_or_request(tmp_path):
    run_dir, summary = run_experiment(validate(small(train={"steps": 1})), tmp_path)
    assert not (run_dir / "layers_float64.csv").exists() and "float64_init" not in summary


@pytest.mark.slow
def test_sweep_and_compare_say_below_float32_range_not_0(tmp_path, cli, write_config, monkeypatch):
    """The last step of the deep net has no float64 measurement: its ratios are 'below float32 range',
    not the 0 float32 gives (summary.json: null, listed in below_float32; sweep.csv: an empty cell,
    named in its below_float32 column; the tables: '< 1e-38'); compare's per-layer factor comes from the float64 step 0, as diagnose's does."""
    import csv

    monkeypatch.setenv("COLUMNS", "200")
    base = write_config(small(name="sig30", model=DEEP, train={"steps": 2}, log={"every": 1}))
    res = cli("sweep", "depth", "--values", "10,30", "--config", base, "--workers", "1", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    (sweep,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    rows = {r["depth"]: r for r in csv.DictReader(open(sweep / "sweep.csv"))}
    deep, shallow = rows["30"], rows["10"]
    # empty numeric cells (a numeric column stays numeric), the names in below_float32
    assert deep["delta_norm_ratio_last_step"] == "" and deep["grad_norm_ratio_last_step"] == ""
    assert set(deep["below_float32"].split()) == {"delta_norm_ratio_last_step", "grad_norm_ratio_last_step"}
    assert shallow["below_float32"] == ""
    assert 0 < float(deep["delta_norm_ratio_first_step"]) < 1e-45  # float64 at step 0
    assert 0 < float(shallow["delta_norm_ratio_last_step"]) < 1e-10  # measured: a number
    summary = json.loads((sweep / deep["run_dir"] / "summary.json").read_text())
    assert summary["delta_norm_ratio_last_step"] is None
    assert "delta_norm_ratio_last_step" in summary["below_float32"]
    table = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("30 "))
    assert "< 1e-38" in table and " 0 " not in table
    out = cli("compare", sweep / shallow["run_dir"], sweep / deep["run_dir"]).stdout
    last = next(ln for ln in out.splitlines() if ln.startswith("delta_norm 0/out, last"))
    assert last.split("│")[2].strip() == "< 1e-38"
    # per layer: B's (the deep run's) layer 0 is below float32 range, not 0 nor a subnormal; no log10 to it
    row0 = next(ln for ln in out.splitlines() if ln.strip().startswith("0 │")).split("│")
    assert row0[5].strip() == "< 1e-38" and float(row0[3]) > 0 and row0[7].strip() == ""
    args = (sweep / shallow["run_dir"], sweep / deep["run_dir"], "--step", "last")
    assert "< 1e-38" in next(ln for ln in cli("compare", *args, "--format", "markdown").stdout.splitlines()
                             if ln.startswith("| 0 |"))
    layer0 = {r["run"]: r for r in csv.DictReader(cli("compare", *args, "--format", "csv").stdout.splitlines())
              if r["layer"] == "0" and r["kind"] == "layer"}
    assert layer0["B"]["delta_norm"] == "" and float(layer0["A"]["delta_norm"]) > 0  # empty, not 0.0
    def cell(label):
        return float(next(ln for ln in out.splitlines() if ln.startswith(label)).split("│")[2])

    # measured from the float64 step 0 (blank before): within 10 % of sqrt(chi_1), as diagnose's
    assert cell("delta per layer, step 0") == pytest.approx(cell("delta per layer, theory "), rel=0.1)


def test_init_spread_says_below_float32_range_not_0():
    """--init-seeds on the deep sigmoid net: every seed's layer-0 delta is lost in float32, so the
    spread has no ratio and no per-layer factor for them (not 0), reads them vanishing, and its line
    says so; a seed that did not underflow keeps its number beside them."""
    from vgrad_cli.analysis.spread import line, summarize
    from vgrad_cli.training.initspread import init_spread

    spread, rows = init_spread(validate(small(model=DEEP, train={"steps": 1})), 2)
    assert all(s["delta_ratio"] is None and s["factor"] is None and s["below_float32"] for s in spread["per_seed"])
    assert spread["delta_ratio"] is None and spread["delta_ratio_below_float32"] == 2
    assert spread["readings"] == {"vanishing": 2}
    assert min(r["delta_norm"] for r in rows if r["layer"] == 0) < 1.2e-38  # the case: float32 lost it
    text = line(spread)
    assert "< 1e-38 (float32) for 2 of 2 seeds" in text and "median 0" not in text
    mixed = summarize(spread["per_seed"][:1] + [{"seed": 9, "delta_ratio": 1e-20}], 30)
    assert "for 1 of 2 seeds, the others median 1e-20 [1e-20–1e-20]" in line(mixed)


def test_sweep_png_marks_a_ratio_without_log10_in_a_band_under_the_real_values():
    """The marker for '< 1e-38' must not sit at the bottom of the real values' range (log10 ~ -17
    beside a real -17): it goes into a tickless band added below them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vgrad_cli.sweep.report import _floor

    fig, ax = plt.subplots()
    ax.plot([10], [-17], "o")
    lo = ax.get_ylim()[0]
    _floor(ax, [([30], "C0", "ratio below float32 range (< 1e-38)")])
    (marker,) = [ln for ln in ax.lines if ln.get_label().startswith("ratio below float32 range")]
    assert ax.get_ylim()[0] < marker.get_ydata()[0] < lo < -17
    assert min(ax.get_yticks()) >= lo  # no tick reads a value into the band
    plt.close(fig)


class _Rows:
    """All layer_lines reads of a run: its rows at a step."""

    def __init__(self, rows):
        self.rows = rows

    def layer_rows(self, step):
        return self.rows


@pytest.mark.parametrize("rows, note", [
    # float32 lost layers 0 and 1 (a 0 and a subnormal): not 'exactly 0', and no point drawn at 4e-43
    ([{"layer": 0, "delta_norm": 0.0, "act_dead_frac": 0.0}, {"layer": 1, "delta_norm": 4.02e-43, "act_dead_frac": 0.0},
      {"layer": 2, "delta_norm": 1e-3, "act_dead_frac": 0.0}], "0 or below float32 range (< 1e-38)"),
    # layer 1 entirely dead: the 0 below it is exact
    ([{"layer": 0, "delta_norm": 0.0, "act_dead_frac": 0.0}, {"layer": 1, "delta_norm": 0.0, "act_dead_frac": 1.0},
      {"layer": 2, "delta_norm": 1e-3, "act_dead_frac": 0.0}], "exactly 0 (a dead layer)"),
])
def test_gradient_flow_says_below_float32_range_unless_a_layer_is_dead(rows, note):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vgrad_cli.report.axes import layer_lines

    fig, ax = plt.subplots()
    assert layer_lines(ax, _Rows(rows), "delta_norm", [0], plt.get_cmap("viridis"))
    assert [t.get_text() for t in ax.texts] == [f"▼ at the bottom = {note}"]
    assert list(ax.collections[0].get_offsets()[:, 0]) == [0, 1]  # both marked at the bottom
    (line,) = ax.lines
    assert [y for y in line.get_ydata() if y == y] == [1e-3]  # no point at 4.02e-43 or 0
    plt.close(fig)


def test_compare_plot_leaves_values_below_float32_range_as_gaps_and_says_so(tmp_path, monkeypatch):
    """compare --plot: a 0 or a subnormal delta is a gap with a note, not a point at 1e-43."""
    import math

    import matplotlib.pyplot as plt

    from vgrad_cli.analysis.verdict import FLOAT32_TINY
    from vgrad_cli.report.compare_plot import compare_plot

    run_dir, _ = run_experiment(validate(small(model=DEEP, train={"steps": 2}, log={"every": 1})), tmp_path)
    kept = []
    monkeypatch.setattr(plt, "close", kept.append)  # keep the saved figure open to read it back
    compare_plot([run_dir], tmp_path / "cmp.png")
    delta_ax = kept[0].axes[1]
    ys = [y for ln in delta_ax.get_lines() for y in ln.get_ydata()]
    assert any(math.isnan(y) for y in ys) and all(math.isnan(y) or y >= FLOAT32_TINY for y in ys)
    assert any("below float32 range" in t.get_text() for t in delta_ax.texts)
    assert (tmp_path / "cmp.png").stat().st_size > 0


def test_a_zero_below_all_zero_weights_is_exact_not_underflow():
    """LoRA starts lora_B at zero: lora_A's gradient is exactly 0 at step 0, a fact, not a value
    float32 lost. Without such a layer above it, the same 0 reads as below float32's range."""
    from vgrad_cli.analysis.verdict import underflowed

    lora = [{"name": "lora_A", "grad_norm": 0.0, "weight_norm": 3.1},
            {"name": "lora_B", "grad_norm": 0.7, "weight_norm": 0.0}]
    assert not underflowed(lora, 0, "grad_norm")
    deep = [{"name": "hidden0", "grad_norm": 0.0, "weight_norm": 3.1},
            {"name": "output", "grad_norm": 0.7, "weight_norm": 2.0}]
    assert underflowed(deep, 0, "grad_norm")
