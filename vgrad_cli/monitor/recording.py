"""Recording: what a run leaves on disk, owned in one place.

A Monitor (the user's loop, and `vgrad run`'s) hands it each logged step as rows; it writes them
(layers.csv, metrics.csv, time.csv), keeps the first/last/largest figures the summary needs, checks
the losses for a non-finite value, and writes summary.json when the run starts and when it ends, with
the verdict. Every key it writes is listed in vocab.py; docs/run-format.md documents each.

Divergence. The first non-finite loss, on a logged step or between two, is the run's
`diverged_step`. Rows of later steps are never written (they are measured on a model that is
already NaN), and the step that went non-finite is written when it was logged: the tables end with
the evidence. A recording that can be replayed (`vgrad run`: the run is trained again from its seed)
leaves that step to the replay when the step before it is missing, so that the tables end with the
last finite step and the non-finite one, in order.

Skipped steps. A step a loss scaler skipped (its gradient overflowed; monitor/scaler.py) leaves a
metrics.csv row that says so and no layer rows; its loss, finite or not, is no divergence, unless
the skips persist: then the run diverged at the first of them.
"""

from __future__ import annotations

import math
import platform
import time
import traceback
from pathlib import Path

from .. import vocab as V
from ..rundir.files import RunWriter
from .scaler import PERSISTENT_SKIPS, SkipStreak


def versions() -> dict:
    import numpy
    import torch

    return {"vgrad": V.VERSION, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "platform": platform.platform()}


def _finite(v) -> bool:
    return v is None or math.isfinite(v)


class Recording:
    def __init__(self, out, name: str, config: dict, info: dict | None = None, on_log=None,
                 replayable: bool = False):
        """out/name: the run directory is out/<name>-<date>-<time>-<id>. config: config.yaml.
        info: the start keys only the caller knows (seed, the task's baseline, ...: vocab's
        SUMMARY_START_KEYS). on_log(step, metrics, rows): called for every finite step written.
        replayable: the caller trains the run again to measure what a divergence skipped."""
        self.started = time.time()
        self.writer = RunWriter(out, name)
        self.path: Path = self.writer.path
        self.kind = (config.get("model") or {}).get("kind")
        self.on_log, self.replayable = on_log, replayable
        self.tracking = None  # trackers (Monitor's log_to): fed every finite step written, told the verdict
        self.write_config(config)
        start = {"schema_version": V.SCHEMA_VERSION, "name": name, "source": config.get("source", V.SOURCE_RUN),
                 "status": V.RUNNING, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
                 "versions": versions(), **(info or {})}
        self.summary = {k: start.get(k) for k in V.SUMMARY_START_KEYS}
        self.writer.write_summary(self.summary)
        self._layers = self.writer.table(V.LAYERS_CSV, V.LAYER_COLUMNS)
        self._metrics = self.writer.table(V.METRICS_CSV, V.METRIC_COLUMNS)
        self._time = None  # made at the first step with hidden states through time
        self._blocks = None  # made at the first step with a block view
        self._steps, self._last_step_row = None, -1  # steps.csv: made at the first logged step
        self.last_written = -1        # the last step whose rows are in the tables
        self.diverged_step: int | None = None
        self.first = self.last = None  # (rows, metrics, time rows) of the first / last finite step written
        self.last_eval: dict = {}      # the last finite row with held-out figures
        self.max_total: float | None = None
        self.first_nonfinite: dict | None = None  # where a NaN first appeared (monitor/nonfinite.py)
        self.skips = SkipStreak()
        self.divergence: str | None = None  # what the divergence was, when not a non-finite loss

    def track(self, log_to, log_modules: bool = False):
        """Trackers (Monitor's log_to) fed every finite step written and told the verdict; returns them.
        A tracker that cannot start ends the run "failed" (not "running") and raises."""
        from ..trackers.tracking import Tracking

        try:
            self.tracking = Tracking.to(log_to, self.path, log_modules)
        except Exception as e:
            self.finish(V.FAILED, 0, error=e)
            raise
        return self.tracking

    def write_config(self, config: dict):
        self.writer.write_config(config)

    @property
    def needs_replay(self) -> bool:
        """Diverged, and the step that went non-finite is not yet in the tables."""
        return self.replayable and self.diverged_step is not None and self.last_written != self.diverged_step

    # ------------------------------------------------------------------ a logged step
    def write(self, step: int, rows: list[dict], metrics: dict, time_rows: list[dict] | None = None,
              earlier: list[tuple[int, float]] = (), extra_rows: list[dict] = (), view: list[dict] | None = None,
              skipped: list[int] = ()) -> None:
        """One logged step: its layers.csv rows, metrics.csv row and time.csv rows. earlier: (step,
        loss) of the steps since the previous logged one; extra_rows: metrics.csv rows of those steps
        (the user's own figures, skipped steps), written before this step's. view: blocks.csv rows,
        for a model with repeated blocks: then the summary's figures, on_log and the verdict read
        them. skipped: the steps a loss scaler skipped among these."""
        self.check([*earlier, (step, metrics.get("loss"))], extra_rows, skipped)
        if metrics.get("skipped"):  # its gradient overflowed: the metrics row says so, no layer rows
            if self.last_written < step and (self.diverged_step is None or step <= self.diverged_step):
                self._append_metrics([metrics])
            return
        if step <= self.last_written:  # already in the tables (a replay measures its way up to the new steps)
            return
        if self.diverged_step is not None and (step > self.diverged_step or (
                self.replayable and self.last_written < step - 1)):
            return  # after the divergence nothing; the non-finite step itself is the replay's to write
        self._layers.append(rows)
        modules = rows
        if view is not None:
            if self._blocks is None:
                self._blocks = self.writer.table(V.BLOCKS_CSV, V.BLOCK_COLUMNS)
            self._blocks.append(view)
            rows = view  # what the run is read by
        self._append_metrics([metrics])
        if time_rows:
            if self._time is None:
                self._time = self.writer.table(V.TIME_CSV, V.TIME_COLUMNS)
            self._time.append(time_rows)
        self.last_written = step
        if not _finite(metrics.get("loss")):
            return  # the step that went non-finite: in the tables, not in the summary's figures
        if self.first is None:
            self.first = (rows, metrics, time_rows or [])
        self.last = (rows, metrics, time_rows or [])
        total = metrics.get("grad_norm_total")
        if total is not None and math.isfinite(total):
            self.max_total = max(self.max_total or 0.0, total)
        if metrics.get("eval_loss") is not None:
            self.last_eval = metrics
        if self.on_log is not None:
            self.on_log(step, metrics, rows)
        if self.tracking is not None:  # the run's view; the module rows on request (log_modules)
            self.tracking.log(step, metrics, modules if self.tracking.modules else rows)

    def check(self, losses: list[tuple[int, float]], extra_rows: list[dict] = (), skipped: list[int] = ()) -> None:
        """The non-finite check of (step, loss) pairs, in step order: the first non-finite one is the
        run's divergence (not on a step a loss scaler skipped, unless skips persist). extra_rows:
        metrics.csv rows of unlogged steps, kept up to that step."""
        bad = next((s for s, loss in losses if not _finite(loss) and s not in skipped), None)
        for s in sorted(skipped):
            start = self.skips.add(s)
            if start is not None and (bad is None or start < bad) and self.diverged_step is None:
                bad = start
                self.divergence = (f"the loss scaler skipped {PERSISTENT_SKIPS} steps in a row from step {start}: "
                                   "the gradient is non-finite at every scale")
        if bad is not None and self.diverged_step is None:
            self.diverged_step = bad
        kept = [r for r in extra_rows if r["step"] > self.last_written and
                (self.diverged_step is None or r["step"] <= self.diverged_step)]
        if kept:
            self._append_metrics(kept)
            self.last_eval = next((r for r in reversed(kept) if r.get("eval_loss") is not None), self.last_eval)

    def _append_metrics(self, rows: list[dict]):
        new = [k for r in rows for k in r if k not in self._metrics.columns]
        if new:  # the user's own figures (Monitor.log_metrics): the table gains their columns
            self._metrics.widen(list(dict.fromkeys(new)))
        self._metrics.append(rows)

    def note_nonfinite(self, finding: dict | None) -> None:
        """Where a NaN first appeared: the earliest finding is kept."""
        if finding is not None and (self.first_nonfinite is None or finding["step"] < self.first_nonfinite["step"]):
            self.first_nonfinite = finding

    def write_steps(self, rows: list[dict]):
        """steps.csv rows (the every-step tier), in step order; a step already written is skipped
        (a replay measures its way up again)."""
        rows = [r for r in rows if r["step"] > self._last_step_row]
        if not rows:
            return
        if self._steps is None:
            self._steps = self.writer.table(V.STEPS_CSV, V.STEP_COLUMNS)
        self._steps.append(rows)
        self._last_step_row = rows[-1]["step"]

    def add_table(self, name: str, columns: list[str], rows: list[dict]):
        """A table only the caller measures (vgrad run's layers_float64.csv, init_spread.csv)."""
        table = self.writer.table(name, columns)
        table.append(rows)
        table.close()

    # ------------------------------------------------------------------ the end
    def finish(self, status: str, steps_completed: int, notes: list[str] = (), float64: list[dict] | None = None,
               stop_signal: str | None = None, stop_reason: str | None = None, error: BaseException | None = None,
               **extra) -> dict:
        """summary.json's final keys, then the verdict (the rule `vgrad diagnose` uses, read back
        from the tables). extra: keys only the caller knows (init_spread). Returns the summary."""
        from ..analysis.verdict import first_last_ratio, ratios, sample_profile, time_ratios

        self.writer.close()
        first_rows, first_m, first_t = self.first or ([], {}, [])
        last_rows, last_m, last_t = self.last or ([], {}, [])
        first_total = first_m.get("grad_norm_total")
        out = {
            "status": status, "steps_completed": self.diverged_step if self.diverged_step is not None else steps_completed,
            "diverged_step": self.diverged_step, "stop_signal": stop_signal, "stop_reason": stop_reason,
            "final_loss": last_m.get("loss"), "final_accuracy": last_m.get("accuracy"),
            "final_eval_loss": self.last_eval.get("eval_loss"), "final_eval_accuracy": self.last_eval.get("eval_accuracy"),
            "wall_time_s": round(time.time() - self.started, 3),
            "first_logged_step": first_rows[0]["step"] if first_rows else None,
            "last_logged_step": last_rows[0]["step"] if last_rows else None,
            "n_layers": len(first_rows),
            "grad_norm_total_growth": self.max_total / first_total if first_total and self.max_total is not None else None,
            **ratios(first_rows, last_rows, float64, self.kind),
            **(time_ratios(first_t, last_t) if first_t else {}),
            "notes": list(notes), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        if float64:
            out["float64_init"] = {"delta_norm_ratio": first_last_ratio(float64, "delta_norm", self.kind),
                                   "grad_norm_ratio": first_last_ratio(float64, "grad_norm", self.kind)}
        if first_t:
            out["time_profile"] = sample_profile(first_t, last_t)
        if self.first_nonfinite is not None:
            out["first_nonfinite"] = self.first_nonfinite
        if error is not None:
            out["error"] = f"{type(error).__name__}: {error}"
            out["traceback"] = "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=8))
        out.update(extra)
        self.summary.update({k: out.get(k) for k in V.SUMMARY_FINAL_KEYS},
                            **{k: v for k, v in out.items() if k not in V.SUMMARY_FINAL_KEYS})
        self.writer.write_summary(self.summary)  # the figures are safe before the verdict reads the tables
        try:
            self.summary.update(judge(self.path, self.summary) if self.last_written >= 0 else
                                {"verdict": V.UNKNOWN, "verdict_reason": "nothing was measured (no logged step)"})
        except Exception:
            if error is None:
                raise
            # a run that failed may have left tables no verdict can read: its error is what matters
        self.writer.write_summary(self.summary)
        if self.tracking is not None:
            self.tracking.finish(self.summary)
        return self.summary


def judge(run_dir: Path, summary: dict) -> dict:
    """The verdict, by the rule `vgrad diagnose` uses, read back from the tables just written."""
    from ..analysis.diagnose import run_verdict
    from ..analysis.spread import note
    from ..rundir.store import load_run

    run = load_run(run_dir)
    run.summary = summary  # the final one: on disk it may still say "running"
    verdict, reason = run_verdict(run)
    model = run.config.get("model") or {}
    disagree = note(summary.get("init_spread"), model.get("width"), model.get("depth"))
    return {"verdict": verdict, "verdict_reason": reason + (f"; {disagree}" if disagree else "")}
