"""One class per tracker: log(step, scalars), text(step, tag, text), close().

Each imports its library when it is made, and says which extra installs it when that fails. A sink
made over the user's own object (their SummaryWriter, W&B run, Lightning logger) flushes it at the
end but never closes it: the user keeps logging to it.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import vocab as V


def need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"sending to {extra} needs {module.split('.')[0]}: pip install 'vgrad[{extra}]'") from e


class TextLog:
    """For a tracker that keeps one value per text tag (a W&B summary key, an MLflow artifact): each
    new warning is added to the ones before it, one line each, with its step; the verdict replaces."""

    def __init__(self):
        self.lines: dict[str, list[str]] = {}

    def add(self, step: int, tag: str, text: str) -> str:
        if tag == V.TRACKER_VERDICT:
            return text
        self.lines.setdefault(tag, []).append(f"step {step}: {text}")
        return "\n".join(self.lines[tag])


class TensorBoardSink:
    """torch's SummaryWriter (event files TensorBoard reads): scalars per step, texts per step."""

    def __init__(self, target):
        if isinstance(target, (str, Path)):
            need("tensorboard", "tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self.writer, self.own = SummaryWriter(log_dir=str(target)), True
        else:
            self.writer, self.own = target, False

    def log(self, step: int, scalars: dict) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # logged steps are few: a view of the run as it trains is worth a flush each

    def text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, global_step=step)

    def close(self) -> None:
        self.writer.flush()
        if self.own:
            self.writer.close()


class WandbSink:
    """A W&B run (the active one by default): every vgrad/* key against vgrad/step, so that the
    user's own wandb.log() calls keep their step and neither drops the other's rows; texts go into
    the run's summary (vgrad/verdict, vgrad/warnings)."""

    def __init__(self, run=None):
        wandb = need("wandb", "wandb") if run is None else None
        self.run = run if run is not None else wandb.run
        if self.run is None:
            raise ValueError("log_to='wandb' sends to the active W&B run: call wandb.init(...) first")
        self.texts = TextLog()
        self.run.define_metric(V.TRACKER_STEP)
        self.run.define_metric(f"{V.TRACKER_PREFIX}/*", step_metric=V.TRACKER_STEP)

    def log(self, step: int, scalars: dict) -> None:
        self.run.log({V.TRACKER_STEP: step, **scalars})

    def text(self, step: int, tag: str, text: str) -> None:
        self.run.summary[tag] = self.texts.add(step, tag, text)

    def close(self) -> None:
        pass  # the run is the user's (or export's) to finish


class MlflowSink:
    """An MLflow run (the active one by default): each logged step's figures in batches of 1000
    (log_batch's limit), at the step; texts as artifacts vgrad/verdict.txt and vgrad/warnings.txt."""

    BATCH = 1000

    def __init__(self, client=None, run_id: str | None = None):
        mlflow = need("mlflow", "mlflow")
        if run_id is None:
            run = mlflow.active_run()
            if run is None:
                raise ValueError("log_to='mlflow' sends to the active MLflow run: call mlflow.start_run() first")
            run_id = run.info.run_id
        self.client, self.run_id = client or mlflow.tracking.MlflowClient(), run_id
        self.texts = TextLog()

    def log(self, step: int, scalars: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in scalars.items()]
        for i in range(0, len(metrics), self.BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + self.BATCH])

    def text(self, step: int, tag: str, text: str) -> None:
        self.client.log_text(self.run_id, self.texts.add(step, tag, text), f"{tag}.txt")

    def close(self) -> None:
        pass  # the run is the user's (or export's) to end


class LoggerSink:
    """A Lightning logger (CSVLogger, TensorBoardLogger, WandbLogger, MLFlowLogger, ...): the scalars
    through its own log_metrics at the step; texts where its experiment takes them (TensorBoard's
    writer, a W&B run, an MLflow client), else only the scalars."""

    def __init__(self, logger):
        self.logger = logger
        self._text = None

    def log(self, step: int, scalars: dict) -> None:
        self.logger.log_metrics(scalars, step=step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self._text is None:
            self._text = self._text_sink() or False
        if self._text:
            self._text.text(step, tag, text)

    def _text_sink(self):
        exp = getattr(self.logger, "experiment", None)
        if callable(getattr(exp, "add_text", None)):
            return TensorBoardSink(exp)
        if callable(getattr(exp, "define_metric", None)):
            return WandbSink(exp)
        if callable(getattr(exp, "log_text", None)) and getattr(self.logger, "run_id", None):
            return MlflowSink(exp, self.logger.run_id)
        return None

    def close(self) -> None:
        self.logger.save()
