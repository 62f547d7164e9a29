"""`vgrad compare`, `show`, `runs`: formats, alignment of runs of different depth, --step, sweeps,
recurrent through-time profiles, and every bad-input case (exit 2, one line, no traceback)."""

import csv
import io
import json
import math
import shutil
import subprocess
import sys

import pytest
from conftest import small

from vgrad_cli.analysis.diagnose import diagnose
from vgrad_cli.config import validate
from vgrad_cli.training.runner import run_experiment


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Two real runs of different depth (3 and 5 hidden layers), logged at steps 0, 5, ..., 20."""
    root = tmp_path_factory.mktemp("runs")
    run_experiment(validate(small(name="shallow-tanh")), root)
    run_experiment(validate(small(name="deep-sigmoid", model={"depth": 5, "activation": "sigmoid"})), root)
    return root


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at 80 columns otherwise: whole names are easier to assert


def run_dir(root, prefix):
    (d,) = [d for d in root.iterdir() if d.name.startswith(prefix)]
    return d


def layers(d, step):
    with open(d / "layers.csv") as f:
        return {int(r["layer"]): r for r in csv.DictReader(f) if int(r["step"]) == step}


def copy_run(root, prefix, dest):
    return shutil.copytree(run_dir(root, prefix), dest)


def write_time_csv(d, ts=30):
    """A hand-written through-time profile: decays by e per step back in time, faster later in training."""
    with open(d / "time.csv", "w") as f:
        f.write("step,layer,t,delta_norm\n")
        for step in (0, 5, 10, 15, 20):
            for t in range(ts):
                f.write(f"{step},0,{t},{math.exp(-(ts - 1 - t) * (1 + step / 20))}\n")


def usage_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in result.output, result.output


def test_table_aligns_runs_of_different_depth(cli, root):
    r = cli("compare", "shallow", "deep", "--runs-dir", root)
    assert r.exit_code == 0, r.output
    out = r.output
    assert "per-layer gradient at the first logged step (0)" in out and "the last logged step (20)" in out
    assert "A =" in out and "shallow-tanh-" in out and "B =" in out and "deep-sigmoid-" in out
    # rows pair by name: hidden3 and hidden4 exist only in B (blank A cells), the outputs pair
    # (layer 3 of A, layer 5 of B), never A's output with B's hidden3
    assert "output / hidden3" not in out
    row = next(ln for ln in out.splitlines() if "hidden4" in ln)
    assert row.split("│")[0].strip() == "4" and row.split("│")[2].strip() == "" and row.count("│") == 7
    row = next(ln for ln in out.splitlines() if "output" in ln and "│" in ln)
    assert row.split("│")[0].strip() == "3/5" and all(c.strip() for c in row.split("│")[2:6])
    for field in ("status", "verdict", "final loss", "delta_norm 0/out, first", "wall time (s)"):
        assert field in out


def test_json_carries_every_number(cli, root):
    r = cli("compare", "shallow", "deep", "--runs-dir", root, "--format", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    a, b = run_dir(root, "shallow"), run_dir(root, "deep")
    assert [x["label"] for x in data["runs"]] == ["A", "B"] and data["runs"][1]["name"] == b.name
    assert [s["which"] for s in data["sections"]] == ["first", "last"]
    last = data["sections"][1]
    assert last["steps"] == {"A": 20, "B": 20}
    assert len(last["layers"]) == 6                              # hidden0..4 and output
    assert last["layers"][4]["runs"]["A"] is None                 # A has no hidden4 ...
    out_a, out_b = last["layers"][5]["runs"]["A"], last["layers"][5]["runs"]["B"]
    assert (out_a["name"], out_a["layer"], out_b["name"], out_b["layer"]) == ("output", 3, "output", 5)  # ... pairs outputs
    la, lb = layers(a, 20), layers(b, 20)
    assert out_b["log10_delta_norm_vs_A"] == pytest.approx(
        math.log10(float(lb[5]["delta_norm"]) / float(la[3]["delta_norm"])))
    cell = last["layers"][1]["runs"]["B"]
    assert cell["grad_norm"] == float(lb[1]["grad_norm"]) and cell["delta_norm"] == float(lb[1]["delta_norm"])
    assert cell["log10_grad_norm_vs_A"] == pytest.approx(
        math.log10(float(lb[1]["grad_norm"]) / float(la[1]["grad_norm"])))
    summary = json.loads((b / "summary.json").read_text())
    info = data["runs"][1]
    for key in ("verdict", "status", "final_loss", "delta_norm_ratio_first_step", "steps_completed", "wall_time_s"):
        assert info[key] == summary[key]


def test_csv_is_long_format(cli, root):
    r = cli("compare", "shallow", "deep", "--runs-dir", root, "-f", "csv", "--step", "last")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 4 + 6                                     # one per (run, layer), blanks not written
    assert {row["run"] for row in rows} == {"A", "B"} and {row["step"] for row in rows} == {"20"}
    assert all(row["log10_grad_norm_vs_ref"] == "" for row in rows if row["run"] == "A")
    assert float(rows[0]["grad_norm"]) == float(layers(run_dir(root, "shallow"), 20)[0]["grad_norm"])


def test_markdown(cli, root):
    r = cli("compare", "shallow", "deep", "--runs-dir", root, "--format", "markdown", "--step", "first")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert "**per-layer gradient at the first logged step (0); layer 0 = input side**" in lines
    assert "| layer | name | A grad | A delta | B grad | B delta | B/A log10 grad | B/A log10 delta |" in lines
    assert "|---:|:---|---:|---:|---:|---:|---:|---:|" in lines
    assert "| 4 | hidden4 |  |  |" in r.stdout                      # blank cells of the shallower run
    assert "| 3/5 | output |" in r.stdout                          # the outputs pair, whatever their index
    assert any(ln.startswith("| verdict |") for ln in lines)


def test_step_number_and_bad_steps(cli, root):
    r = cli("compare", "shallow", "deep", "--runs-dir", root, "-f", "json", "--step", "10")
    assert [s["steps"] for s in json.loads(r.stdout)["sections"]] == [{"A": 10, "B": 10}]
    usage_error(cli("compare", "shallow", "deep", "--runs-dir", root, "--step", "7"),
                "no logged step 7", "nearest logged: 5, 10")
    usage_error(cli("compare", "shallow", "deep", "--runs-dir", root, "--step", "middle"), "first, last or a step")
    usage_error(cli("compare", "shallow", "deep", "--runs-dir", root, "--format", "html"), "table, json, csv")
    usage_error(cli("compare", "shallow", "--runs-dir", root), "at least two runs")


def test_paths_and_sweep_directories(cli, root, tmp_path):
    a, b = run_dir(root, "shallow"), run_dir(root, "deep")
    r = cli("compare", a, b, "-f", "json")                       # plain paths, no --runs-dir needed
    assert [x["name"] for x in json.loads(r.stdout)["runs"]] == [a.name, b.name]
    sweep = tmp_path / "sweep-depth"
    sweep.mkdir()
    shutil.copytree(b, sweep / b.name)
    shutil.copytree(a, sweep / a.name)
    (sweep / "sweep.csv").write_text(f"run_dir,depth\n{sweep / b.name},5\n{sweep / a.name},3\n")
    r = cli("compare", sweep, "-f", "json", "--step", "last")  # a sweep expands to its runs, in sweep.csv order
    assert r.exit_code == 0, r.output
    assert [x["name"] for x in json.loads(r.stdout)["runs"]] == [b.name, a.name]
    r = cli("compare", "sweep", "--runs-dir", tmp_path, "-f", "json")  # a prefix can name a sweep, too
    assert len(json.loads(r.stdout)["runs"]) == 2
    usage_error(cli("show", sweep), "is a sweep of 2 runs")


def test_missing_ambiguous_and_not_a_run(cli, root, tmp_path):
    usage_error(cli("compare", "nope", "deep", "--runs-dir", root), "no run 'nope'", "vgrad runs")
    copy_run(root, "deep", tmp_path / "deep-sigmoid-20990101-000000-beef")
    copy_run(root, "deep", tmp_path / "deep-relu-20990101-000000-cafe")
    usage_error(cli("compare", "deep", "deep-relu", "--runs-dir", tmp_path),
                "'deep' is ambiguous", "deep-sigmoid-20990101-000000-beef", "deep-relu-20990101-000000-cafe")
    (tmp_path / "empty").mkdir()
    usage_error(cli("compare", tmp_path / "empty", "deep-relu", "--runs-dir", tmp_path), "is not a vgrad run")
    usage_error(cli("show", tmp_path), "is not a vgrad run", "it holds 2 runs")
    usage_error(cli("show", "x", "--runs-dir", tmp_path / "nowhere"), "no runs directory")


@pytest.mark.parametrize("damage, needle", [
    (lambda d: (d / "layers.csv").write_text("step,layer,grad_norm\n0,0,1.0\n"), "no column delta_norm"),
    (lambda d: (d / "layers.csv").write_text((d / "layers.csv").read_text() + "20,x,y,z\n"), "line 22"),
    (lambda d: (d / "metrics.csv").unlink(), "has no metrics.csv"),
    (lambda d: (d / "summary.json").write_text("{not json"), "summary.json' is corrupt"),
    (lambda d: (d / "config.yaml").write_text("model: [unclosed"), "config.yaml' is corrupt"),
])
def test_missing_or_corrupt_tables(cli, root, tmp_path, damage, needle):
    d = copy_run(root, "shallow", tmp_path / "broken-20990101-000000-0000")
    damage(d)
    usage_error(cli("compare", d, run_dir(root, "deep")), needle)
    usage_error(cli("show", d), needle)


def test_incomplete_run_shows_what_exists(cli, root, tmp_path):
    d = copy_run(root, "shallow", tmp_path / "killed-20990101-000000-0000")
    summary = json.loads((d / "summary.json").read_text())
    for key in list(summary):  # what a run killed at step 10 leaves: the start-of-run summary only
        if key.startswith(("final_", "verdict", "grad_norm_", "delta_norm_", "wall", "steps_completed")):
            del summary[key]
    summary["status"] = "running"
    (d / "summary.json").write_text(json.dumps(summary))
    kept = [ln for ln in (d / "layers.csv").read_text().splitlines() if ln.split(",")[0] in ("step", "0", "5", "10")]
    (d / "layers.csv").write_text("\n".join(kept) + "\n15,0,hid")  # a torn last line
    r = cli("compare", d, run_dir(root, "deep"), "--step", "last")
    assert r.exit_code == 0, r.output
    assert "incomplete run: it is still running, or was killed; showing what it logged (steps 0–10 of 20)" in r.output
    assert "the last line of layers.csv is incomplete" in r.output
    assert "the last logged step (A: 10, B: 20)" in r.output
    r = cli("show", d)
    assert r.exit_code == 0, r.output
    assert "provisional: the run is running" in r.output and "incomplete run" in r.output


def test_recurrent_runs_add_the_through_time_profile(cli, root, tmp_path):
    d = copy_run(root, "shallow", tmp_path / "rnn-20990101-000000-0000")
    write_time_csv(d)
    r = cli("compare", d, run_dir(root, "deep"), "-f", "json", "--step", "last")
    data = json.loads(r.stdout)
    profile = data["sections"][0]["time"]
    assert list(profile) == ["A"] and len(profile["A"]) == 30
    assert profile["A"][-1]["delta_norm"] == pytest.approx(1.0)
    assert data["runs"][0]["time_ratio_last_step"] == pytest.approx(math.exp(-29 * 2))
    r = cli("compare", d, run_dir(root, "deep"))
    assert "gradient through time" in r.output and "every 2th t of 30" in r.output
    r = cli("compare", d, run_dir(root, "deep"), "-f", "csv")
    assert sum(1 for row in csv.DictReader(io.StringIO(r.stdout)) if row["kind"] == "time") == 60
    r = cli("show", d)
    assert r.exit_code == 0 and "gradient through time" in r.output and "step 20" in r.output


def test_show_and_runs(cli, root):
    r = cli("show", "deep", "--runs-dir", root)
    assert r.exit_code == 0, r.output
    assert "per-layer gradient (layer 0 = input side)" in r.output and "verdict:" in r.output
    assert "mlp depth 5 width 16 sigmoid" in r.output
    for cmd in ("runs", "ls"):
        r = cli(cmd, "--runs-dir", root)
        assert r.exit_code == 0, r.output
        assert "shallow-tanh-" in r.output and "deep-sigmoid-" in r.output and "completed" in r.output
    usage_error(cli("runs", "--runs-dir", root / "nowhere"), "does not exist")


def test_show_prints_the_diagnosis_lines_run_printed(cli, root):
    r = cli("show", "deep", "--runs-dir", root)
    d = json.loads((run_dir(root, "deep") / "summary.json").read_text())
    assert f"verdict: {d['verdict']}" in r.output
    # the symptoms `vgrad run` lists under its verdict line, when any is present
    present = [i for i in diagnose(run_dir(root, "deep"), ablation=False, write=False)["indicators"]
               if i["status"] == "present"]
    assert bool(present) == ("symptoms present" in r.output)
    for i in present[:3]:
        assert f"({i['id']}) {i['name']}" in r.output


def test_runs_and_show_from_another_directory_say_where_they_looked(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("runs")
    assert r.exit_code == 0 and str(tmp_path / "runs") in r.output and "--runs-dir" in r.output
    usage_error(cli("show", "deep"), str(tmp_path / "runs"), "--runs-dir")


def test_no_torch_and_fast(root):
    """compare, show and runs read CSV and JSON only: torch must never be imported."""
    code = (
        "import sys, time\n"
        "from vgrad_cli.cli.main import app\n"
        "t = time.perf_counter()\n"
        f"for args in (['compare', 'shallow', 'deep', '--runs-dir', {str(root)!r}], ['show', 'deep', '--runs-dir', "
        f"{str(root)!r}], ['runs', '--runs-dir', {str(root)!r}]):\n"
        "    app(args, standalone_mode=False)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('elapsed', time.perf_counter() - t, file=sys.stderr)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "per-layer gradient" in p.stdout


# ----------------------------------------------------------------------------- console at 80 columns


def narrow(text: str, width: int = 80) -> list[str]:
    """The lines of console output, checked: none wider than the console (but a path, never broken),
    none a lone unit."""
    lines = [ln.rstrip() for ln in text.splitlines()]
    wide = [ln for ln in lines if len(ln) > width and " " in ln.strip().removesuffix(" \\")]  # a path, then a continuation
    assert not wide, wide
    assert not any(ln.strip() in ("s", "0.01)", ")") for ln in lines), lines
    return lines


def test_fmt_one_format_per_magnitude():
    from vgrad_cli.report.console import fmt

    assert [fmt(v) for v in (151452.11, 1400.0, 733.0, 0.0298, 9.17e-4, 4.2e-13, 0.0)] == [
        "1.51e+05", "1.40e+03", "733", "0.0298", "9.17e-04", "4.20e-13", "0"]


@pytest.mark.parametrize("width", [80, 110])
def test_summary_lines_break_between_phrases(width):
    from rich.console import Console

    from vgrad_cli.report.console import print_summary

    reason = ("every delta_norm ratio lies in [0.01, 100] (lowest: layer-0/output delta_norm at the first step = "
              "0.51)")
    summary = {"verdict": "healthy", "verdict_reason": reason, "status": "completed", "steps_completed": 1000,
               "steps_planned": 1000, "final_loss": 0.0298, "baseline_loss": 1.39, "final_eval_accuracy": 0.968,
               "chance_accuracy": 0.266, "wall_time_s": 2.86}
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    print_summary(console, "runs/relu-kaiming-20261125-133922-e002", summary, [], [])
    text = console.export_text()
    lines = narrow(text, width)
    flat = " ".join(ln.strip() for ln in lines)
    for phrase in ("2.86 s", "(lowest: layer-0/output delta_norm at the first step = 0.51)", "[0.01, 100]",
                   "eval accuracy 0.968 (chance 0.266)", "final loss 0.0298 (baseline 1.39)"):
        assert phrase in flat and any(phrase in ln for ln in lines), phrase   # never split over two lines


def test_diverged_run_prints_no_eval_accuracy(cli, root, tmp_path, monkeypatch):
    """The run diverged at step 2; its last eval came from step 0: no result of the run."""
    d = copy_run(root, "shallow", tmp_path / "exploding-20990101-000000-0000")
    s = json.loads((d / "summary.json").read_text())
    s.update(status="diverged", verdict="exploding", diverged_step=2, final_eval_accuracy=0.4321,
             verdict_reason="the loss became non-finite at step 2")
    (d / "summary.json").write_text(json.dumps(s))
    monkeypatch.setenv("COLUMNS", "80")
    r = cli("show", d)
    assert r.exit_code == 0, r.output
    narrow(r.output)
    assert "eval accuracy" not in r.output and "last finite loss" in r.output
    assert "non-finite loss at step 2" in r.output
    r = cli("compare", d, run_dir(root, "deep"))
    assert "0.432" not in r.output and "— (diverged at step 2)" in r.output


def test_version_is_a_plain_flag(cli):
    r = cli("--help")
    (line,) = [ln for ln in r.output.splitlines() if "--version" in ln]
    assert "<bool>" not in line and "print the version" in line
    assert cli("--version").output.startswith("vgrad ")


def test_compare_many_runs_prints_tables_not_markdown(cli, root, tmp_path, monkeypatch):
    """A sweep of 6 runs does not fit side by side in 80 columns: say so, then one column per run for
    delta_norm and one row per run, never a wall of markdown."""
    sweep = tmp_path / "sweep-depth"
    sweep.mkdir()
    names = [f"run{i}-20990101-000000-000{i}" for i in range(6)]
    for n in names:
        shutil.copytree(run_dir(root, "deep"), sweep / n)
    (sweep / "sweep.csv").write_text("run_dir\n" + "\n".join(names) + "\n")
    monkeypatch.setenv("COLUMNS", "80")
    r = cli("compare", sweep)
    assert r.exit_code == 0, r.output
    lines = narrow(r.output)
    assert lines[0].startswith("6 runs do not fit side by side in 80 columns:")
    assert "|---" not in r.output and "**" not in r.output
    header = next(ln for ln in lines if ln.startswith("layer"))
    assert header.replace("┃", " ").split() == ["layer", *"ABCDEF"]     # delta_norm, a column per run
    assert sum(ln.split("│")[0].strip() in "ABCDEF" and "run" in ln for ln in lines if "│" in ln) == 6


def test_two_runs_fit_at_80_columns_without_a_hint(cli, root, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    r = cli("compare", "shallow", "deep", "--runs-dir", root)
    assert r.exit_code == 0 and "do not fit" not in r.output and "wider than" not in r.output
    assert r.output.startswith("per-layer gradient at the first logged step")


def test_runs_list_keeps_numbers_whole_at_80_columns(cli, root, monkeypatch):
    from vgrad_cli.report.console import fmt

    monkeypatch.setenv("COLUMNS", "80")
    r = cli("runs", "--runs-dir", root)
    narrow(r.output)
    for d in root.iterdir():
        s = json.loads((d / "summary.json").read_text())
        row = next(ln for ln in r.output.splitlines() if ln.startswith(d.name[:20]))
        assert row.split("│")[-1].strip() == fmt(s["final_loss"]) and f"{s['steps_completed']}/" in row


def tiny_transformer(name):
    return validate(small(name=name, model={"kind": "transformer", "activation": None, "depth": 4, "width": 16,
                                            "heads": 2},
                          task={"name": "adding", "seq_len": 6, "train_size": 64, "eval_size": 32},
                          train={"steps": 2}, log={"every": 1, "eval_every": 2}))


def test_ratio_rows_name_the_ends_the_verdict_compares(cli, root, tmp_path):
    """A transformer's ratios are block0/last block (verdict.ends_label), not layer 0/output."""
    run_experiment(tiny_transformer("tfm-a"), tmp_path)
    run_experiment(tiny_transformer("tfm-b"), tmp_path)
    shutil.copytree(run_dir(root, "shallow"), tmp_path / run_dir(root, "shallow").name)
    alike = cli("compare", "tfm-a", "tfm-b", "--runs-dir", tmp_path, "--format", "markdown").stdout
    assert "| delta_norm block0/block3, first |" in alike and "0/out" not in alike
    mixed = cli("compare", "tfm-a", "shallow", "--runs-dir", tmp_path, "--format", "markdown").stdout
    row = next(ln for ln in mixed.splitlines() if ln.startswith("| delta_norm ends, first |"))
    assert "(block0/block3)" in row and "(layer 0/output)" in row
    mlps = cli("compare", "shallow", "deep", "--runs-dir", root, "--format", "markdown").stdout
    assert "| delta_norm 0/out, first |" in mlps and "ends" not in mlps
