"""`vgrad_cli.load_run(path)`: a run's tables as pandas DataFrames, for a notebook.

    run = vgrad_cli.load_run("runs/deep-sigmoid-20261125-073255-b78c")   # or a run's name under runs/
    run                      # displayed: the verdict and the per-layer table (first and last step)
    run.layers.pivot(index="layer", columns="step", values="grad_norm")

pandas is an optional extra (`pip install 'vgrad[notebook]'`), imported here only: `import vgrad_cli`
stays light. The tables are read by the same code as every command (rundir/store.py: the checks, a
torn last line of a run still going), then handed to pandas: empty cells are NaN.
"""

from __future__ import annotations

from pathlib import Path

from .. import vocab as V


def _pandas():
    try:
        import pandas
    except ImportError as e:
        raise ImportError("vgrad_cli.load_run returns pandas DataFrames: pip install 'vgrad[notebook]' "
                          "(or pandas); without it, vgrad_cli.rundir.store.load_run gives the rows as dicts") from e
    return pandas


def _frame(rows: list[dict] | None):
    """Rows as a DataFrame: every column but the text ones numeric (an empty cell: NaN)."""
    pd = _pandas()
    if rows is None:
        return None
    df = pd.DataFrame(rows)
    for col in df.columns:
        if col not in V.TEXT_COLUMNS:
            try:
                df[col] = pd.to_numeric(df[col])  # a column of None becomes NaN, not objects
            except (ValueError, TypeError):
                pass  # text where numbers were expected: kept as it is
    return df


class RunTables:
    """One run for a notebook: .layers (the run's view: its blocks when it has them), .modules
    (layers.csv's rows when the view is the block one, else None), .metrics, .time (recurrent runs),
    .float64, as DataFrames; .summary and .config as dicts; .verdict; displayed as HTML."""

    def __init__(self, run):
        self.run = run  # the rundir Run the frames were made from (what the HTML view reads)
        self.path, self.name = run.path, run.name
        self.summary, self.config = run.summary, run.config
        self.layers, self.metrics = _frame(run.layers), _frame(run.metrics)
        self.modules, self.time, self.float64 = _frame(run.modules), _frame(run.time), _frame(run.float64)

    @property
    def verdict(self) -> str | None:
        return self.summary.get("verdict")

    def __repr__(self) -> str:
        return f"<vgrad run {self.name}: {self.run.status}, verdict {self.verdict}, {len(self.run.steps)} logged steps>"

    def _repr_html_(self) -> str:
        from .html import compact_html

        return compact_html(self.run)


def load_run(path, runs_dir="runs") -> RunTables:
    """A run directory, or a run's name (a unique prefix) under runs_dir, as DataFrames."""
    from ..errors import UsageError
    from ..rundir.store import load_run as read, resolve

    _pandas()  # say what is missing before reading anything
    paths = resolve(str(path), Path(runs_dir))
    if len(paths) > 1:
        raise UsageError(f"'{path}' is a sweep of {len(paths)} runs: load one of them")
    return RunTables(read(paths[0]))
