"""`vgrad story`: chapters x seeds end to end (real runs, tiny configs), story.csv and story.md, naming
chapters, bad input, Ctrl-C. No assertion depends on a training outcome near a threshold."""

import csv
import json
import math

import pytest
import yaml

from conftest import CONFIGS, small
from vgrad_cli.story.chapters import Chapter, describe, find_chapters, select
from vgrad_cli.story.report import COLUMNS, FIGURES, median


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_chapters(folder):
    """Three tiny chapters: an MLP, a recurrent net, and one that diverges at once (lr 1e4)."""
    folder.mkdir()
    chapters = {
        "01_tiny_mlp": ("# expect-at-init: healthy\n# Chapter 1 — a small tanh MLP.\n", small()),
        "02_tiny_rnn": ("# Chapter 2 — a small RNN on the adding problem, whose first line goes on\n"
                        "# into the second. Not this one.\n",
                        small(model={"kind": "rnn", "depth": 1, "width": 8, "activation": "tanh", "init": "default"},
                              task={"name": "adding", "seq_len": 8, "train_size": 128, "eval_size": 64})),
        "03_blows_up": ("", small(model={"activation": "relu", "init": "kaiming_normal"}, train={"lr": 1e4})),
    }
    for stem, (header, data) in chapters.items():
        (folder / f"{stem}.yaml").write_text(header + yaml.safe_dump(data), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """One story over the three tiny chapters with 2 seeds (shared: it is the slow part)."""
    from typer.testing import CliRunner

    from vgrad_cli.cli.main import app

    tmp = tmp_path_factory.mktemp("story")
    configs = write_chapters(tmp / "configs")
    out = tmp / "story"
    res = CliRunner().invoke(app, ["story", "--configs", str(configs), "--seeds", "2", "--workers", "2",
                                   "--out", str(out)], env={"COLUMNS": "80"})
    return {"res": res, "out": out, "configs": configs}


@pytest.mark.slow
def test_story_csv_has_a_row_per_chapter_with_counts_and_ranges(story):
    assert story["res"].exit_code == 0, story["res"].output
    out = story["out"]
    rows = read_csv(out / "story.csv")
    assert list(rows[0]) == COLUMNS
    assert [r["chapter"] for r in rows] == ["01_tiny_mlp", "02_tiny_rnn", "03_blows_up"]
    by = {r["chapter"]: r for r in rows}
    assert [by[c]["kind"] for c in by] == ["mlp", "rnn", "mlp"]
    for r in rows:
        assert r["seeds"] == "2"
        assert sum(int(r[s]) for s in ("completed", "diverged", "failed", "interrupted")) == 2
        verdict_runs = sum(int(part.rsplit("(", 1)[1].split("/")[0]) for part in r["verdicts"].split(", "))
        assert verdict_runs == int(r["completed"]) + int(r["diverged"])
        for figure in FIGURES:
            lo, mid, hi = (r[f"{figure}_{s}"] for s in ("min", "median", "max"))
            assert (lo == "") == (mid == "") == (hi == "")
            if mid:
                assert float(lo) <= float(mid) <= float(hi), (r["chapter"], figure)
    assert by["03_blows_up"]["diverged"] == "2" and by["03_blows_up"]["verdicts"] == "exploding (2/2)"
    # end-of-run figures come from completed runs only: a chapter with none leaves them empty
    assert by["03_blows_up"]["final_eval_accuracy_median"] == "" and by["03_blows_up"]["diverged_step_min"] != ""
    assert by["02_tiny_rnn"]["time_ratio_first_step_median"] != ""
    assert by["01_tiny_mlp"]["time_ratio_first_step_median"] == ""
    assert by["02_tiny_rnn"]["final_eval_accuracy_median"] == "" and by["02_tiny_rnn"]["final_eval_loss_median"] != ""
    assert by["01_tiny_mlp"]["shows"] == "a small tanh MLP."
    assert by["02_tiny_rnn"]["shows"] == "a small RNN on the adding problem, whose first line goes on into the second."


def test_story_figures_are_exact_medians_of_the_runs(story):
    """story.csv against each run's summary.json: seeds are the config's own, then +1; numbers exact."""
    out = story["out"]
    runs = read_csv(out / "sweep.csv")
    assert len(runs) == 6
    summaries = {}
    for r in runs:
        s = json.loads((out / r["run_dir"] / "summary.json").read_text())
        summaries.setdefault(r["chapter"], []).append(s)
    own = small()["seed"]  # the config's seed (VGRAD_TEST_SEED moves it)
    assert sorted(s["seed"] for s in summaries["01_tiny_mlp"]) == [own, own + 1]
    row = {r["chapter"]: r for r in read_csv(out / "story.csv")}["01_tiny_mlp"]
    values = [s["delta_norm_ratio_first_step"] for s in summaries["01_tiny_mlp"]]
    assert float(row["delta_norm_ratio_first_step_median"]) == median(values, ratio=True)
    assert float(row["delta_norm_ratio_first_step_min"]) == min(values)
    assert float(row["final_eval_accuracy_max"]) == max(s["final_eval_accuracy"] for s in summaries["01_tiny_mlp"])


def test_story_md_and_console_show_the_tables(story):
    out, output = story["out"], story["res"].output
    md = (out / "story.md").read_text()
    assert "2 seeds" in md and "Measured on" in md and "torch 2." in md
    assert "| chapter | what it shows | delta ratio, step 0 |" in md
    assert "| chapter | what it shows | through-time ratio, step 0 |" in md
    for stem in ("01_tiny_mlp", "02_tiny_rnn", "03_blows_up"):
        assert f"| `{stem}` |" in md
        assert (out / "figures" / f"{stem}.png").stat().st_size > 5_000
        assert f"](figures/{stem}.png)" in md
    assert "2 diverged at step" in md and "exploding (2/2)" in md
    assert "[6/6]" in output and "story.md" in output
    # COLUMNS=80 is kept to, in a pipe too: the medians alone (ranges: story.md), prose wrapped
    assert all(len(line) <= 80 for line in output.splitlines()), output
    table_lines = [line for line in output.splitlines() if line.startswith(("01_tiny_mlp", "02_tiny_rnn"))]
    assert len(table_lines) == 2 and not any("[" in line for line in table_lines) and "(ranges: story.md)" in output


@pytest.mark.slow
def test_bundled_chapters_by_number_and_stem_from_anywhere(cli, tmp_path, monkeypatch):
    """Without --configs and outside a checkout, the configs/ beside the package; seeds from the config."""
    monkeypatch.chdir(tmp_path)
    res = cli("story", "3", "01_deep_sigmoid", "--seeds", "2", "--steps", "2", "--workers", "2", "--no-plots")
    assert res.exit_code == 0, res.output
    (story,) = (tmp_path / "runs").iterdir()
    assert story.name.startswith("story-")
    rows = read_csv(story / "story.csv")
    assert [r["chapter"] for r in rows] == ["01_deep_sigmoid", "03_relu_kaiming"]  # story order
    assert all(r["completed"] == "2" for r in rows)
    runs = read_csv(story / "sweep.csv")
    assert sorted((r["chapter"], r["seed"]) for r in runs) == [
        ("01_deep_sigmoid", "0"), ("01_deep_sigmoid", "1"), ("03_relu_kaiming", "0"), ("03_relu_kaiming", "1")]
    assert not (story / "figures").exists()
    assert "--steps 2" in (story / "story.md").read_text()


def test_chapters_are_named_by_number_stem_or_name():
    chapters = find_chapters(CONFIGS)
    assert [c.stem for c in select(chapters, ["1"])] == ["01_deep_sigmoid"]
    assert [c.stem for c in select(chapters, ["17", "01", "deep_sigmoid", "09_exploding"])] == [
        "01_deep_sigmoid", "09_exploding", "17_rnn_exploding_clipped"]
    assert len(select(chapters, [])) == len(chapters) == len(list(CONFIGS.glob("*.yaml"))) >= 17
    from vgrad_cli.errors import UsageError

    with pytest.raises(UsageError, match="unknown chapter '99'.*01_deep_sigmoid, 02_deep_tanh"):
        select(chapters, ["99"])
    assert [c.stem for c in select([Chapter("my_story", CONFIGS / "z")], ["my_story"])] == ["my_story"]
    with pytest.raises(UsageError, match="unknown chapter 'story'"):  # only a number prefix may be left out
        select([Chapter("my_story", CONFIGS / "z")], ["story"])
    twins = [Chapter("01_a", CONFIGS / "x"), Chapter("01_b", CONFIGS / "y")]
    with pytest.raises(UsageError, match="ambiguous: 01_a, 01_b"):
        select(twins, ["01"])


def test_every_bundled_chapter_says_what_it_shows():
    for path in sorted(CONFIGS.glob("*.yaml")):
        shows = describe(path.read_text())
        assert 10 < len(shows) <= 160 and not shows.startswith(("Chapter", "expect")), (path.name, shows)


def test_median_of_ratios_is_geometric_for_an_even_count():
    assert median([3.0, 1.0, 2.0], ratio=True) == 2.0
    assert median([1e-13, 1e-11], ratio=True) == pytest.approx(1e-12)
    assert median([0.2, 0.4], ratio=False) == pytest.approx(0.3)
    assert median([0.0, 1.0], ratio=True) == 0.5  # a 0 ratio (float underflow) has no logarithm
    assert math.isinf(median([1.0, math.inf, math.inf], ratio=True))


@pytest.mark.parametrize("args, message", [
    (["99"], "unknown chapter '99'; name one by number (e.g. 01) or file stem, one of: 01_deep_sigmoid,"),
    (["01", "--seeds", "0"], "--seeds must be >= 1 (got 0)"),
    (["01", "--workers", "0"], "--workers must be >= 1 (got 0)"),
    (["01", "--steps", "0"], "--steps 0: train.steps: must be >= 1"),
    (["01", "--configs", "nowhere"], "--configs 'nowhere' is not a folder"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    res = cli("story", *args, "--out", tmp_path / "story")
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert list(tmp_path.iterdir()) == []


def test_an_existing_story_is_never_overwritten(cli, tmp_path):
    old = tmp_path / "story"
    old.mkdir()
    (old / "story.csv").write_text("kept\n")
    res = cli("story", "01", "--out", old)
    assert res.exit_code == 2 and "--out" in res.output and "is not empty" in res.output
    assert [p.name for p in old.iterdir()] == ["story.csv"] and (old / "story.csv").read_text() == "kept\n"


def test_ctrl_c_keeps_the_finished_runs_and_exits_130(cli, tmp_path, monkeypatch):
    """The executor runs one job, then Ctrl-C arrives: the story covers that run and says so."""
    from vgrad_cli.config import validate
    from vgrad_cli.sweep import executors
    from vgrad_cli.training.runner import run_experiment

    class OneThenCtrlC:
        workers = 1

        def __init__(self, workers):
            pass

        def describe(self):
            return "one job, then Ctrl-C"

        def run(self, jobs, directory, on_result):
            index, config = jobs[0]
            run_dir, _ = run_experiment(validate(config), directory)
            on_result(index, run_dir, None)
            raise KeyboardInterrupt

    monkeypatch.setattr(executors, "LocalExecutor", OneThenCtrlC)
    res = cli("story", "01", "03", "--seeds", "2", "--steps", "2", "--out", tmp_path / "s", "--no-plots")
    assert res.exit_code == 130, res.output
    assert "interrupted: 1 of 4 runs finished" in res.output
    rows = {r["chapter"]: r for r in read_csv(tmp_path / "s" / "story.csv")}
    assert rows["01_deep_sigmoid"]["completed"] == "1" and rows["03_relu_kaiming"]["completed"] == "0"
    assert "1 completed, 1 not run" in (tmp_path / "s" / "story.md").read_text()


def test_docs_describe_every_story_csv_column():
    from conftest import ROOT

    text = (ROOT / "docs" / "story.md").read_text()
    for col in COLUMNS:
        if not col.endswith(("_min", "_max")):  # documented as `<figure>_median`, `_min`, `_max`
            assert f"`{col}`" in text, col
