"""Warnings during training: the verdict's rules applied to each logged step as it arrives.

Each kind of problem is reported once, the first time it shows, with its evidence: one line on
stderr ("warn"), or GradientProblem ("raise") so that a script or a sweep can stop early.
"""

from __future__ import annotations

import math
import statistics
import sys

from ..analysis.indicators import THRESHOLDS
from ..analysis.verdict import EXPLODING_RATIO, GROWTH, VANISHING_RATIO, ends, main_blocks
from ..errors import GradientProblem


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


class Watch:
    def __init__(self, on_problem: str | None, notify=None):
        """notify(step, message): also told each message (Monitor's trackers), before it is raised."""
        self.on_problem, self.notify = on_problem, notify
        self.seen: set[str] = set()
        self.first_total: float | None = None

    def problems(self, step: int, rows: list[dict], metrics: dict, diverged_step: int | None,
                 modules: list[dict] | None = None) -> list[tuple[str, str]]:
        """(kind, evidence) of every problem this step shows. rows: the run's view (block rows of a
        model with repeated blocks); modules: its module rows, when they differ."""
        found = []
        if diverged_step is not None:
            found.append(("diverged", f"the loss became non-finite at step {diverged_step} "
                                      "(a learning rate too large? clip the gradient, lower the rate or warm it up)"))
        measured = [r for r in rows if _finite(r.get("delta_norm"))]
        if main_blocks(rows):  # a block view: the main stack's first and last blocks, as the verdict reads it
            first, last = ends(rows)
            where = "block"
        elif len(measured) >= 2:
            (first, last), where = (measured[0], measured[-1]), "layer"
        else:
            first = last = None
        if first is not None and _finite(first.get("delta_norm")) and _finite(last.get("delta_norm")) \
                and last["delta_norm"] > 0 and first is not last:
            r = first["delta_norm"] / last["delta_norm"]
            where = (f"delta_norm of {where} '{first['name']}' (input side) / {where} '{last['name']}' "
                     f"({'output' if where == 'layer' else 'last block'}) = {r:.2g}")
            if r < VANISHING_RATIO:
                found.append(("vanishing", f"{where} (< {VANISHING_RATIO:g})"))
            elif r > EXPLODING_RATIO:
                found.append(("exploding", f"{where} (> {EXPLODING_RATIO:g})"))
        total = metrics.get("grad_norm_total")
        if _finite(total):
            if self.first_total is None:
                self.first_total = total
            elif self.first_total > 0 and total > GROWTH * self.first_total:
                found.append(("exploding", f"grad_norm_total grew {total / self.first_total:.2g}x since the first logged step "
                                           f"(> {GROWTH:g}x)"))
        # units are the module rows' (a block view's rows have none)
        dead = [(r["name"], r["act_dead_frac"]) for r in modules or rows if _finite(r.get("act_dead_frac"))]
        if dead:
            mean = statistics.fmean(v for _, v in dead)
            name, worst = max(dead, key=lambda x: x[1])
            if mean >= THRESHOLDS["dead_mean"] or worst >= THRESHOLDS["dead_layer"]:
                found.append(("dying", f"{mean:.0%} of units dead on average, {worst:.0%} in layer '{name}'"))
        return found

    def new(self, step: int, rows: list[dict], metrics: dict, diverged_step: int | None, path,
            modules: list[dict] | None = None) -> list[tuple[str, str]]:
        """(kind, message) of each problem this step shows for the first time."""
        out = []
        for kind, evidence in self.problems(step, rows, metrics, diverged_step, modules):
            if kind in self.seen:
                continue
            self.seen.add(kind)
            label = {"dying": "dying units", "diverged": "divergence"}.get(kind, f"{kind} gradients")
            out.append((kind, f"vgrad: {label} at step {step}: {evidence}" + (f" (details: vgrad diagnose {path})" if path else "")))
        return out

    def check(self, step: int, rows: list[dict], metrics: dict, diverged_step: int | None, path,
              modules: list[dict] | None = None) -> None:
        for kind, message in self.new(step, rows, metrics, diverged_step, path, modules):
            if self.notify is not None:
                self.notify(step, message)
            if self.on_problem == "raise":
                raise GradientProblem(kind, step, message)
            if self.on_problem == "warn":
                _warn(message)


def _warn(message: str) -> None:
    """The warning on stderr, wrapped to the terminal (or COLUMNS) between words like vgrad's own
    lines: a training log stays readable at 80 columns. The exception keeps it on one line."""
    from ..report.console import make_console, print_lines

    console = make_console(stderr=True)
    print_lines(console, [message])
    sys.stderr.flush()
