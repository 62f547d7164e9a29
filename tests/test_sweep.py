"""`vgrad sweep`: grids x seeds end to end (worker processes and a real local Ray instance), resume,
isolation of a diverging point, sweep.csv agreeing with each run's summary.json, and bad input."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import CONFIGS, ROOT, small

# Columns of sweep.csv copied from each run's summary.json.
SUMMARY_COLUMNS = [
    "status", "verdict", "grad_norm_ratio_first_step", "grad_norm_ratio_last_step", "delta_norm_ratio_first_step",
    "delta_norm_ratio_last_step", "final_loss", "final_accuracy", "final_eval_loss", "final_eval_accuracy",
    "steps_completed", "wall_time_s",
]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def sweep_dirs(out: Path) -> list[Path]:
    return sorted(d for d in out.iterdir() if d.is_dir() and d.name.startswith("sweep-"))


def run_dirs(sweep: Path) -> list[Path]:
    return sorted(d for d in sweep.iterdir() if d.is_dir() and not d.name.startswith("."))


def same(cell: str, value) -> bool:
    """A sweep.csv cell against the summary.json value: floats exactly (repr round-trips)."""
    if value is None:
        return cell == ""
    if isinstance(value, float):
        return (math.isnan(value) and cell == "nan") or float(cell) == value
    return cell == str(value)


def assert_rows_match_runs(sweep: Path, expected_rows: int):
    rows = read_csv(sweep / "sweep.csv")
    assert len(rows) == expected_rows
    assert sorted(r["run_dir"] for r in rows) == [d.name for d in run_dirs(sweep)]
    for r in rows:
        run = sweep / r["run_dir"]
        assert {"config.yaml", "layers.csv", "metrics.csv", "summary.json"} <= {f.name for f in run.iterdir()}
        summary = json.loads((run / "summary.json").read_text())
        for col in SUMMARY_COLUMNS:
            assert same(r[col], summary.get(col)), (r["run_dir"], col, r[col], summary.get(col))
        assert int(r["seed"]) == summary["seed"]
    return rows


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One 2x2 grid with 2 seeds through the local executor (shared: it is the slow part)."""
    from typer.testing import CliRunner

    from vgrad_cli.cli.main import app

    tmp = tmp_path_factory.mktemp("grid")
    base = tmp / "base.yaml"
    base.write_text(yaml.safe_dump(small()))
    out = tmp / "runs"
    res = CliRunner().invoke(app, ["sweep", "depth", "activation", "--config", str(base), "--values", "depth=1,3",
                                   "--values", "activation=tanh,relu", "--seeds", "2", "--workers", "2",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    return {"out": out, "sweep": sweep_dirs(out)[0], "output": res.output, "base": base}


@pytest.mark.slow
def test_grid_with_seeds_end_to_end(grid):
    sweep = grid["sweep"]
    assert sweep.name.startswith("sweep-depth-activation-")
    rows = assert_rows_match_runs(sweep, 8)
    assert {(r["depth"], r["activation"], r["seed"]) for r in rows} == {
        (d, a, s) for d in ("1", "3") for a in ("tanh", "relu") for s in ("0", "1")}
    assert all(r["status"] == "completed" for r in rows)
    # each run ran the point's config
    for r in rows:
        cfg = yaml.safe_load((sweep / r["run_dir"] / "config.yaml").read_text())
        assert (cfg["model"]["depth"], cfg["model"]["activation"], cfg["seed"]) == (
            int(r["depth"]), r["activation"], int(r["seed"]))
        assert cfg["train"]["steps"] == 20  # the base config's, not the bundled default's
    summary = read_csv(sweep / "sweep_summary.csv")
    assert len(summary) == 4 and all(s["n_runs"] == "2" and s["n_completed"] == "2" for s in summary)
    by_point = {(r["depth"], r["activation"]): r for r in summary}
    losses = [float(r["final_loss"]) for r in rows if (r["depth"], r["activation"]) == ("3", "relu")]
    assert float(by_point["3", "relu"]["final_loss_mean"]) == pytest.approx(sum(losses) / 2)
    assert float(by_point["3", "relu"]["final_loss_min"]) == min(losses)
    assert (sweep / "sweep.png").stat().st_size > 10_000
    assert json.loads((sweep / "sweep.json").read_text())["seeds"] == [0, 1]
    out = grid["output"]
    assert "[8/8]" in out and "verdict" in out and "sweep.csv" in out


@pytest.mark.slow
def test_resume_runs_only_missing_or_incomplete(grid, tmp_path, cli):
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(grid["sweep"], sweep)
    runs = run_dirs(sweep)
    (runs[0] / "summary.json").unlink()                        # a run killed before it wrote anything final
    s = json.loads((runs[1] / "summary.json").read_text())
    s["status"] = "interrupted"                                # a run stopped by Ctrl-C
    (runs[1] / "summary.json").write_text(json.dumps(s))
    kept = {d.name: (d / "summary.json").read_text() for d in runs[2:]}

    res = cli("sweep", "--resume", sweep, "--workers", "2")
    assert res.exit_code == 0, res.output
    assert "6 of 8 runs already finished; running the other 2" in res.output
    assert res.output.count("seed=") == 2                      # one progress line per new run
    rows = assert_rows_match_runs(sweep, 8)
    after = {d.name for d in run_dirs(sweep)}
    assert set(kept) <= after and len(after - set(kept)) == 2  # the 6 finished runs untouched, 2 new ones
    assert all((sweep / n / "summary.json").read_text() == t for n, t in kept.items())
    assert sorted(d.name for d in (sweep / ".incomplete").iterdir()) == sorted([runs[0].name, runs[1].name])
    assert all(r["status"] == "completed" for r in rows)


@pytest.mark.slow
def test_diverging_point_is_recorded_and_isolated(cli, write_config, tmp_path):
    base = write_config(small(model={"activation": "relu", "init": "kaiming_normal"}))
    res = cli("sweep", "lr", "--values", "0.1,1e4", "--config", base, "--workers", "2", "--out", tmp_path)
    assert res.exit_code == 0, res.output                      # a diverged point is a result, not an error
    sweep = sweep_dirs(tmp_path)[0]
    rows = {r["lr"]: r for r in assert_rows_match_runs(sweep, 2)}
    assert rows["10000.0"]["status"] == "diverged" and rows["10000.0"]["verdict"] == "exploding"
    assert rows["0.1"]["status"] == "completed" and rows["0.1"]["steps_completed"] == "20"
    summary = {r["lr"]: r for r in read_csv(sweep / "sweep_summary.csv")}
    assert summary["10000.0"]["n_diverged"] == "1" and summary["10000.0"]["final_loss_mean"] == ""


def test_default_base_is_the_bundled_deep_sigmoid_config():
    from vgrad_cli.sweep.plan import DEFAULT_BASE, new_plan

    assert yaml.safe_load((CONFIGS / "01_deep_sigmoid.yaml").read_text()) == DEFAULT_BASE
    plan = new_plan(["depth"], [], None, None, [])
    assert [p.values for p in plan.params] == [[1, 2, 4, 8, 16, 32]]
    assert plan.points[0].config["train"]["steps"] == 300 and "train.steps=300" in plan.notes[0]
    plan = new_plan(["depth"], ["2"], None, None, ["train.steps=7"])  # --set beats the shortened default
    assert plan.points[0].config["train"]["steps"] == 7 and "300" not in plan.notes[0]


@pytest.mark.slow
def test_sweep_without_config_uses_the_bundled_base(cli, tmp_path):
    res = cli("sweep", "depth", "--values", "1", "--set", "train.steps=5", "--workers", "1", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert "bundled deep sigmoid MLP" in res.output
    sweep = sweep_dirs(tmp_path)[0]
    (row,) = assert_rows_match_runs(sweep, 1)
    cfg = yaml.safe_load((sweep / row["run_dir"] / "config.yaml").read_text())
    assert cfg["model"]["activation"] == "sigmoid" and cfg["model"]["depth"] == 1 and cfg["train"]["steps"] == 5


def test_docs_describe_every_sweep_csv_column():
    from vgrad_cli.sweep.report import RUN_COLUMNS

    text = (ROOT / "docs" / "sweep.md").read_text()
    for col in RUN_COLUMNS + ["n_runs", "n_completed", "n_diverged", "n_interrupted", "n_failed", "verdicts"]:
        assert f"`{col}`" in text, col


def test_values_are_yaml_scalars():
    from vgrad_cli.sweep.plan import parse_values

    got = parse_values(["lr", "residual", "clip_norm"], ["lr=1e-3,0.1,1", "residual=true,false", "clip_norm=null,1.5"])
    assert got == {"lr": [0.001, 0.1, 1], "residual": [True, False], "clip_norm": [None, 1.5]}
    assert parse_values(["model.init_std"], ["0.5,2"]) == {"model.init_std": [0.5, 2]}


@pytest.mark.parametrize("args, message", [
    (["dpeth"], "unknown parameter 'dpeth' (did you mean 'depth'?)"),
    (["model.depht", "--values", "2,3"], "unknown parameter 'model.depht': unknown key 'model.depht' (did you mean"),
    (["depth", "--values", "2,0,4"], "sweep point depth=0, seed=0: model.depth: must be >= 1"),
    (["depth", "activation", "--values", "depth=2", "--values", "activation=relu,sigmod"],
     "sweep point depth=2, activation=sigmod, seed=0: model.activation: 'sigmod' is not a known activation"),
    (["depth", "--values", ""], "empty value list"),
    (["depth", "--values", "depth="], "empty value list"),
    (["depth", "--values", "2,,4"], "empty item"),
    (["depth", "--values", "width=2,4"], "--values names 'width', which is not a swept parameter; sweeping: depth"),
    (["depth", "width", "--values", "2,4"], "with several parameters name each list"),
    (["clip_norm"], "'clip_norm' has no default values; give them with --values clip_norm="),
    (["depth", "--seeds", "0"], "--seeds must be >= 1 (got 0)"),
    (["depth", "--workers", "0"], "--workers must be >= 1 (got 0)"),
    (["depth", "--executor", "dask"], "--executor 'dask' is not known"),
    ([], "name at least one parameter"),
    (["depth", "--address", "127.0.0.1:6379"], "--address is the Ray cluster to use; add --executor ray"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, args, message):
    out = tmp_path / "runs"
    res = cli("sweep", *args, "--out", out)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_ray_not_installed_says_how_to_install(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without the extra
    res = cli("sweep", "depth", "--executor", "ray", "--out", tmp_path / "runs")
    assert res.exit_code == 2
    assert "needs Ray, which is not installed: pip install 'vgrad[ray]'" in " ".join(res.output.split())
    assert not (tmp_path / "runs").exists()


def test_unreachable_ray_address_is_a_one_line_error(cli, tmp_path):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = cli("sweep", "depth", "--executor", "ray", "--address", f"127.0.0.1:{port}", "--out", tmp_path / "runs")
    assert res.exit_code == 2, res.output
    assert f"cannot reach the Ray cluster at '127.0.0.1:{port}'" in " ".join(res.output.split())
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_ctrl_c_stops_workers_and_leaves_sweep_csv_consistent(write_config, tmp_path):
    """A real SIGINT to the whole process group, as a terminal's Ctrl-C sends it."""
    base = write_config(small(train={"steps": 100_000}, log={"every": 50, "eval_every": 1000}))
    env = {**os.environ, "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "vgrad_cli", "sweep", "depth", "--values", "1,2,3", "--config", str(base),
           "--workers", "2", "--out", str(tmp_path)]
    # A shell's background job (`make test &`) starts with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: give the sweep the SIGINT a terminal's foreground process has.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 30
    while time.time() < deadline:  # wait until both workers are training (their layers.csv has rows)
        started = [p for p in tmp_path.glob("sweep-*/*/layers.csv") if p.stat().st_size > 500]
        if len(started) >= 2:
            break
        time.sleep(0.2)
    assert len(started) >= 2
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, output
    assert "finish with: vgrad sweep --resume" in output and "Traceback" not in output
    sweep = sweep_dirs(tmp_path)[0]
    rows = read_csv(sweep / "sweep.csv")
    assert_rows_match_runs(sweep, len(rows))  # whole rows only, each agreeing with its run
    assert len(rows) >= 2 and {r["status"] for r in rows} == {"interrupted"}  # the runs in flight, stopped cleanly


# ----------------------------------------------------------------------------- Ray


@pytest.mark.slow
def test_ray_executor_starts_and_stops_its_own_local_instance(write_config, tmp_path):
    """Without a running Ray, `--executor ray` starts a local instance and shuts it down after."""
    pytest.importorskip("ray")
    base = write_config(small())
    cmd = [sys.executable, "-m", "vgrad_cli", "sweep", "depth", "--values", "1,2",
           "--config", str(base), "--executor", "ray", "--workers", "2", "--out", str(tmp_path)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NO_COLOR": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Ray executor on a local Ray instance (2 CPUs)" in res.stdout
    assert_rows_match_runs(sweep_dirs(tmp_path)[0], 2)



@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a running cluster
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_executor_grid_ships_run_files_back(ray_instance, cli, write_config, tmp_path):
    base = write_config(small())
    res = cli("sweep", "depth", "activation", "--values", "depth=1,2", "--values", "activation=tanh,relu",
              "--config", base, "--executor", "ray", "--out", tmp_path / "runs")
    assert res.exit_code == 0, res.output
    assert "Ray executor" in res.output
    sweep = sweep_dirs(tmp_path / "runs")[0]
    rows = assert_rows_match_runs(sweep, 4)
    assert all(r["status"] == "completed" for r in rows)
    assert (sweep / "sweep.png").exists() and len(read_csv(sweep / "sweep_summary.csv")) == 4
    assert not list(sweep.glob(".incoming-*"))  # every shipped run was renamed into place
    assert ray_instance.is_initialized()        # a Ray started by the caller is left running


def _point_rows(depth, statuses, last_ratios, losses):
    """sweep.csv rows of one point, built by hand: a status, a last-step ratio and a final loss each."""
    return [{"depth": depth, "seed": i, "status": st, "verdict": "exploding" if st == "diverged" else "vanishing",
             "delta_norm_ratio_first_step": 0.5, "delta_norm_ratio_last_step": ratio, "final_loss": loss,
             "final_eval_accuracy": 0.9, "wall_time_s": 1.0}
            for i, (st, ratio, loss) in enumerate(zip(statuses, last_ratios, losses))]


def _plan(values, seeds=(0, 1, 2)):
    from vgrad_cli.sweep.plan import Param, Plan

    return Plan(params=[Param("depth", "model.depth", list(values))], seeds=list(seeds), points=[], base={})


def test_end_of_run_statistics_come_from_completed_runs_only():
    """Two diverged runs and a vanishing one: the last-step ratio and the final loss are the completed
    run's, not a geometric mean that no run has; the first-step ratio counts every run."""
    from vgrad_cli.sweep.report import aggregate, summary_table

    rows = (_point_rows(8, ["diverged", "diverged", "completed"], [1e3, 1e4, 1e-5], [1e11, 3.0, 1.39])
            + _point_rows(32, ["diverged"] * 3, [1e3, 1e4, 1e5], [1e11, 1e9, 2.0]))
    mixed, broken = aggregate(_plan([8, 32]), rows)
    assert (mixed["n_runs"], mixed["n_completed"], mixed["n_diverged"]) == (3, 1, 2)
    assert mixed["delta_norm_ratio_last_step_log10_mean"] == pytest.approx(-5)
    assert mixed["delta_norm_ratio_last_step_mean"] == pytest.approx(1e-5)
    assert mixed["final_loss_mean"] == pytest.approx(1.39) and mixed["final_loss_std"] is None
    assert mixed["delta_norm_ratio_first_step_mean"] == 0.5 and mixed["wall_time_s_mean"] == 1.0
    for key in ("delta_norm_ratio_last_step_log10_mean", "delta_norm_ratio_last_step_max", "final_loss_mean",
                "final_eval_accuracy_mean"):
        assert broken[key] is None, key                                  # no completed run: empty cells
    assert broken["delta_norm_ratio_first_step_log10_mean"] == pytest.approx(math.log10(0.5))

    from rich.console import Console

    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(summary_table(_plan([8, 32]), [mixed, broken]))
    cells = [[c.strip() for c in ln.split("│")] for ln in console.export_text().splitlines() if "│" in ln]
    lines = {row[0]: row for row in cells}
    # depth, runs, verdict, ratio first, ratio last, final loss, eval acc, time s
    assert lines["8"][1:7] == ["1 ok, 2 diverged", "exploding:2 vanishing:1", "0.5", "1.0e-05", "1.39", "0.9"]
    assert lines["32"][1:7] == ["3 diverged", "exploding", "0.5", "", "", ""]  # no completed run: empty cells


def test_depth_is_plotted_on_a_linear_axis():
    """Exponential decay in depth is a straight line on the log-ratio panels only on a linear x axis;
    a learning rate keeps its log axis."""
    import matplotlib.pyplot as plt

    from vgrad_cli.sweep.plan import Param
    from vgrad_cli.sweep.report import aggregate, figure

    depths = [1, 2, 4, 8, 16, 32]
    rows = [r for d in depths for r in _point_rows(d, ["completed"], [10.0 ** -d], [1.0])]
    fig = figure(_plan(depths, seeds=[0]), aggregate(_plan(depths, seeds=[0]), rows))
    assert [ax.get_xscale() for ax in fig.axes[:3]] == ["linear"] * 3
    plt.close(fig)
    plan = _plan(depths, seeds=[0])
    plan.params = [Param("lr", "train.lr", [0.001, 0.01, 0.1, 1.0])]
    rows = [dict(r, lr=lr) for lr, r in zip(plan.params[0].values, rows)]
    fig = figure(plan, aggregate(plan, rows))
    assert fig.axes[0].get_xscale() == "log"
    plt.close(fig)


@pytest.mark.slow
def test_a_transformer_sweep_names_the_blocks_its_ratio_compares(cli, write_config, tmp_path):
    base = write_config(small(model={"kind": "transformer", "activation": None, "depth": 2, "width": 16, "heads": 2},
                              task={"name": "adding", "seq_len": 6, "train_size": 64, "eval_size": 32},
                              train={"steps": 2}))
    res = cli("sweep", "depth", "--values", "2,3", "--config", base, "--workers", "1", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert "sweep: block0/block1, block0/block2 delta_norm ratio" in " ".join(res.stdout.split())
    assert "layer-0/output" not in res.stdout
