"""Which steps a Monitor logs: every N steps, a function step -> bool, or "auto".

"auto" spaces the logged steps so that measuring them costs at most `budget` of the training time,
measured as the run goes: a step's duration is the time between two optimizer steps (or two
step() calls without an optimizer); an unlogged step's duration is the training's own pace (an
average), a logged step's excess over it is what the measurement cost. After a logged step that
cost C at a pace of T per step, the next comes ceil(C / (budget * T)) steps later — at most twice
the previous interval, at most MAX_INTERVAL, at least 1. Step 0 is always logged (its cost includes
finding the model's layers, so the second logged step comes at FIRST_INTERVAL), and so the logged
steps depend on the machine's speed (the figures of a logged step do not). Under torch.distributed
every rank must log the same steps: the cost and the pace are combined across ranks (their maxima)
with the logged step's other figures, so every rank plans the same next step.
"""

from __future__ import annotations

import math
import time

FIRST_INTERVAL = 10
MAX_INTERVAL = 10_000


class Cadence:
    def __init__(self, every, budget: float = 0.03):
        self.every, self.budget = every, budget
        self.auto = every == "auto"
        self.next = 0                    # "auto": the next logged step
        self.interval = FIRST_INTERVAL
        self._pace: float | None = None  # seconds per unlogged step (an exponential average)
        self.cost: float | None = None   # the last logged step's excess over the pace
        self._mark: float | None = None
        self._was_logged = False
        self.last: int | None = None     # the last step measured (plan() is told of every one)

    def __call__(self, step: int) -> bool:
        if self.auto:
            return step == self.next
        return bool(self.every(step)) if callable(self.every) else step % self.every == 0

    def tick(self, logged: bool):
        """A step ended (the optimizer stepped): time it, as the training's pace or as a logged
        step's excess over it."""
        if not self.auto:
            return
        now = time.perf_counter()
        if self._mark is not None:
            took = now - self._mark
            if self._was_logged:  # (before the pace is known, the cost is not either)
                self.cost = max(0.0, took - self._pace) if self._pace is not None else None
            else:
                self._pace = took if self._pace is None else 0.9 * self._pace + 0.1 * took
        self._mark, self._was_logged = now, logged

    def figures(self) -> tuple[float, float]:
        """(cost, pace) to be combined across ranks (NaN where not known yet)."""
        return (self.cost if self.cost is not None else math.nan, self._pace if self._pace is not None else math.nan)

    def plan(self, step: int, cost: float = math.nan, pace: float = math.nan):
        """After logged step `step`: when the next one comes. Called for every logged step, so that
        `last` says which was measured ("auto" moves `next` on: asking __call__ afterwards says no)."""
        self.last = step
        if not self.auto:
            return
        if step > 0 and cost == cost and pace == pace and pace > 0:
            wanted = math.ceil(cost / (self.budget * pace)) if cost > 0 else 1
            self.interval = max(1, min(wanted, 2 * self.interval, MAX_INTERVAL))
        self.next = step + self.interval
