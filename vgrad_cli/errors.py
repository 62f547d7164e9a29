"""The one exception type for bad input: the CLI prints its message on one line and exits 2."""


class UsageError(Exception):
    """Bad input from the user (config, flags, paths). Message must name what and what is allowed."""

    exit_code = 2


class GradientProblem(Exception):
    """Raised by Monitor(..., on_problem="raise") the first time a gradient problem shows.
    `kind`: vanishing | exploding | dying | diverged | nonfinite (a non-finite gradient while the loss
    is finite); `step`: the step it showed at."""

    def __init__(self, kind: str, step: int, message: str):
        super().__init__(message)
        self.kind, self.step = kind, step
