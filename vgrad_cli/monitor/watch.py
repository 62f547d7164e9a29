"""Warnings during training: the verdict's rules applied to each logged step as it arrives.

Each kind of problem is reported once, the first time it shows, with its evidence: one line on
stderr ("warn"), or GradientProblem ("raise") so that a script or a sweep can stop early (the
Monitor raises it, on every rank of a distributed run at once). A non-finite gradient while the loss
is still finite is a problem of its own (`nonfinite`): the next update makes the weights NaN.
"""

from __future__ import annotations

import math
import statistics
import sys

from ..analysis.indicators import THRESHOLDS
from ..analysis.across import GRAD, judged, readings
from ..analysis.verdict import EXPLODING_RATIO, GROWTH, VANISHING_RATIO

KINDS = ("vanishing", "exploding", "dying", "diverged", "nonfinite")  # GradientProblem.kind


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


class Watch:
    def __init__(self, on_problem: str | None, notify=None, kind: str | None = None):
        """notify(step, message): also told each message (Monitor's trackers), before it is raised.
        kind: the model's (config.yaml model.kind): which rows the ratios compare, as the verdict does."""
        self.on_problem, self.notify, self.kind = on_problem, notify, kind
        self.seen: set[str] = set()
        self.first_total: float | None = None

    def problems(self, step: int, rows: list[dict], metrics: dict, diverged_step: int | None,
                 modules: list[dict] | None = None, finding: dict | None = None,
                 divergence: str | None = None) -> list[tuple[str, str]]:
        """(kind, evidence) of every problem this step shows. rows: the run's view (block rows of a
        model with repeated blocks); modules: its module rows, when they differ. finding: the run's
        first non-finite value (monitor/nonfinite.py); divergence: what the divergence was, when not
        a non-finite loss."""
        found = []
        said = finding["message"].removeprefix(f"step {step}: ") if finding is not None else ""  # the step is said already
        where = f"; {said}" if finding is not None else ""
        if diverged_step is not None:
            what = divergence or f"the loss became non-finite at step {diverged_step}"
            found.append(("diverged", f"{what}{where} (a learning rate too large? clip the gradient, lower the rate or warm it up)"))
        elif finding is not None and finding.get("finite_loss"):
            found.append(("nonfinite", f"{said} (the next update makes the weights non-finite: "
                                       "a sqrt or log at 0, a division by a std of 0?)"))
        # every stack of a block view, its first and last trainable blocks (the verdict's readings:
        # analysis/across.py); module rows: their ends; where δ is not measured (compiled): grad_norm
        low, high = judged(readings(rows, self.kind))
        if low is not None and low["ratio"] < VANISHING_RATIO:
            found.append(("vanishing", f"{_said(low)} (< {VANISHING_RATIO:g})"))
        elif high is not None and high["ratio"] > EXPLODING_RATIO:
            found.append(("exploding", f"{_said(high)} (> {EXPLODING_RATIO:g})"))
        total = metrics.get("grad_norm_total")
        if _finite(total):
            if self.first_total is None:
                self.first_total = total
            elif self.first_total > 0 and total > GROWTH * self.first_total:
                found.append(("exploding", f"grad_norm_total grew {total / self.first_total:.2g}x since the first logged step "
                                           f"(> {GROWTH:g}x)"))
        # units are the module rows' (a block view's rows have none); a frozen row is never read
        dead = [(r["name"], r["act_dead_frac"]) for r in modules or rows
                if _finite(r.get("act_dead_frac")) and r.get("note") != "frozen"]
        if dead:
            mean = statistics.fmean(v for _, v in dead)
            name, worst = max(dead, key=lambda x: x[1])
            if mean >= THRESHOLDS["dead_mean"] or worst >= THRESHOLDS["dead_layer"]:
                found.append(("dying", f"{mean:.0%} of units dead on average, {worst:.0%} in layer '{name}'"))
        return found

    def new(self, step: int, rows: list[dict], metrics: dict, diverged_step: int | None, path,
            modules: list[dict] | None = None, **found) -> list[tuple[str, str]]:
        """(kind, message) of each problem this step shows for the first time. found: problems()'s
        finding and divergence."""
        out = []
        for kind, evidence in self.problems(step, rows, metrics, diverged_step, modules, **found):
            if kind in self.seen:
                continue
            self.seen.add(kind)
            label = {"dying": "dying units", "diverged": "divergence", "nonfinite": "non-finite gradient"}.get(
                kind, f"{kind} gradients")
            # a non-finite gradient's evidence names the step it happened at, maybe an unlogged one
            at = "found at step" if kind == "nonfinite" else "at step"
            out.append((kind, f"vgrad: {label} {at} {step}: {evidence}" + (f" (details: vgrad diagnose {path})" if path else "")))
        return out

    def check(self, step: int, rows: list[dict], metrics: dict, diverged_step: int | None, path,
              modules: list[dict] | None = None, **found) -> tuple[str, str] | None:
        """Warn of each new problem ("warn"), and tell the trackers; or return the first new one,
        (kind, message), for the Monitor to raise ("raise")."""
        for kind, message in self.new(step, rows, metrics, diverged_step, path, modules, **found):
            if self.notify is not None:
                self.notify(step, message)
            if self.on_problem == "raise":
                return kind, message
            if self.on_problem == "warn":
                _warn(message)
        return None


def _said(r: dict) -> str:
    """A reading in the warning's words: "delta_norm of block 'h.0' (input side) / block 'h.3' (last block) = 0.5"."""
    where = "block" if r["stack"] else "layer"
    end = "output" if where == "layer" else "last block" if r["main"] else f"last block of stack {r['stack']}"
    note = " (δ was not measured: read from grad_norm)" if r["column"] == GRAD else ""
    return f"{r['column']} of {where} '{r['first']}' (input side) / {where} '{r['last']}' ({end}) = {r['ratio']:.2g}{note}"


def shared_problem(problem: tuple[str, str] | None, step: int, device) -> tuple[str, str] | None:
    """Rank 0's decision, shared with every rank of a distributed run by one 1-element all-reduce:
    the same problem (or none) on every rank, so that all raise at the same step."""
    from ..measure.distributed import agree

    code = agree(KINDS.index(problem[0]) + 1 if problem else 0, device)
    if code and problem is None:
        problem = (KINDS[code - 1], f"vgrad: rank 0 found {KINDS[code - 1]} at step {step}: every rank stops")
    return problem


def _warn(message: str) -> None:
    """The warning on stderr, wrapped to the terminal (or COLUMNS) between words like vgrad's own
    lines: a training log stays readable at 80 columns. The exception keeps it on one line."""
    from ..report.console import make_console, print_lines

    console = make_console(stderr=True)
    print_lines(console, [message])
    sys.stderr.flush()
