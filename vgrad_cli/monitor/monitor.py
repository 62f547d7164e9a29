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
per-layer work and no host synchronisation: the every-step tier (pending.py: the loss, one fused
norm of the gradients) waits on the device for the next logged step (steps.csv; a non-finite value
in between: nonfinite.py). A loss scaler: scaler.py; several processes (DDP, FSDP): every rank
measures its part, combined by one collective per logged step (measure/distributed.py); rank 0
writes what the Recording (recording.py) holds. Framework callbacks: vgrad_cli/integrations/.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from .. import vocab as V
from ..errors import GradientProblem
from ..measure.distributed import combine, settle, sharding, world
from ..measure.hooks import Hooks, when_update_begins
from ..measure.probes import LayerProbe
from ..measure.updates import rule as update_rule
from . import describe
from .nonfinite import find
from .options import check_values, check_names, check_options, checked_figures, plain_number
from .cadence import Cadence
from .pending import Between, EveryStep, current_lr, step_row, transfer
from .recording import Recording
from .scaler import ScalerWatch
from .watch import Watch, shared_problem

__all__ = ["Monitor", "check_options"]
COMPILED_NOTE = ("torch.compile'd model: delta_norm and the activation columns are left empty (they need hooks "
                 "inside the compiled graph, which would break it); gradient, weight and update columns are exact, "
                 "layers in definition order")


class Monitor:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, out="runs",
                 name: str | None = None, every=10, on_problem: str | None = "warn", layers=None,
                 activations: bool = True, plots: bool = True, steps: int | None = None,
                 clip_norm: float | None = None, clip_value: float | None = None, log_to=None,
                 log_modules: bool = False, *, scaler=None, every_step: bool = True, budget: float = 0.03,
                 recording: Recording | None = None):
        """model: any torch.nn.Module. optimizer: optional; with it, update_ratio and the gradient
        norm after clipping are recorded and only optimizer steps count. out/name: the run directory
        is out/<name>-<date>-<time>-<id> (name: the model's class). every: log every N steps (step 0
        always), a function step -> bool, or "auto": spaced so that measuring costs at most `budget`
        of the training time (cadence.py). on_problem: "warn" prints one line the first time a
        problem shows, "raise" raises GradientProblem, None is silent. layers: module names (or
        prefixes) to keep, or {row name: [module names]} to group several modules into one row;
        default: every module with parameters. activations: activation statistics (dead, saturated,
        unresponsive units). plots: write plots/ at close(). steps: the planned number of steps, for
        the summary. clip_norm / clip_value: the clipping your loop applies after mon.step()
        (recorded in config.yaml; the diagnosis reads it). log_to: trackers that get each logged step's
        figures too — "tensorboard", a directory or a SummaryWriter, "wandb", "mlflow" (their active
        run), a Lightning logger, or a list (trackers/tracking.py: make_sinks); log_modules: send the
        module rows, not the run's view. scaler: the torch.amp.GradScaler of a mixed-precision loop:
        the gradients are recorded unscaled, with the loss scale and the steps it skipped (pass
        mon.step() the loss before scaling). every_step: the every-step tier (steps.csv): the loss, the
        total gradient norm before and after your clipping, the learning rate and a finiteness flag of
        every step, kept on the device until the next logged step (one fused norm per step; it also
        names the step of a non-finite gradient). recording: where the rows go
        (`vgrad run` makes its own); default: a new run directory under `out`. Distributed (DDP,
        FSDP): make a Monitor on every rank; rank 0 writes."""
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"Monitor needs a torch.nn.Module, got {type(model).__name__}")
        check_options(every, on_problem, layers, budget)
        check_values(optimizer, name, steps, clip_norm, clip_value, activations=activations, plots=plots,
                     every_step=every_step, log_modules=log_modules)
        self.model, self.optimizer, self.every, self.plots = model, optimizer, every, plots
        self._logged = Cadence(every, budget)
        self.clip = {"clip_norm": clip_norm, "clip_value": clip_value}
        self.step_index = 0              # the step being accumulated (optimizer steps, or step() calls)
        self.status = V.RUNNING
        self.rank, self.ranks = world()
        self._rank0 = self.rank == 0
        self.sharded = sharding(model, optimizer) is not None  # FSDP: each rank holds shards (DeepSpeed: refused)
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
        self.probe.select = check_names(inner, layers) if layers is not None else None
        self._between = Between()     # losses, gradient checks, skips, figures of the unlogged steps
        self._figures: dict = {}      # log_metrics() of the step being measured
        self._handles = Hooks()      # the optimizer's step hooks
        self._trainable = [p for p in inner.parameters() if p.requires_grad]
        self._stepped, self._scale = False, None
        # skips are seen through the optimizer's steps: with an optimizer only
        self.scaler = ScalerWatch.make(scaler, optimizer, self._scaler_update if optimizer is not None else None)
        self._tier = EveryStep(self._between, self._trainable, optimizer, self.clip, self.sharded, self.scaler) \
            if every_step else None
        self._update_rule = update_rule(optimizer, self.scaler, bool(self.sharded))
        self._own_recording = recording is None
        self.recording = None         # only rank 0 of a distributed run writes
        if self._rank0:
            self.recording = recording or Recording(out, self.name, describe.config(self), {"steps_planned": steps})
        tracking = self.recording.track(log_to, log_modules) if log_to is not None and self.recording else None
        self.watch = Watch(on_problem, notify=tracking.warn if tracking is not None else None,
                           kind=self.recording.kind if self.recording is not None else None)
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
        """After loss.backward(), before clipping and optimizer.step(). With a loss scaler: after
        scaler.scale(loss).backward(), given the loss before scaling."""
        if self.status != V.RUNNING:
            raise RuntimeError(f"Monitor.step() after close() (status {self.status})")
        loss = plain_number(loss)
        if loss is not None and not (isinstance(loss, (int, float)) or isinstance(loss, torch.Tensor) and loss.numel() == 1):
            raise TypeError(f"Monitor.step(loss): the loss is one number or a one-element tensor, got "
                            f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        if not self._armed:
            if loss is not None:
                self._between.losses.add(self.step_index, loss)
            if self._tier is not None:
                self._tier.record(self.step_index)
            if self.optimizer is None:
                self._advance()
            return
        if self._measured and self._loss is not None:  # an earlier micro-batch of this step: checked too
            self._between.losses.add(self.step_index, self._loss)
        self._loss = loss
        # with an optimizer the hooks stay for the next micro-batches of this step; else they go now,
        # unless the next step is logged too (every=1): then they stay armed for it
        self.probe.after_backward(keep_hooks=self.optimizer is not None or self._logged(self.step_index + 1), loss=loss)
        if self.scaler is not None:  # the gradients are S times the optimizer's: divide the statistics
            self._scale, inv = self.scaler.scale(), self.scaler.inverse()
            if inv is not None:
                self.probe.unscale(inv)
        self._measured = True
        if self.optimizer is None:  # no optimizer hook: the norm after your clipping is unknown (empty)
            self._finish()
            self._advance()

    def log_metrics(self, **values):
        """Your own figures for the current step into metrics.csv: eval_loss, eval_accuracy, accuracy,
        lr, or any name (a new name becomes a column). Numbers or one-element tensors; tensors are read
        with the logged step's other statistics, in its one host transfer. On a step that is not
        logged they make a row of their own, written at the next logged step."""
        figures = checked_figures(values)
        if self.recording is None:
            return
        if self._armed:
            self._figures.update(figures)
        else:
            self._between.figures.setdefault(self.step_index, {}).update(figures)

    def finish_step(self, skipped: bool = False):
        """Record the step measured by step() now, for a step no optimizer step follows (the last one
        of a loop; an evaluation-only pass). close() does it too. skipped: a loss scaler skipped it."""
        if not self._measured:
            return
        self.probe.detach()
        self.probe.after_clip(clipped=self._clipped())
        self.probe.recorder = None
        self._armed = False  # the next optimizer step only advances the counter
        self._finish(skipped)

    def close(self, status: str | None = None, **summary):
        """End the run: summary.json with the verdict, then plots. Safe to call twice. status: the
        run's end (default: completed, or diverged); summary: keys for summary.json (stop_reason,
        error, ...: Recording.finish)."""
        if self.status != V.RUNNING:
            return
        stopped = None
        try:
            # a step measured but followed by no optimizer step (its figures are combined across
            # ranks: not when this rank stops alone, on an exception, while the others train on)
            if self.ranks == 1 or status in (None, V.COMPLETED, V.DIVERGED):
                self.finish_step()
            if self._figures:  # logged on a step that was armed but never measured (the loop ended first)
                self._between.figures.setdefault(self.step_index, {}).update(self._figures)
            if self.recording is not None and self._between:
                self._flush()   # losses, checks and figures of the steps since the last logged one
        except GradientProblem as e:  # on_problem="raise" on that last step: end the run, then raise
            stopped, status, summary["stop_reason"] = e, V.INTERRUPTED, str(e)
        finally:
            self.remove()
        self.status = status or (V.DIVERGED if self.diverged_step is not None else V.COMPLETED)
        if self.recording is not None:
            notes = self.probe.notes + ([COMPILED_NOTE] if self.compiled else [])
            if self.scaler is not None:
                summary.setdefault("steps_skipped", self.recording.skips.count)
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
        if self.scaler is not None:
            self.scaler.remove()
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
        return when_update_begins(args, kwargs, self._update_begins)

    def _update_begins(self):
        self._stepped = True
        if self._measured:
            if not self._logged(self.step_index + 1):  # else the hooks stay armed for the next step
                self.probe.detach()
            self.probe.after_clip(clipped=self._clipped())  # the norm the optimizer will apply
            s, inv = self.probe.stats, self.scaler.inverse() if self.scaler is not None else None
            if inv is not None and s["grad_norm_clipped"] is not s["grad_norm_total"]:
                s["grad_norm_clipped"] = s["grad_norm_clipped"] * inv  # re-measured, still scaled (a fused optimizer)
            self.probe.recorder = None            # its layer outputs: not needed past this point
            self.probe.before_update(self.optimizer, self._update_rule)
        elif self._tier is not None:
            self._tier.record_clipped(self.step_index)

    def _after_update(self, optimizer, args, kwargs):
        if self._measured:
            self.probe.after_update()
            self._finish()
        self._advance()

    # ------------------------------------------------------------------ internals
    def _scaler_update(self):
        """scaler.update(): a step under a loss scaler ends. No optimizer step since the last one:
        the scaler skipped this step (its gradient overflowed)."""
        stepped, self._stepped = self._stepped, False
        if stepped:  # a fused optimizer steps anyway and skips on the device: keep its flag
            if self.scaler.fused and self._rank0 and self._logged.last != self.step_index - 1:
                self._between.skips.add(self.step_index - 1, self.scaler.found_inf(), self.scaler.scale())
            return
        if self._measured:
            self.finish_step(skipped=True)
        elif self._rank0:
            self._between.skips.add(self.step_index, 1.0, self.scaler.scale())
        self._advance()

    def _clipped(self) -> bool | None:
        """True when the loop said it clips (the norm is measured again), else None: detected."""
        return True if any(v is not None for v in self.clip.values()) else None

    def _arm(self):
        self._armed = self._logged(self.step_index)  # on every rank: each measures its part
        self._logged.tick(self._armed)
        self._measured = False
        self._figures, self._loss = {}, None
        if self._armed:
            self.probe.attach()

    def _advance(self):
        self.step_index += 1
        self._arm()

    def _finish(self, skipped: bool = False):
        """A measured step: one collective across ranks, one host transfer, the rows, the checks."""
        self._measured = False
        step, probe = self.step_index, self.probe
        device = probe.param_layer.device
        # shared: the same keys on every rank, combined across ranks; own: this rank's (skips, figures)
        shared, own = self._between.take(device, self._figures)
        if isinstance(self._loss, torch.Tensor):
            shared["loss"] = self._loss.detach().reshape(-1)[0].float().to(device)
        if self.scaler is not None:
            flag = None if skipped else self.scaler.found_inf()
            own["skipped"] = (flag if flag is not None else torch.tensor(float(skipped))).to(device)
            own["loss_scale"] = (self._scale if self._scale is not None else torch.tensor(float("nan"))).to(device)
        lr = current_lr(self.optimizer)
        own.update({"lr": lr.to(device)} if isinstance(lr, torch.Tensor) else {})  # a tensor lr: in the same transfer
        if self._logged.auto:  # the last logged step's cost and the pace, the same on every rank
            probe.stats["_cadence"] = torch.tensor(self._logged.figures(), dtype=torch.float64, device=device)
        if self.ranks > 1:
            if self.sharded:
                probe.stats["_w0"] = probe.w0_norm
            probe.stats = combine({**probe.stats, **shared}, self.ranks, self.sharded, probe.view)
            shared = {}
        host = probe.to_host({**shared, **own})
        if self.sharded:
            settle(probe, host)
        skipped = skipped or host.get("skipped", 0) > 0
        self._logged.plan(step, *host.get("_cadence", ()))
        earlier, checks, skips, figures, extra = self._between.read(host)
        skips += [step] * skipped
        lr = host.get("lr", lr)
        loss = host.get("loss", self._loss if isinstance(self._loss, (int, float)) else None)
        metrics = {"step": step, "loss": loss, "accuracy": None, "grad_norm_total": host["grad_norm_total"],
                   "grad_norm_clipped": host.get("grad_norm_clipped"), "eval_loss": None, "eval_accuracy": None,
                   "lr": lr if isinstance(lr, (int, float)) else None, "time_s": round(time.perf_counter() - self._t0, 4)}
        if self.scaler is not None:  # a skipped step's gradient overflowed: no norm, no layer rows
            metrics.update({"loss_scale": host["loss_scale"], "skipped": int(skipped)},
                           **({"grad_norm_total": None, "grad_norm_clipped": None} if skipped else {}))
        metrics.update({k: v for s, k, v in figures if s is None})
        rows, view = probe.rows(step, host), probe.view_rows(step, host)
        self._figures, self._loss = {}, None
        problem, rec = None, self.recording
        if rec is not None:
            if self._tier is not None:  # steps.csv: the steps in between, and this one from its full measurement
                rec.write_steps(self._between.tier(set(skips)) + [step_row(
                    step, loss, metrics["grad_norm_total"], metrics["grad_norm_clipped"], lr, skipped)])
            rec.write(step, rows, metrics, probe.time_rows(step, host), earlier, extra, view, skipped=skips)
            rec.note_nonfinite(find(step, None if skipped else host, probe, self.model, earlier, checks, set(skips)))
            if self.watch.on_problem is not None:
                problem = self.watch.check(step, [] if skipped else view or rows, metrics, self.diverged_step, self.path,
                                           rows if view and not skipped else None, finding=rec.first_nonfinite,
                                           divergence=rec.divergence)
        self._stop(step, problem)

    def _stop(self, step: int, problem: tuple[str, str] | None):
        """on_problem="raise": GradientProblem, on every rank of a distributed run at the same step
        (rank 0 decides; one 1-element all-reduce), so that no rank waits forever for the others."""
        if self.watch.on_problem == "raise":
            if self.ranks > 1:
                problem = shared_problem(problem, step, self.probe.param_layer.device)
            if problem is not None:
                raise GradientProblem(problem[0], step, problem[1])

    def _flush(self):
        """At close(): the losses and gradient checks of the steps since the last logged one (a
        non-finite one is the run's divergence, or its first non-finite value), the steps a loss
        scaler skipped and the figures logged on them, in one host transfer. This rank's own."""
        shared, own = self._between.take(torch.device("cpu"))
        earlier, checks, skips, _, rows = self._between.read(transfer({**shared, **own}))
        if self._tier is not None:
            self.recording.write_steps(self._between.tier(set(skips)))
        self.recording.check(earlier, rows, skips)
        self.recording.note_nonfinite(find(self.step_index, None, self.probe, self.model, earlier, checks, set(skips), True))
