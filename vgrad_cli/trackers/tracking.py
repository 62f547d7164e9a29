"""One logged step, sent to every tracker: the names, the fan-out, and what `log_to` may be.

Each logged step becomes a flat {tag: number} dict — `vgrad/<column>/<row>` for every numeric
layers.csv column of every row (`vgrad/grad_norm/block3`), `vgrad/<column>` for the step's
metrics.csv figures (`vgrad/loss`) — so every tracker groups a column's rows in one section. Empty
and non-finite values are not sent (a tracker has no "empty"; a NaN loss is the divergence the
warnings and the verdict report). Two texts go with them: each warning, on the step it showed, and
the verdict at the end.

A sink is any object with log(step, scalars), text(step, tag, text) and close(). A tracker that
fails (a network hiccup, a full disk) must not end the training it watches: its error is printed
once on stderr and that sink is dropped; the run and the other sinks go on.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from .. import vocab as V

_NOT_SENT = {"step", "layer", "name", "time_s"}   # the row's key, and the one column that differs between identical runs
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")      # what MLflow refuses in a key; the same keys everywhere


def tag(*parts: str) -> str:
    """vgrad/<column>[/<row>]: a row named with other characters (a layers={...} group) gets _ there."""
    return "/".join([V.TRACKER_PREFIX, *(_UNSAFE.sub("_", str(p)) for p in parts)])


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def scalars(metrics: dict, rows: list[dict]) -> dict[str, float]:
    """A logged step as {tag: value}: the rows' columns, then the step's own figures."""
    out = {tag(col, r["name"]): float(v) for r in rows for col, v in r.items() if col not in _NOT_SENT and _number(v)}
    out.update({tag(col): float(v) for col, v in metrics.items() if col not in _NOT_SENT and _number(v)})
    return out


class Tracking:
    """Every sink of one run. modules: send the module rows (layers.csv) instead of the run's view."""

    def __init__(self, sinks: list, modules: bool = False):
        self.sinks, self.modules = list(sinks), modules

    @classmethod
    def to(cls, log_to, run_dir: Path | None, modules: bool = False) -> Tracking:
        return cls(make_sinks(log_to, run_dir), modules)

    def log(self, step: int, metrics: dict, rows: list[dict]) -> None:
        values = scalars(metrics, rows)
        self._each(lambda s: s.log(step, values))

    def warn(self, step: int, message: str) -> None:
        self._each(lambda s: s.text(step, V.TRACKER_WARNINGS, message))

    def finish(self, summary: dict) -> None:
        """The verdict, at the last logged step, then every sink closed (the user's own writer or run
        is flushed, not closed: it is theirs)."""
        if summary.get("verdict") is not None:
            text = f"{summary['verdict']} — {summary.get('verdict_reason') or ''}".rstrip(" —")
            self._each(lambda s: s.text(summary.get("last_logged_step") or 0, V.TRACKER_VERDICT, text))
        self._each(lambda s: s.close())
        self.sinks = []

    def _each(self, call) -> None:
        for sink in list(self.sinks):
            try:
                call(sink)
            except Exception as e:  # a tracker's trouble is not the training's
                self.sinks.remove(sink)
                print(f"vgrad: stopped sending to {type(sink).__name__}: {type(e).__name__}: {e}", file=sys.stderr)


def make_sinks(log_to, run_dir: Path | None) -> list:
    """log_to -> sinks. One of, or a list of: "tensorboard" (event files in <run dir>/tensorboard/),
    a directory (str or Path: TensorBoard event files there), a torch SummaryWriter, "wandb" (the
    active W&B run) or a wandb Run, "mlflow" (the active MLflow run), a Lightning logger (anything
    with log_metrics(metrics, step)), or a sink of your own. Bad values: ValueError, before training."""
    from . import sinks as S

    if isinstance(log_to, (list, tuple)):
        return [s for item in log_to for s in make_sinks(item, run_dir)]
    if log_to == "tensorboard":
        if run_dir is None:
            raise ValueError("log_to='tensorboard' writes into the run directory; give a directory instead")
        return [S.TensorBoardSink(Path(run_dir) / V.TRACKER_DIR)]
    if log_to == "wandb":
        return [S.WandbSink()]
    if log_to == "mlflow":
        return [S.MlflowSink()]
    if isinstance(log_to, (str, Path)):
        return [S.TensorBoardSink(Path(log_to))]
    if all(callable(getattr(log_to, m, None)) for m in ("log", "text", "close")):
        return [log_to]  # a sink already (the callbacks' own, or the user's)
    if callable(getattr(log_to, "add_scalar", None)):
        return [S.TensorBoardSink(log_to)]
    if callable(getattr(log_to, "log_metrics", None)):
        return [S.LoggerSink(log_to)]
    if callable(getattr(log_to, "define_metric", None)):
        return [S.WandbSink(log_to)]
    raise ValueError(f"log_to: cannot send to {type(log_to).__name__}; give {', '.join(map(repr, V.TRACKERS))}, "
                     "a TensorBoard directory or SummaryWriter, a wandb run, a Lightning logger, or a list of these")
