"""`vgrad export`: a finished run (vgrad run's or a Monitor's) sent to a tracker afterwards, as
Monitor(log_to=...) would have sent it while it trained: the same Tracking, fed the same rows.

Every finite logged step goes out with its layers.csv rows (the run's view, or the module rows) and
its metrics.csv row; the warnings come from the same Watch that prints them during training (as
with on_problem="warn"); the verdict is summary.json's. One tracker run per vgrad run:
    tensorboard: event files in DIR/<run name>/
    mlflow:      a run named <run name> in experiment `experiment` of the store DIR (a file store) or URI
    wandb:       a run named <run name> in project `project`, its files under DIR (offline with WANDB_MODE=offline)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .. import vocab as V
from ..errors import UsageError
from .watch import Watch


def export(run_dir: Path, to: str, target: str, modules: bool = False, project: str = "vgrad",
           experiment: str = "vgrad") -> str:
    """Send one run; returns where it went (a directory, an MLflow run id, a W&B run's directory)."""
    from ..rundir.store import load_run
    from ..trackers.tracking import Tracking

    run = load_run(run_dir)
    if to not in V.TRACKERS:
        raise UsageError(f"--to must be one of {', '.join(V.TRACKERS)}, not '{to}'")
    try:
        sink, where, end = _open(run, to, target, project, experiment)
    except ImportError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"cannot write to '{target}': {e.strerror or e}") from None
    tracking = Tracking([sink], modules)
    watch = Watch(None, notify=tracking.warn, kind=(run.config.get("model") or {}).get("kind"))
    metrics = {m["step"]: m for m in run.metrics}
    diverged = run.summary.get("diverged_step") if run.status == V.DIVERGED else None
    for step in run.steps:
        view, units = run.layer_rows(step), run.module_layer_rows(step) if run.modules is not None else None
        m = metrics.get(step, {"step": step})
        tracking.log(step, m, run.module_layer_rows(step) if modules else view)
        watch.check(step, view, m, None, run.path, units)
    if diverged is not None:  # a live run is told at the step that went non-finite, which sends no figures
        watch.check(diverged, [], {}, diverged, run.path)
    tracking.finish(run.summary)
    end()
    return where


def _open(run, to: str, target: str, project: str, experiment: str):
    """(sink, where it went, what ends the tracker's run)."""
    from ..trackers import sinks as S

    if to == "tensorboard":
        path = Path(target) / run.name
        return S.TensorBoardSink(path), str(path), lambda: None
    if to == "mlflow":
        mlflow = S.need("mlflow", "mlflow")
        uri = target if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", target) else Path(target).resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 asks for this before it uses a plain directory as its store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found is not None else client.create_experiment(experiment)
        run_id = client.create_run(exp_id, run_name=run.name, tags={"vgrad.run_dir": str(run.path.resolve()),
                                                                     "vgrad.status": run.status}).info.run_id
        status = "FINISHED" if run.status in V.FINAL else "FAILED" if run.status == V.FAILED else "KILLED"
        return S.MlflowSink(client, run_id), f"{uri} run {run_id}", lambda: client.set_terminated(run_id, status)
    wandb = S.need("wandb", "wandb")
    Path(target).mkdir(parents=True, exist_ok=True)
    try:
        wrun = wandb.init(project=project, name=run.name, dir=str(target), config=run.config, reinit="create_new")
    except wandb.Error as e:  # e.g. not logged in, no terminal to ask on
        raise UsageError(f"wandb could not start a run: {e} (without an account: WANDB_MODE=offline)") from None
    return S.WandbSink(wrun), str(Path(wrun.dir).parent), wrun.finish
