"""What a sweep shows: progress and a sweep.csv row per finished run, then sweep_summary.csv,
sweep.png and a table.

Ratios span orders of magnitude, so besides plain mean/std/min/max over seeds they are also
aggregated as log10 (the plot and the table use those: a geometric mean, a band in decades).
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from rich.table import Table

from ..analysis.verdict import BELOW_FLOAT32, BELOW_SHORT, MLP_ENDS
from .. import vocab as V
from ..vocab import BELOW_KEY
from ..report.console import VERDICT_STYLE, fmt, print_phrases, print_table
from ..rundir.files import write_text_atomic
from .plan import cell

# sweep.csv: the swept parameters' columns come first, then these.
RUN_COLUMNS = [
    "seed", "run_dir", "status", "verdict",
    "grad_norm_ratio_first_step", "grad_norm_ratio_last_step",
    "delta_norm_ratio_first_step", "delta_norm_ratio_last_step", BELOW_KEY,
    "final_loss", "final_accuracy", "final_eval_loss", "final_eval_accuracy",
    "steps_completed", "wall_time_s",
    # per-layer delta factor at step 0 vs theory (the fixed point; at the run's depth)
    "measured_factor", "theory_factor", "theory_depth_scale", "theory_factor_at_depth",
    "error",
]
SUMMARY_KEYS = RUN_COLUMNS[2:RUN_COLUMNS.index("measured_factor")]  # copied from each run's summary.json as they are

METRICS = [
    "grad_norm_ratio_first_step", "grad_norm_ratio_last_step", "delta_norm_ratio_first_step",
    "delta_norm_ratio_last_step", "final_loss", "final_accuracy", "final_eval_loss", "final_eval_accuracy",
    "wall_time_s", "measured_factor", "theory_factor", "theory_factor_at_depth",
]
RATIOS = [m for m in METRICS if "_ratio_" in m]
# End-of-run values: a diverged run's "last" ratio and "final" loss are wherever it blew up (often a
# loss of 1e11), so their statistics are over completed runs only; first-step ones over every run.
END_OF_RUN = [m for m in METRICS if m.startswith("final_") or m.endswith("_last_step")]
STATUSES = V.ENDED
STATUS_SHORT = {V.COMPLETED: "ok", V.DIVERGED: "diverged", V.INTERRUPTED: "stopped", V.FAILED: "failed"}


class SweepProgress:
    """One bar for the whole sweep on a terminal, and a line per finished run (plain lines in CI)."""

    def __init__(self, console, total: int, done: int, label: str = "sweep"):
        self.console, self.total, self.done = console, total, done
        self.progress = None
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn(label), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(), console=console,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("sweep", total=total, completed=done)

    def advance(self, label: str, row: dict):
        self.done += 1
        from rich.markup import escape

        v = row.get("verdict")
        what = [str(row["status"])] + ([f"[{VERDICT_STYLE.get(v, 'bold')}]{v}[/]"] if v else [])
        if row.get("final_loss") is not None:
            what.append(f"loss {fmt(row['final_loss'])}")
        if row.get("error"):
            what.append(escape(str(row["error"])))
        what.append(f"{fmt(row.get('wall_time_s'))} s")
        # above the bar on a terminal; wrapped between phrases like every other line
        print_phrases(self.console, what, sep=", ", head=f"[{self.done}/{self.total}] {escape(label)}:")
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done)

    def stop(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


# ----------------------------------------------------------------------------- sweep.csv


def make_row(plan, point, sweep_dir: Path, run_dir: Path | None, error: str | None) -> dict:
    """One sweep.csv row, read from the run's own summary.json so that the two always agree."""
    from ..rundir.files import read_summary

    row = {p.name: v for p, v in zip(plan.params, point.values)}
    row.update(seed=point.seed, run_dir=None, status=V.FAILED, error=error)
    if run_dir is not None and (Path(run_dir) / V.SUMMARY_JSON).exists():
        summary = read_summary(Path(run_dir))
        row.update({k: summary.get(k) for k in SUMMARY_KEYS})
        # the ratios whose layer 0 underflowed float32: their cells stay empty (not 0, and no text in
        # a numeric column), this one names them, space-separated
        row[BELOW_KEY] = " ".join(summary.get(BELOW_KEY) or []) or None
        row["run_dir"] = Path(run_dir).name  # relative to the sweep directory: the sweep can move
        row["error"] = summary.get("error") or (error if summary.get("status") == V.FAILED else None)
        row["_baseline_loss"] = summary.get("baseline_loss")  # for the plot only, not a CSV column
        row["_ends"] = _ends(Path(run_dir), point.config)  # what the ratios compare: for the captions only
        from ..analysis.theory import theory_columns

        row.update(theory_columns(Path(run_dir)))  # empty where theory does not apply (norm, residual, rnn)
    elif run_dir is not None:
        row["run_dir"] = Path(run_dir).name
    return row


def _ends(run_dir: Path, config: dict) -> str:
    """verdict.ends_label of the run's first logged step: 'layer 0/output', a transformer's e.g. 'block0/block5'."""
    from ..analysis.verdict import ends_label
    from ..rundir.files import read_table

    try:
        rows = read_table(run_dir, V.LAYERS_CSV)
    except Exception:  # noqa: BLE001 - no table, no rows to name: the ratio is blank anyway
        return MLP_ENDS
    first = [r for r in rows if r.get("step") == min((r.get("step") for r in rows), default=None)]
    return ends_label(sorted(first, key=lambda r: r["layer"]), (config.get("model") or {}).get("kind"))


def ends_text(groups: list[dict]) -> str:
    """How the captions name the ratio: 'layer-0/output', or the ends the runs compare (a transformer
    sweep over depth: block0/block3, block0/block7)."""
    ends = [e for e in dict.fromkeys(e for g in groups for e in g.get("_ends", ())) if e] or [MLP_ENDS]
    if ends == [MLP_ENDS]:
        return "layer-0/output"
    return ", ".join(ends) if len(ends) <= 3 else f"{ends[0]} … {ends[-1]}"  # in plan order: a depth sweep's ends


def csv_text(columns: list[str], rows: list[dict]) -> str:
    """A header and rows as CSV text (quoted where needed: error messages hold commas)."""
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([columns] + [[cell(r.get(c)) for c in columns] for r in rows])
    return buf.getvalue()


class SweepCsv:
    """sweep.csv: rewritten atomically at the start (a resume keeps the finished rows), then one
    complete row appended and flushed per finished run, so an interrupted sweep leaves a valid file."""

    def __init__(self, path: Path, params: list, rows: list[dict]):
        self.columns = [p.name for p in params] + RUN_COLUMNS
        write_text_atomic(path, csv_text(self.columns, rows))
        self.file = open(path, "a", newline="", encoding="utf-8")

    def append(self, row: dict):
        line = csv_text(self.columns, [row]).split("\n", 1)[1]  # the row without the header
        self.file.write(line)  # one write call: whole rows only
        self.file.flush()

    def close(self):
        self.file.close()


# ----------------------------------------------------------------------------- aggregation


def _finite(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values)}


def aggregate(plan, rows: list[dict]) -> list[dict]:
    """One group per grid point (over seeds), in plan order."""
    names = [p.name for p in plan.params]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(repr(r[n]) for n in names), []).append(r)
    out = []
    for members in groups.values():
        g = {n: members[0][n] for n in names}
        g["n_runs"] = len(members)
        for s in STATUSES:
            g[f"n_{s}"] = sum(m["status"] == s for m in members)
        verdicts = [m.get("verdict") or "-" for m in members]
        counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
        g["verdicts"] = " ".join(v if len(counts) == 1 else f"{v}:{c}" for v, c in counts.items())
        completed = [r for r in members if r["status"] == V.COMPLETED]
        for m in METRICS:
            values = _finite(r.get(m) for r in (completed if m in END_OF_RUN else members))
            for stat, value in _stats(values).items():
                g[f"{m}_{stat}"] = value
            if m in RATIOS:  # log10 over seeds: positive ratios only
                for stat, value in _stats([math.log10(v) for v in values if v > 0]).items():
                    g[f"{m}_log10_{stat}"] = value
        g["_baseline_loss"] = next((m.get("_baseline_loss") for m in members if m.get("_baseline_loss")), None)
        g["_ends"] = [m.get("_ends") for m in members]
        g["_below"] = {m: sum(m in str(r.get(BELOW_KEY) or "").split() for r in members) for m in RATIOS}
        out.append(g)
    return out


def summary_columns(plan) -> list[str]:
    cols = [p.name for p in plan.params] + ["n_runs"] + [f"n_{s}" for s in STATUSES] + ["verdicts"]
    cols += [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "min", "max")]
    cols += [f"{m}_log10_{s}" for m in RATIOS for s in ("mean", "std", "min", "max")]
    return cols


def write_report(sweep_dir: Path, plan, rows: list[dict], console):
    groups = aggregate(plan, rows)
    write_text_atomic(sweep_dir / "sweep_summary.csv", csv_text(summary_columns(plan), groups))
    if rows:
        try:
            plot(sweep_dir / "sweep.png", plan, groups)
        except Exception as e:  # noqa: BLE001 - a plot problem must not hide the results
            console.print(f"[yellow]warning:[/] sweep.png not written: {type(e).__name__}: {e}")
    table = summary_table(plan, groups)
    print_table(console, table)


# ----------------------------------------------------------------------------- console table


def _ratio(g: dict, when: str) -> str:
    key = f"delta_norm_ratio_{when}_step"
    log, below = g[f"{key}_log10_mean"], g.get("_below", {}).get(key)
    if log is not None:  # the runs that underflowed have no number to average: say how many
        return fmt(10 ** log, 2) + (f" ({below} {BELOW_SHORT})" if below else "")
    if below:
        return BELOW_SHORT
    return "0" if g[f"{key}_max"] == 0 else ""  # an exact 0: a dead layer above layer 0


def summary_table(plan, groups: list[dict]) -> Table:
    several = len(plan.seeds) > 1
    show_status = several or any(g["n_completed"] != g["n_runs"] for g in groups)
    title = f"sweep: {ends_text(groups)} delta_norm ratio at the first and last logged step"
    if several:
        title += f"; {len(plan.seeds)} seeds: ratios as geometric mean, loss as mean ± std"
    title += "; last-step ratio, final loss and accuracy: completed runs only"
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for p in plan.params:
        t.add_column(p.name, justify="right", no_wrap=True)
    if show_status:
        t.add_column("runs")
    t.add_column("verdict", no_wrap=True)
    t.add_column("ratio first", justify="right", no_wrap=True)
    t.add_column("ratio last", justify="right", no_wrap=True)
    t.add_column("final loss", justify="right", no_wrap=True)
    t.add_column("eval acc", justify="right", no_wrap=True)
    t.add_column("time s", justify="right", no_wrap=True)
    for g in groups:
        verdict = g["verdicts"]
        style = VERDICT_STYLE.get(verdict)
        loss = fmt(g["final_loss_mean"])
        if several and g["final_loss_std"] is not None:
            loss += f" ± {fmt(g['final_loss_std'], 2)}"
        cells = [fmt(g[p.name]) if not isinstance(g[p.name], bool) else str(g[p.name]).lower() for p in plan.params]
        if show_status:
            cells.append(", ".join(f"{g[f'n_{s}']} {STATUS_SHORT[s]}" for s in STATUSES if g[f"n_{s}"]))
        cells += [f"[{style}]{verdict}[/]" if style else verdict, _ratio(g, "first"), _ratio(g, "last"), loss,
                  fmt(g["final_eval_accuracy_mean"]), fmt(g["wall_time_s_mean"], 2)]
        t.add_row(*cells)
    return t


# ----------------------------------------------------------------------------- plot


# Counts of layers or time steps the gradient passes through: it decays exponentially in them, a
# straight line on the log-y panels only when this axis is linear.
LINEAR_KEYS = ("model.depth", "task.seq_len")


def _axis(values: list, key: str = ""):
    """x positions for the swept values: numbers as numbers (log scale when they span a decade or
    more, except depth and sequence length), anything else as evenly spaced categories."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        positive = all(v > 0 for v in values)
        log = positive and len(values) > 2 and max(values) / min(values) >= 8 and key not in LINEAR_KEYS
        base = 2 if log and all(isinstance(v, int) for v in values) else 10
        return {v: float(v) for v in values}, (base if log else None)
    return {v: float(i) for i, v in enumerate(values)}, None


def _label(v) -> str:
    return str(v).lower() if isinstance(v, bool) else fmt(v)


def plot(path: Path, plan, groups: list[dict]):
    import matplotlib.pyplot as plt

    fig = figure(plan, groups)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure(plan, groups: list[dict]):
    """sweep.png's figure: the first swept parameter on x, a line per value of the others."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed (CI, ssh, workers)
    import matplotlib.pyplot as plt

    xp, others = plan.params[0], plan.params[1:]
    xs, log_base = _axis(xp.values, xp.key)
    lines: dict[tuple, list[dict]] = {}
    for g in groups:
        lines.setdefault(tuple(repr(g[p.name]) for p in others), []).append(g)

    ends = ends_text(groups).replace("layer-0/output", "layer 0 / output")
    panels = [("delta_norm_ratio_first_step", f"log10 delta_norm ratio ({ends})\nat the first logged step"),
              ("delta_norm_ratio_last_step", f"log10 delta_norm ratio ({ends})\nat the last logged step"),
              ("final_loss", "final training loss")]
    fig, axes = plt.subplots(1, 3, figsize=(16.5 if others else 15, 4.6), layout="constrained")
    floor: dict = {}  # axis -> [(x values, color, label)] of ratios with no log10 to plot
    for i, members in enumerate(lines.values()):
        color = f"C{i % 10}"
        label = ", ".join(f"{p.name}={_label(members[0][p.name])}" for p in others) or None
        members = sorted(members, key=lambda g: xs[g[xp.name]])
        for ax, (metric, _) in zip(axes, panels):
            key = f"{metric}_log10" if "_ratio_" in metric else metric
            pts = [(xs[g[xp.name]], g[f"{key}_mean"], g[f"{key}_min"], g[f"{key}_max"]) for g in members
                   if g[f"{key}_mean"] is not None]
            if pts:
                x, mean, lo, hi = zip(*pts)
                ax.plot(x, mean, "o-", color=color, label=label, ms=4)
                if len(plan.seeds) > 1:
                    ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
            # A ratio below float32's range (or an exact 0, a dead layer) has no log: _floor marks it.
            for what, test in ((f"ratio {BELOW_FLOAT32}", lambda g, m=metric: g.get("_below", {}).get(m)),
                               ("ratio exactly 0 (a dead layer)", lambda g, m=metric: g[f"{m}_min"] == 0)):
                at = [xs[g[xp.name]] for g in members if "_ratio_" in metric and test(g)]
                if at:
                    floor.setdefault(ax, []).append((at, color, what))
            # Runs that diverged have no end-of-run values: mark where they are instead of a silent gap.
            bad = [xs[g[xp.name]] for g in members if g["n_diverged"] or g["n_failed"]]
            if bad and metric in END_OF_RUN:
                ax.plot(bad, [0.97] * len(bad), "x", color=color, ms=9, mew=2, transform=ax.get_xaxis_transform(),
                        label="a run diverged or failed (left out)")
    baseline = next((g["_baseline_loss"] for g in groups if g.get("_baseline_loss")), None)
    for ax, (metric, title) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xp.name)
        if log_base:
            ax.set_xscale("log", base=log_base)
            ax.set_xticks(list(xs.values()), [fmt(v) for v in xs])
            ax.minorticks_off()
        else:
            ax.set_xticks(list(xs.values()), [_label(v) for v in xs])
        ax.grid(alpha=0.3)
        if "_ratio_" in metric:  # the verdict's thresholds: below -2 vanishing, above +2 exploding
            ax.axhspan(-2, 2, color="green", alpha=0.06, lw=0)
            ax.axhline(-2, color="gray", ls="--", lw=0.8)
            ax.axhline(2, color="gray", ls="--", lw=0.8)
        elif baseline is not None:
            ax.axhline(baseline, color="gray", ls=":", lw=1, label="input-blind baseline")
    for ax, marks in floor.items():
        _floor(ax, marks)
    if others:
        # One legend for the figure: every line (a line may have no point in some panel: a diverged
        # run has no final loss) and each marker kind once.
        legend: dict = {}
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        fig.legend(list(legend.values()), list(legend), loc="outside right upper", fontsize=8)
    else:  # a single line: only the markers need explaining, in the panel that has them
        for ax in axes:
            if ax.get_legend_handles_labels()[1]:
                ax.legend(fontsize=8, loc="best")
    seeds = f"{len(plan.seeds)} seeds, band = min..max" if len(plan.seeds) > 1 else f"seed {plan.seeds[0]}"
    fig.suptitle(f"vgrad sweep over {', '.join(p.name for p in plan.params)} ({seeds}); "
                 "dashed lines: verdict thresholds (< -2 vanishing, > +2 exploding)", fontsize=10)
    return fig


def _floor(ax, marks: list) -> None:
    """Ratios with no log10 (below float32's range, or 0) in a grey band added under the panel's
    real values: at a bottom edge of their own, they cannot be read as a value next to the others."""
    lo, hi = ax.get_ylim()
    band = max(0.2 * (hi - lo), 1.0)
    ticks = [t for t in ax.get_yticks() if lo <= t <= hi]  # no tick in the band: it holds no value
    ax.set_ylim(lo - band, hi)
    ax.set_yticks(ticks)
    ax.axhspan(lo - band, lo, color="gray", alpha=0.15, lw=0)
    ax.text(0.01, lo - band * 0.06, "no log10: below float32 range, or 0", fontsize=7, color="dimgray",
            transform=ax.get_yaxis_transform(), va="top")
    for at, color, label in marks:
        ax.plot(at, [lo - band / 2] * len(at), "v", color=color, ms=8, label=label, clip_on=False)
