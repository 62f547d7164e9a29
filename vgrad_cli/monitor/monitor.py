"""Monitor: vgrad's measurements on any model, in any training loop — the user's, and `vgrad run`'s.

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
clipping (re-measured when the loop says it clips, or when a gradient changed after mon.step():
in-place version counters; also for step(closure), where forward, backward and clipping run inside
the optimizer's step: Lightning, LBFGS). Forward passes without autograd (evaluation under
torch.no_grad) are not recorded, even on a logged step. When the next step is logged too (every=1)
the hooks stay armed instead of being removed and made again. Steps that are not logged do no
measurement work and no host synchronisation: one reference to the (detached) loss, read at the
next logged step to catch a non-finite loss in between. What a logged step leaves on disk is the
Recording's (recording.py). Framework callbacks over this class: vgrad_cli/integrations/.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import torch

from .. import vocab as V
from ..errors import GradientProblem
from ..measure.hooks import Hooks
from ..measure.probes import LayerProbe
from . import describe
from .pending import LossBuffer, figure_rows, listed
from .recording import Recording
from .watch import Watch

ON_PROBLEM = ("warn", "raise", None)
COMPILED_NOTE = ("torch.compile'd model: delta_norm and the activation columns are left empty (they need hooks "
                 "inside the compiled graph, which would break it); gradient, weight and update columns are exact, "
                 "layers in definition order")
_METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]*")


class Monitor:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, out="runs",
                 name: str | None = None, every=10, on_problem: str | None = "warn", layers=None,
                 activations: bool = True, plots: bool = True, steps: int | None = None,
                 clip_norm: float | None = None, clip_value: float | None = None, log_to=None, log_modules: bool = False,
                 *, recording: Recording | None = None):
        """model: any torch.nn.Module. optimizer: optional; with it, update_ratio and the gradient
        norm after clipping are recorded and only optimizer steps count. out/name: the run directory
        is out/<name>-<date>-<time>-<id> (name: the model's class). every: log every N steps (step 0
        always), or a function step -> bool. on_problem: "warn" prints one line the first time a
        problem shows, "raise" raises GradientProblem, None is silent. layers: module names (or
        prefixes) to keep, or {row name: [module names]} to group several modules into one row;
        default: every module with parameters. activations: activation statistics (dead, saturated,
        unresponsive units). plots: write plots/ at close(). steps: the planned number of steps, for
        the summary. clip_norm / clip_value: the clipping your loop applies after mon.step()
        (recorded in config.yaml; the diagnosis reads it). log_to: trackers that get each logged step's
        figures too — "tensorboard", a directory or a SummaryWriter, "wandb", "mlflow" (their active
        run), a Lightning logger, or a list (trackers/tracking.py: make_sinks); log_modules: send the
        module rows, not the run's view. recording: where the rows go (`vgrad run` makes its own);
        default: a new run directory under `out`."""
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"Monitor needs a torch.nn.Module, got {type(model).__name__}")
        check_options(every, on_problem, layers)
        self.model, self.optimizer, self.every, self.plots = model, optimizer, every, plots
        self._logged = every if callable(every) else (lambda step: step % every == 0)
        self.clip = {"clip_norm": clip_norm, "clip_value": clip_value}
        self.step_index = 0              # the step being accumulated (optimizer steps, or step() calls)
        self.status = V.RUNNING
        self._rank0 = _rank() == 0
        self._armed = self._measured = False
        self._t0 = time.perf_counter()
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
        self._losses = LossBuffer()   # the losses of the unlogged steps since the last logged one
        self._figures: dict = {}      # log_metrics() of the step being measured
        self._pending: dict = {}      # log_metrics() of unlogged steps: step -> figures
        self._handles = Hooks()      # the optimizer's step hooks
        self._own_recording = recording is None
        self.recording = None         # only rank 0 of a distributed run writes
        if self._rank0:
            self.recording = recording or Recording(out, self.name, describe.config(self), {"steps_planned": steps})
        tracking = None
        if log_to is not None and self.recording is not None:
            from ..trackers.tracking import Tracking

            try:
                tracking = self.recording.tracking = Tracking.to(log_to, self.path, log_modules)
            except Exception as e:  # a tracker that cannot start: the run directory says so, not "running"
                self.recording.finish(V.FAILED, 0, error=e)
                raise
        self.watch = Watch(on_problem, notify=tracking.warn if tracking is not None else None)
        if optimizer is not None:
            self._handles.add(optimizer.register_step_pre_hook(self._before_update))
            self._handles.add(optimizer.register_step_post_hook(self._after_update))
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
        return self.recording.path if self.recording is not None else None

    @property
    def summary(self) -> dict | None:
        """summary.json as last written (None on ranks other than 0)."""
        return self.recording.summary if self.recording is not None else None

    @property
    def diverged_step(self) -> int | None:
        """The first step whose loss was non-finite, once a logged step (or close()) has read it."""
        return self.recording.diverged_step if self.recording is not None else None

    def step(self, loss=None):
        """After loss.backward(), before clipping and optimizer.step()."""
        if self.status != V.RUNNING:
            raise RuntimeError(f"Monitor.step() after close() (status {self.status})")
        if not self._armed:
            if loss is not None:
                self._losses.add(self.step_index, loss)
            if self.optimizer is None:
                self._advance()
            return
        if self._measured and self._loss is not None:  # an earlier micro-batch of this step: checked too
            self._losses.add(self.step_index, self._loss)
        self._loss = loss
        # with an optimizer the hooks stay for the next micro-batches of this step; else they go now,
        # unless the next step is logged too (every=1): then they stay armed for it
        self.probe.after_backward(keep_hooks=self.optimizer is not None or self._logged(self.step_index + 1))
        self._measured = True
        if self.optimizer is None:  # no optimizer hook: the norm after your clipping is unknown (empty)
            self._finish()
            self._advance()

    def log_metrics(self, **values):
        """Your own figures for the current step into metrics.csv: eval_loss, eval_accuracy, accuracy,
        lr, or any name (a new name becomes a column). Numbers or one-element tensors; tensors are read
        with the logged step's other statistics, in its one host transfer. On a step that is not
        logged they make a row of their own, written at the next logged step."""
        figures = {}
        for key, value in values.items():
            if not _METRIC_NAME.fullmatch(key) or key in V.MEASURED_METRICS:
                raise ValueError(f"log_metrics: {key!r} cannot be a metrics.csv column (vgrad measures "
                                 f"{', '.join(V.MEASURED_METRICS)}; a name is letters, digits, _ . - /)")
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(f"log_metrics: {key} must be one number, got a tensor of shape {tuple(value.shape)}")
                value = value.detach().reshape(())
            elif value is not None and not isinstance(value, (int, float)):
                raise ValueError(f"log_metrics: {key} must be a number or a one-element tensor, "
                                 f"not {type(value).__name__}")
            figures[key] = value
        if self.recording is None:
            return
        if self._armed:
            self._figures.update(figures)
        else:
            self._pending.setdefault(self.step_index, {}).update(figures)

    def finish_step(self):
        """Record the step measured by step() now, for a step no optimizer step follows (the last one
        of a loop; an evaluation-only pass). close() does it too."""
        if not self._measured:
            return
        self.probe.detach()
        self.probe.after_clip(clipped=self._clipped())
        self.probe.recorder = None
        self._finish()
        self._armed = self._measured = False  # the next optimizer step only advances the counter

    def close(self, status: str | None = None, **summary):
        """End the run: summary.json with the verdict, then plots. Safe to call twice. status: the
        run's end (default: completed, or diverged); summary: keys for summary.json (stop_reason,
        error, ...: Recording.finish)."""
        if self.status != V.RUNNING:
            return
        stopped = None
        try:
            self.finish_step()  # a step measured but followed by no optimizer step
            if self.recording is not None and (len(self._losses) or self._pending):
                self._flush()   # losses and figures of the steps since the last logged one
        except GradientProblem as e:  # on_problem="raise" on that last step: end the run, then raise
            stopped, status, summary["stop_reason"] = e, V.INTERRUPTED, str(e)
        finally:
            self.remove()
        self.status = status or (V.DIVERGED if self.diverged_step is not None else V.COMPLETED)
        if self.recording is not None:
            notes = self.probe.notes + ([COMPILED_NOTE] if self.compiled else [])
            self.recording.finish(self.status, self.step_index, notes=notes, **describe.structure(self), **summary)
            if self._own_recording:
                self.recording.write_config(describe.config(self))  # with the layers found
            if self.plots:
                from ..report.plots import write_run_plots

                write_run_plots(self.path)
        if stopped is not None:
            raise stopped

    def remove(self):
        """Remove every hook from the model and the optimizer (torch's RemovableHandle.remove):
        nothing is measured or written after this, except by close()."""
        self._handles.remove()
        self.probe.detach()
        self._armed = self._measured = False

    def _repr_html_(self) -> str:
        """In a notebook: the run so far, as `vgrad_cli.load_run(mon.path)` shows it."""
        from ..report.html import compact_html

        return compact_html(self.path) if self.path is not None else "<p>vgrad Monitor (rank &gt; 0: no run here)</p>"

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, GradientProblem):  # on_problem="raise": stopped on purpose
            self.close(V.INTERRUPTED, stop_reason=str(exc))
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close(V.INTERRUPTED)
        else:
            self.close(V.FAILED, error=exc)
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
            self.probe.after_clip(clipped=self._clipped())  # the norm the optimizer will apply
            self.probe.recorder = None            # its layer outputs: not needed past this point
            self.probe.before_update()

    def _after_update(self, optimizer, args, kwargs):
        if self._measured:
            self.probe.after_update()
            self._finish()
        self._advance()

    # ------------------------------------------------------------------ internals
    def _clipped(self) -> bool | None:
        """True when the loop said it clips (the norm is measured again), else None: detected."""
        return True if any(v is not None for v in self.clip.values()) else None

    def _arm(self):
        self._armed = self._rank0 and self._logged(self.step_index)  # other ranks measure nothing
        self._measured = False
        self._figures, self._loss = {}, None
        if self._armed:
            self.probe.attach()

    def _advance(self):
        self.step_index += 1
        self._arm()

    def _finish(self):
        """A measured step: one host transfer, the rows, the live checks."""
        step = self.step_index
        device = self.probe.param_layer.device
        extra = {}
        if isinstance(self._loss, torch.Tensor):
            extra["loss"] = self._loss.detach().reshape(-1)[0].float().to(device)
        earlier_steps, earlier = self._losses.take()
        if earlier is not None:
            extra["recent_losses"] = earlier.to(device)
        # the user's figures: this step's (None), and those of unlogged steps since the last logged one
        figures = [(None, k, v) for k, v in self._figures.items()] + [
            (s, k, v) for s, f in sorted(self._take_pending().items()) for k, v in f.items()]
        extra.update({f"figure{i}": v.to(device) for i, (_, _, v) in enumerate(figures) if isinstance(v, torch.Tensor)})
        host = self.probe.to_host(extra)
        figures = [(s, k, host.get(f"figure{i}", v)) for i, (s, k, v) in enumerate(figures)]
        earlier = list(zip(earlier_steps, listed(host.get("recent_losses", []))))
        lr = self.optimizer.param_groups[0].get("lr") if self.optimizer is not None else None
        loss = host.get("loss", self._loss if isinstance(self._loss, (int, float)) else None)
        metrics = {"step": step, "loss": loss, "accuracy": None, "grad_norm_total": host["grad_norm_total"],
                   "grad_norm_clipped": host.get("grad_norm_clipped"), "eval_loss": None, "eval_accuracy": None,
                   "lr": lr if isinstance(lr, (int, float)) else None, "time_s": round(time.perf_counter() - self._t0, 4)}
        metrics.update({k: v for s, k, v in figures if s is None})
        rows, view = self.probe.rows(step, host), self.probe.view_rows(step, host)
        self._figures, self._loss = {}, None
        if self.recording is not None:
            self.recording.write(step, rows, metrics, self.probe.time_rows(step, host), earlier,
                                 figure_rows(figures, earlier), view)
        if self._rank0 and self.watch.on_problem is not None:
            self.watch.check(step, view or rows, metrics, self.diverged_step, self.path, rows if view else None)

    def _take_pending(self) -> dict:
        pending, self._pending = self._pending, {}
        return pending

    def _flush(self):
        """At close(): the losses of the steps since the last logged one (a non-finite one is the
        run's divergence) and the figures logged on them, in one host transfer."""
        steps, losses = self._losses.take()
        figures = [(s, k, v) for s, f in sorted(self._take_pending().items()) for k, v in f.items()]
        tensors = [v for _, _, v in figures if isinstance(v, torch.Tensor)]
        parts = ([losses] if losses is not None else []) + tensors
        flat = torch.cat([t.detach().double().reshape(-1).cpu() for t in parts]).tolist() if parts else []
        earlier = list(zip(steps, flat))
        values = iter(flat[len(steps):])
        figures = [(s, k, next(values) if isinstance(v, torch.Tensor) else v) for s, k, v in figures]
        self.recording.check(earlier, figure_rows(figures, earlier))


def check_options(every, on_problem, layers) -> None:
    """Monitor's options that can be wrong before there is a model (framework callbacks check them
    when they are made, not at the start of training)."""
    if not callable(every) and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise ValueError(f"every must be an integer >= 1 or a function step -> bool, got {every!r}")
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
