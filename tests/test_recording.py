"""One recording path: `vgrad run` and a hand-written loop with Monitor write the same tables, and
what Monitor gained from `vgrad run` (time.csv, log_metrics, a final step without an update, the
non-finite check up to the last step) works in a user's loop."""

import csv
import json
import math

import pytest
import torch

from conftest import small
from vgrad_cli import Monitor
from vgrad_cli.config import validate
from vgrad_cli.models import build_model
from vgrad_cli.rundir.files import read_table
from vgrad_cli.tasks.losses import LOSSES
from vgrad_cli.threads import torch_threads
from vgrad_cli.training.runner import run_experiment


def table(run, name, drop=("time_s",)) -> list[list[str]]:
    """A CSV file's cells as text, without the timing column (the only one that differs)."""
    with open(run / name, newline="") as f:
        rows = list(csv.reader(f))
    keep = [i for i, c in enumerate(rows[0]) if c not in drop]
    return [[r[i] for i in keep] for r in rows]


def users_loop(cfg, out, name):
    """The same training as `vgrad run` would do, written the way a user would, around Monitor."""
    task = cfg.task.make(cfg.seed)
    model = build_model(cfg.model, task, cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    loss_fn = LOSSES[task.loss]
    batches = torch.Generator().manual_seed(cfg.seed + 1)
    steps, every = cfg.train.steps, cfg.log.every
    with Monitor(model, optimizer=opt, out=out, name=name, every=lambda s: s % every == 0 or s == steps,
                 on_problem=None, plots=False, steps=steps, clip_norm=cfg.train.clip_norm) as mon:
        for step in range(steps + 1):
            idx = torch.randint(len(task.x_train), (cfg.train.batch_size,), generator=batches)
            x, y = task.x_train[idx], task.y_train[idx]
            out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            mon.step(loss)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm, foreach=True)
            if mon.measuring:
                if task.loss == "cross_entropy":
                    mon.log_metrics(accuracy=(out.argmax(-1) == y).float().mean())
                if step % cfg.log.eval_every == 0 or step == steps:
                    with torch.no_grad():
                        model.eval()
                        ev = model(task.x_eval)
                        model.train()
                    mon.log_metrics(eval_loss=loss_fn(ev, task.y_eval))
                    if task.loss == "cross_entropy":
                        mon.log_metrics(eval_accuracy=(ev.argmax(-1) == task.y_eval).float().mean())
            if step < steps:
                opt.step()
    return mon.path


@pytest.mark.parametrize("model, task", [
    ({"kind": "mlp", "depth": 4, "width": 16, "activation": "sigmoid", "norm": "batch"}, {"name": "blobs"}),
    ({"kind": "lstm", "depth": 2, "width": 8, "activation": None}, {"name": "adding", "seq_len": 6}),
])
def test_vgrad_run_and_a_users_loop_with_monitor_write_identical_tables(tmp_path, model, task):
    cfg = validate(small(model=model, task={**task, "train_size": 128, "eval_size": 64},
                         train={"steps": 12, "optimizer": "adam", "lr": 0.01, "clip_norm": 0.5},
                         log={"every": 5, "eval_every": 10}))
    run_dir, summary = run_experiment(cfg, tmp_path / "run")
    with torch_threads(cfg.train.cpu_threads):  # as vgrad run: another thread count sums in another order
        mine = users_loop(cfg, tmp_path / "mine", "mine")
    names = ["layers.csv", "metrics.csv"] + (["time.csv"] if model["kind"] == "lstm" else [])
    for name in names:
        assert table(mine, name) == table(run_dir, name), name
    assert (mine / "time.csv").is_file() == (model["kind"] == "lstm")
    steps = sorted({r["step"] for r in read_table(mine, "layers.csv")})
    assert steps == [0, 5, 10, 12]  # step 12: measured, no update (update_ratio empty)
    last = [r for r in read_table(mine, "layers.csv") if r["step"] == 12]
    assert all(r["update_ratio"] is None for r in last)
    theirs = json.loads((mine / "summary.json").read_text())
    # (not the verdict: "underfitting" reads the task's input-blind baseline, which only vgrad run knows)
    for key in ("final_loss", "final_eval_loss", "final_accuracy", "delta_norm_ratio_first_step",
                "grad_norm_total_growth", "steps_completed", "first_logged_step", "last_logged_step"):
        assert theirs[key] == summary[key], key


def sequential(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x, y = torch.randn(32, 4), torch.randint(3, (32,))
    return model, x, y, torch.optim.SGD(model.parameters(), lr=0.1)


def backward(model, x, y, opt, mon, scale=1.0):
    """Forward, backward and mon.step(loss): the part of a user's step before the update."""
    loss = torch.nn.functional.cross_entropy(model(x), y) * scale
    opt.zero_grad()
    loss.backward()
    mon.step(loss)
    return loss


def test_log_metrics_fills_the_row_adds_columns_and_shows_in_show_and_the_loss_plot(tmp_path, cli):
    from vgrad_cli.rundir.store import load_run

    model, x, y, opt = sequential()
    with Monitor(model, optimizer=opt, out=tmp_path, name="mine", every=4, on_problem=None) as mon:
        for step in range(9):
            loss = backward(model, x, y, opt, mon)
            opt.step()
            if step % 3 == 2:  # after the update: the model of the next step; logged or not
                mon.log_metrics(eval_loss=loss.detach() * 0 + 0.5 + step / 100, val_perplexity=7.0 + step)
    m = read_table(mon.path, "metrics.csv")
    assert list(m[0]) == ["step", "loss", "accuracy", "grad_norm_total", "grad_norm_clipped", "eval_loss",
                          "eval_accuracy", "lr", "time_s", "val_perplexity"]
    by_step = {r["step"]: r for r in m}
    # logged steps 0, 4, 8; figures logged at steps 3, 6, 9 (after updates 2, 5, 8): 3 and 6 are rows
    # of their own (with their loss), 9 comes after the last logged step and is written at close()
    assert sorted(by_step) == [0, 3, 4, 6, 8, 9]
    assert by_step[3]["eval_loss"] == pytest.approx(0.52) and by_step[3]["val_perplexity"] == 9.0
    assert by_step[3]["loss"] is not None and by_step[3]["grad_norm_total"] is None
    assert by_step[9]["loss"] is None and by_step[9]["eval_loss"] == pytest.approx(0.58)
    assert by_step[4]["eval_loss"] is None and by_step[4]["lr"] == 0.1
    summary = json.loads((mon.path / "summary.json").read_text())
    assert summary["final_eval_loss"] == pytest.approx(0.58) and summary["status"] == "completed"
    res = cli("show", mon.path)
    assert res.exit_code == 0 and "eval loss 0.58" in res.output
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vgrad_cli.report.plots import draw_loss

    fig, ax = plt.subplots()
    draw_loss(ax, load_run(mon.path))
    (evals,) = [line for line in ax.get_lines() if line.get_label() == "eval"]
    assert list(evals.get_xdata()) == [3, 6, 9]
    plt.close(fig)


def test_log_metrics_rejects_what_is_not_a_column_or_a_number(tmp_path):
    model, _, _, _ = sequential()
    with Monitor(model, out=tmp_path, plots=False) as mon:
        for bad, msg in (({"grad_norm_total": 1.0}, "vgrad measures"), ({"a,b": 1.0}, "cannot be a metrics.csv column"),
                         ({"eval_loss": "low"}, "must be a number"), ({"eval_loss": torch.ones(3)}, "one number")):
            with pytest.raises(ValueError, match=msg):
                mon.log_metrics(**bad)


def test_finish_step_records_a_measured_step_without_an_update(tmp_path):
    model, x, y, opt = sequential()
    with Monitor(model, optimizer=opt, out=tmp_path, every=1, on_problem=None, plots=False) as mon:
        for step in range(3):
            backward(model, x, y, opt, mon)
            if step < 2:
                opt.step()
            else:
                mon.finish_step()  # an evaluation-only pass: no update follows
    rows = read_table(mon.path, "layers.csv")
    assert sorted({r["step"] for r in rows}) == [0, 1, 2]
    assert all(r["update_ratio"] is None for r in rows if r["step"] == 2)
    assert all(r["update_ratio"] > 0 for r in rows if r["step"] < 2)
    assert json.loads((mon.path / "summary.json").read_text())["steps_completed"] == 2


def test_a_non_finite_loss_after_the_last_logged_step_is_caught_at_close(tmp_path):
    model, x, y, opt = sequential()
    with Monitor(model, optimizer=opt, out=tmp_path, every=5, on_problem=None, plots=False) as mon:
        for step in range(8):
            loss = backward(model, x, y, opt, mon, math.inf if step == 6 else 1.0)
            if not torch.isfinite(loss):
                break  # the user's loop stops on a non-finite loss, before any logged step reads it
            opt.step()
    summary = json.loads((mon.path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] == 6 and summary["verdict"] == "exploding"
    assert sorted({r["step"] for r in read_table(mon.path, "layers.csv")}) == [0, 5]  # the finite rows stay


def test_a_failing_run_keeps_its_rows_and_says_why(tmp_path):
    model, x, y, opt = sequential()
    with pytest.raises(RuntimeError, match="disk on fire"):
        with Monitor(model, optimizer=opt, out=tmp_path, every=1, on_problem=None, plots=False) as mon:
            for step in range(3):
                backward(model, x, y, opt, mon)
                opt.step()
                if step == 1:
                    raise RuntimeError("disk on fire")
    summary = json.loads((mon.path / "summary.json").read_text())
    assert summary["status"] == "failed" and "disk on fire" in summary["error"] and "Traceback" in summary["traceback"]
    assert sorted({r["step"] for r in read_table(mon.path, "layers.csv")}) == [0, 1]
