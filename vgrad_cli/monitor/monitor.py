"""Monitor: vgrad's measurements on the user's own model, in the user's own training loop.

    mon = Monitor(model, optimizer=opt, out="runs", name="mynet", every=10)
    for x, y in loader:
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward()
        mon.step(loss)        # after backward, before clipping and opt.step()
        opt.step()
    mon.close()               # summary.json with the verdict (also: `with Monitor(...) as mon:`)

The step counter counts optimizer steps when an optimizer is given (gradient accumulation: several
mon.step() calls per opt.step(); the last one's gradient, the accumulated one, is measured), else
mon.step() calls. A logged step is armed before its forward pass (the hooks must see it) and
measured in mon.step(); with an optimizer, its step hooks add the update ratio and the norm after
clipping (re-measured only if a gradient changed after mon.step(): in-place version counters;
also for step(closure), where forward, backward and clipping run inside the optimizer's step:
Lightning, LBFGS). Forward passes without autograd (evaluation under torch.no_grad) are not
recorded, even on a logged step. When the next step is logged too (every=1) the hooks stay armed
instead of being removed and made again. Steps that are not logged do no measurement work and no
host synchronisation: one reference to the (detached) loss, read at the next logged step to catch a
non-finite loss in between. Framework callbacks over this class: vgrad_cli/integrations/.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from ..errors import GradientProblem
from ..measure.probes import LAYER_COLUMNS, LayerProbe
from ..rundir.files import METRIC_COLUMNS, SCHEMA_VERSION, RunWriter
from .watch import Watch

ON_PROBLEM = ("warn", "raise", None)
COMPILED_NOTE = ("torch.compile'd model: delta_norm and the activation columns are left empty (they need hooks "
                 "inside the compiled graph, which would break it); gradient, weight and update columns are exact, "
                 "layers in definition order")


class Monitor:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, out="runs",
                 name: str | None = None, every: int = 10, on_problem: str | None = "warn", layers=None,
                 activations: bool = True, plots: bool = True, steps: int | None = None):
        """model: any torch.nn.Module. optimizer: optional; with it, update_ratio and the gradient
        norm after clipping are recorded and only optimizer steps count. out/name: the run directory
        is out/<name>-<date>-<time>-<id> (name: the model's class). every: log every N steps (step 0
        always). on_problem: "warn" prints one line the first time a problem shows, "raise" raises
        GradientProblem, None is silent. layers: module names (or prefixes) to keep, or {row name:
        [module names]} to group several modules into one row; default: every module with
        parameters. activations: activation statistics (dead, saturated, unresponsive units).
        plots: write plots/ at close(). steps: the planned number of steps, for the summary."""
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"Monitor needs a torch.nn.Module, got {type(model).__name__}")
        check_options(every, on_problem, layers)
        self.model, self.optimizer, self.every, self.plots = model, optimizer, every, plots
        self.step_index = 0              # the step being accumulated (optimizer steps, or step() calls)
        self.status = "running"
        self.diverged_step: int | None = None
        self._rank0 = _rank() == 0
        self._armed = False
        self._measured = False
        self._t0 = time.perf_counter()
        self._started = time.time()
        # A compiled model: hooks inside its graph would break it, so δ and the activation
        # statistics stay empty (said in summary.json's notes) and the rest is measured as usual.
        # (a compiled model means torch._dynamo is loaded already: importing it here would cost ~1 s)
        dynamo = sys.modules.get("torch._dynamo")
        self.compiled = dynamo is not None and isinstance(model, dynamo.eval_frame.OptimizedModule)
        inner = model._orig_mod if self.compiled else model
        self.name = name or type(inner).__name__
        self._class = type(inner).__name__
        self.probe = LayerProbe(inner, None, activations and not self.compiled, layers=None, hooks=not self.compiled)
        self.probe.select = layers
        if layers is not None:
            _check_names(inner, layers)
        self.watch = Watch(on_problem)
        self._recent: list = []  # the losses of the unlogged steps since the last logged one (detached)
        self._first = self._last = None
        self._max_total = None  # the largest finite grad_norm_total logged: grad_norm_total_growth
        self._handles = []
        self.writer = None
        if self._rank0:
            self.writer = RunWriter(out, self.name)
            self._layers_csv = self.writer.table("layers.csv", LAYER_COLUMNS)
            self._metrics_csv = self.writer.table("metrics.csv", METRIC_COLUMNS)
            self.summary = {"schema_version": SCHEMA_VERSION, "name": self.name, "status": "running", "source": "monitor",
                            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self._started)),
                            "steps_planned": steps, "seed": None, "versions": _versions(),
                            "task_loss": None, "baseline_loss": None, "chance_accuracy": None}
            self.writer.write_summary(self.summary)
            self.writer.write_config(self._config())  # again at close(), with the layers found
        if optimizer is not None:
            self._handles = [optimizer.register_step_pre_hook(self._before_update),
                             optimizer.register_step_post_hook(self._after_update)]
        self._arm()

    # ------------------------------------------------------------------ the user's calls
    @property
    def measuring(self) -> bool:
        """Whether the step being accumulated is a logged one (its hooks are armed): a framework
        adapter that cannot call step() at one fixed point does the extra work only then."""
        return self._armed

    @property
    def path(self) -> Path | None:
        """The run directory (None on ranks other than 0 of a distributed run: only rank 0 writes)."""
        return self.writer.path if self.writer is not None else None

    def step(self, loss=None):
        """After loss.backward(), before clipping and optimizer.step()."""
        if self.status != "running":
            raise RuntimeError(f"Monitor.step() after close() (status {self.status})")
        if not self._armed:
            if loss is not None:
                self._buffer(loss)
            if self.optimizer is None:
                self._advance()
            return
        self._loss = loss.detach() if isinstance(loss, torch.Tensor) else (
            torch.tensor(float(loss)) if loss is not None else None)
        # with an optimizer the hooks stay for the next micro-batches of this step; else they go now,
        # unless the next step is logged too (every=1): then they stay armed for it
        self.probe.after_backward(keep_hooks=self.optimizer is not None or self._logged(self.step_index + 1))
        self._measured = True
        if self.optimizer is None:  # no optimizer hook: the norm after your clipping is unknown (empty)
            self._finish()
            self._advance()

    def close(self, status: str | None = None):
        """End the run: summary.json with the verdict, then plots. Safe to call twice."""
        if self.status != "running":
            return
        for h in self._handles:
            h.remove()
        self._handles = []
        self.probe.detach()
        self.status = status or ("diverged" if self.diverged_step is not None else "completed")
        if self.writer is None:
            return
        self.writer.close()
        self.summary.update(self._final_summary())
        self.writer.write_summary(self.summary)
        from ..training.runner import judge

        self.summary.update(judge(self.writer.path, self.summary))
        self.writer.write_summary(self.summary)
        if self.plots:
            from ..report.plots import write_run_plots

            write_run_plots(self.writer.path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, GradientProblem):  # on_problem="raise": stopped on purpose
            if self.writer is not None:
                self.summary["stop_reason"] = str(exc)
            self.close("interrupted")
        else:
            self.close("interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed")
        return False

    # ------------------------------------------------------------------ the optimizer's hooks
    def _before_update(self, optimizer, args, kwargs):
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self._update_begins()
            return None
        # step(closure) (Lightning, LBFGS): forward, backward, step() and clipping all run inside the
        # optimizer's step, in the closure; the update begins once it has returned (the first time)
        started = []

        def closure_then_measure(*a, **kw):
            result = closure(*a, **kw)
            if not started:
                started.append(True)
                self._update_begins()
            return result

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_measure}
        return (args[0], closure_then_measure, *args[2:]), kwargs

    def _update_begins(self):
        if self._measured:
            if not self._logged(self.step_index + 1):  # else the hooks stay armed for the next step
                self.probe.detach()
            self.probe.after_clip(clipped=None)   # the norm the optimizer will apply (re-measured if clipped)
            self.probe.recorder = None            # its layer outputs: not needed past this point
            self.probe.before_update()

    def _after_update(self, optimizer, args, kwargs):
        if self._measured:
            self.probe.after_update()
            self._finish()
        self._advance()

    # ------------------------------------------------------------------ internals
    def _logged(self, step: int) -> bool:
        return step % self.every == 0

    def _arm(self):
        self._armed = self._rank0 and self._logged(self.step_index)  # other ranks measure nothing
        self._measured = False
        if self._armed:
            self.probe.attach()

    def _advance(self):
        self.step_index += 1
        self._arm()

    def _buffer(self, loss):
        """An unlogged step's loss, kept where it is (a reference to the detached tensor: no device
        work, no copy): checked for non-finite at the next logged step."""
        if isinstance(loss, torch.Tensor) and len(self._recent) < self.every:
            self._recent.append(loss.detach())

    def _finish(self):
        """A measured step: one host transfer, the rows, the live checks."""
        step = self.step_index
        extra = {}
        device = self.probe.param_layer.device
        if self._loss is not None:
            extra["loss"] = self._loss.reshape(-1)[0].float().to(device)
        if self._recent:
            extra["recent_losses"] = torch.stack([l.reshape(-1)[0].float().to(device) for l in self._recent])
        host = self.probe.to_host(extra)
        recent = host.pop("recent_losses", [])
        if not isinstance(recent, list):
            recent = [recent]
        self._recent = []
        rows = self.probe.rows(step, host)
        lr = self.optimizer.param_groups[0].get("lr") if self.optimizer is not None else None
        metrics = {"step": step, "loss": host.get("loss"), "accuracy": None,
                   "grad_norm_total": host["grad_norm_total"], "grad_norm_clipped": host.get("grad_norm_clipped"),
                   "eval_loss": None, "eval_accuracy": None, "lr": lr if isinstance(lr, (int, float)) else None,
                   "time_s": round(time.perf_counter() - self._t0, 4)}
        bad = [i for i, v in enumerate(recent + [metrics["loss"]]) if v is not None and not math.isfinite(v)]
        if bad and self.diverged_step is None:
            self.diverged_step = step - len(recent) + bad[0]
        if self.writer is not None:
            self._layers_csv.append(rows)
            self._metrics_csv.append([metrics])
            if self._first is None:
                self._first = (rows, metrics)
            if metrics["loss"] is None or math.isfinite(metrics["loss"]):
                self._last = (rows, metrics)
                total = metrics["grad_norm_total"]
                if math.isfinite(total):
                    self._max_total = max(self._max_total or 0.0, total)
        if self._rank0:
            self.watch.check(step, rows, metrics, self.diverged_step, self.path)

    def _final_summary(self) -> dict:
        from ..analysis.verdict import ratios

        first_rows, first_m = self._first or ([], {})
        last_rows, last_m = self._last or ([], {})
        # as for `vgrad run`: the largest logged total over the first one (not just the last one)
        growth = self._max_total / first_m["grad_norm_total"] if first_m.get("grad_norm_total") and self._max_total else None
        out = {"status": self.status, "steps_completed": self.step_index, "diverged_step": self.diverged_step,
               "final_loss": last_m.get("loss"), "final_accuracy": None, "final_eval_loss": None,
               "final_eval_accuracy": None, "wall_time_s": round(time.time() - self._started, 3),
               "first_logged_step": first_rows[0]["step"] if first_rows else None,
               "last_logged_step": last_rows[0]["step"] if last_rows else None,
               "n_layers": len(first_rows), "grad_norm_total_growth": growth,
               "notes": self.probe.notes + ([COMPILED_NOTE] if self.compiled else []),
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        out.update(ratios(first_rows, last_rows))
        self.writer.write_config(self._config())
        return out

    def _config(self) -> dict:
        """config.yaml of a monitored run: what the model and the optimizer were (not a config that
        `vgrad run` can train: the model is the user's)."""
        layers = self.probe.layers or []
        opt = self.optimizer
        train = {"optimizer": type(opt).__name__ if opt is not None else None, "clip_norm": None}
        if opt is not None:
            train["lr"] = opt.param_groups[0].get("lr") if isinstance(opt.param_groups[0].get("lr"), (int, float)) else None
        return {"name": self.name, "source": "monitor",
                "model": {"kind": "custom", "class": self._class,
                          "parameters": sum(p.numel() for p in self.model.parameters()),
                          "layers": [{"name": l.name, "type": type(l.delta).__name__ if l.delta is not None else None,
                                      "parameters": sum(p.numel() for p in l.params)} for l in layers]},
                "train": train, "log": {"every": self.every, "activations": self.probe.keep_activations}}


def check_options(every, on_problem, layers) -> None:
    """Monitor's options that can be wrong before there is a model (framework callbacks check them
    when they are made, not at the start of training)."""
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"every must be an integer >= 1, got {every!r}")
    if on_problem not in ON_PROBLEM:
        raise ValueError(f"on_problem must be 'warn', 'raise' or None, got {on_problem!r}")
    if layers is not None and not isinstance(layers, (list, tuple, dict)):
        raise ValueError("layers must be a list of module names or a {row name: [module names]} dict")


def _check_names(model, layers) -> None:
    """Every name in layers= must be a module of the model, or a prefix of some: else ValueError now,
    before a run directory exists, not at the first step."""
    names = [n for n, _ in model.named_modules() if n]
    wanted = [p for v in layers.values() for p in ([v] if isinstance(v, str) else v)] if isinstance(layers, dict) else list(layers)
    for w in wanted:
        if not any(n == w or n.startswith(str(w).rstrip(".") + ".") for n in names):
            close = [n for n in names if str(w) in n][:5] or names[:8]
            raise ValueError(f"layers: {w!r} is not a module of {type(model).__name__}; modules are named like: "
                             + ", ".join(close))


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _versions() -> dict:
    from ..training.runner import versions

    return versions()
