"""Drawing helpers shared by the figures in plots.py: masking for log axes, markers for short
lines, a diverged run's marker line, legends outside the axes, saving at a fixed size.

matplotlib is imported inside the functions (Agg backend), so importing this module costs nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from .. import vocab as V

DPI = 100
MAX_LINES = 6  # logged steps drawn in one panel: first, last and evenly spaced ones between
FEW_POINTS = 30  # a line with at most this many points gets markers
FEW_LAYERS = 3   # up to this many layers, a statistic reads better as lines over training steps

FIGSIZE = {  # inches; at DPI 100 -> pixels
    "gradient_flow": (12, 4.8),
    "grad_heatmap": (10, 5.5),
    "loss": (12, 4.5),
    "activations": (12, 4.5),
    "gradient_through_time": (10, 5),
    "compare": (16, 6),  # compare_plot.py
    "steps": (12, 4.5),  # steps_plot.py
}


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def positive(values) -> list:
    """For a log axis: positive finite numbers stay, anything else becomes NaN (a gap)."""
    return [v if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else math.nan for v in values]


def finite(values) -> list:
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else math.nan for v in values]


def has_values(values) -> bool:
    return any(not math.isnan(v) for v in values)


def marks(values) -> dict:
    """Markers when a line has few points: a line through one point is invisible (a run that diverged
    at step 2 logged only step 0)."""
    return {"marker": "o", "ms": 4} if len(values) <= FEW_POINTS else {}


def diverged_line(ax, run):
    """Where a diverged run's loss became non-finite; training steps are whole numbers on the x-axis."""
    integer_x(ax)
    step = run.summary.get("diverged_step")
    if run.status == V.DIVERGED and isinstance(step, int):
        ax.axvline(step, color="tab:red", ls="--", lw=1, label=f"diverged at step {step} (non-finite loss)")


def include_y(ax, y: float):
    """Widen the y-axis so that y (a baseline) is on it: where the loss sits against it is the story."""
    lo, hi = ax.get_ylim()
    if lo <= y <= hi:
        return
    if ax.get_yscale() == "log":
        ax.set_ylim(min(lo, y / 2), max(hi, y * 2))
    else:
        pad = 0.05 * (max(hi, y) - min(lo, y))
        ax.set_ylim(min(lo, y - pad), max(hi, y + pad))


def pick_steps(steps: list[int], n: int = MAX_LINES) -> list[int]:
    if len(steps) <= n:
        return steps
    idx = sorted({round(i * (len(steps) - 1) / (n - 1)) for i in range(n)})
    return [steps[i] for i in idx]


def empty_note(ax, text: str):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def run_title(what: str, run) -> str:
    """Three lines: what the figure shows and which run; the run's model and optimiser (what tells two
    chapters apart); its status and verdict."""
    verdict = run.summary.get("verdict") or "no verdict yet"
    setup = " | ".join(t for t in (run.model_text(), run.train_text()) if t)
    return f"{what}: {run.name}\n{setup}\n{run.status}, verdict {verdict}"


def decades(values) -> bool:
    """Whether the positive finite values span more than two decades: a log axis then."""
    v = [x for x in positive(values) if not math.isnan(x)]
    return bool(v) and max(v) / min(v) > 100


def integer_x(ax):
    """Layers and steps are whole numbers: ticks at round ones (0, 200, 400, not 0.25 or 150)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def below_float32(v) -> bool:
    """A 0 or a value under float32's smallest normal: no place on a log axis, a ▼ at the bottom."""
    from ..analysis.verdict import FLOAT32_TINY

    return isinstance(v, (int, float)) and 0 <= v < FLOAT32_TINY


def bottom_note(ax, exact: bool):
    """What a ▼ at the bottom of a log axis means: an exact 0 only when it is one (an entirely dead
    layer: verdict.underflowed), else also a value float32 could not hold (a 0 or a subnormal)."""
    from ..analysis.verdict import BELOW_FLOAT32

    text = "exactly 0 (a dead layer)" if exact else f"0 or {BELOW_FLOAT32}"
    ax.annotate(f"▼ at the bottom = {text}", xy=(0.01, 0.99), xycoords="axes fraction", fontsize=8, va="top")


def layer_lines(ax, run, column: str, steps: list[int], cmap):
    """One line per step: this column against layer index, log y. A block view's line joins only the
    rows of one residual stream (the embedding and a stack's blocks: stream_groups); its head (δ at
    the logits, another tensor) and the rows between stacks are points of their own. Returns whether
    anything was drawn."""
    from ..analysis.verdict import underflowed

    drawn, zeros = False, []
    for i, step in enumerate(steps):
        rows = run.layer_rows(step)
        below = [underflowed(rows, j, column) for j in range(len(rows))]  # a subnormal's digits are lost too
        y = positive(None if b else r.get(column) for r, b in zip(rows, below))
        color = cmap(i / max(1, len(steps) - 1))
        if has_values(y):
            lines, alone = stream_groups(rows)
            for k, group in enumerate(lines):
                ax.plot([rows[j]["layer"] for j in group], [y[j] for j in group], marker="o", ms=3, lw=1.5,
                        color=color, label=f"step {step}" if k == 0 else None)
            if alone:
                ax.plot([rows[j]["layer"] for j in alone], [y[j] for j in alone], ls="none", marker="D", ms=4,
                        mfc="none", color=color, label=None if lines else f"step {step}")
            drawn = True
        zeros += [(r["layer"], color, b) for r, b in zip(rows, below) if b or r.get(column) == 0]
    if drawn:
        ax.set_yscale("log")
        if zeros:  # no place on a log axis, but it is the finding (dead layers, vanishing): mark it
            bottom = ax.get_ylim()[0]
            ax.scatter([z[0] for z in zeros], [bottom] * len(zeros), marker="v", s=36, c=[z[1] for z in zeros],
                       clip_on=False, zorder=5)
            bottom_note(ax, exact=not any(z[2] for z in zeros))
    return drawn


def stream_groups(rows: list[dict]) -> tuple[list[list[int]], list[int]]:
    """(runs of row indices a line may join, indices drawn as points alone). Module rows: one line.
    A block view: the embedding (δ: the stream entering the first block) with the blocks after it,
    each stack its own line; `between`, `head` and `other` rows alone."""
    if not any(r.get("role") for r in rows):
        return [list(range(len(rows)))], []
    lines, alone, key = [], [], None
    for j, r in enumerate(rows):
        role = r.get("role")
        if role == "block" and lines and key in (r.get("stack"), "embedding"):
            lines[-1].append(j)
        elif role in ("block", "embedding"):
            lines.append([j])
        else:
            alone.append(j)
        key = r.get("stack") if role == "block" else role
    return lines, alone


def row_ticks(ax, run, axis: str = "x") -> bool:
    """A block view's rows named on the axis (embedding, h.0 .. h.11, head; a frozen one greyed); the
    axis label says what the short names stand for and what greyed names and points alone mean.
    False (nothing done) for module rows."""
    from .console import short_names

    rows = run.layer_rows(run.steps[0]) if run.steps else []
    if not any(r.get("role") for r in rows):
        return False
    names, legend = short_names(rows)
    every = max(1, -(-len(rows) // 30))  # at most ~30 labels: a 24-block stack keeps all of its own
    shown = [k for k in range(len(rows)) if k % every == 0 or k == len(rows) - 1]
    where, labels = [rows[k]["layer"] for k in shown], [names[k] for k in shown]
    small = {"fontsize": 8 if len(shown) <= 16 else 7}
    frozen = {rows[k]["layer"] for k in shown if rows[k].get("note") == "frozen"}
    about = [legend] if legend else []
    about += ["grey: frozen, not measured"] if frozen else []
    if axis == "x":
        about += ["◇: off the stream (the head's δ is at its output)"] if stream_groups(rows)[1] else []
        ax.set_xticks(where, labels, rotation=90 if len(shown) > 6 else 0, **small)
        ax.set_xlabel("\n".join(["block view row"] + about) if len(", ".join(about)) > 45 else
                      "block view row" + (f" ({', '.join(about)})" if about else ""), fontsize=9)
    else:
        ax.set_yticks(where, labels, **small)
        ax.set_ylabel("block view row" + (f" ({', '.join(about)})" if about else ""))
    for tick, at in zip(ax.get_xticklabels() if axis == "x" else ax.get_yticklabels(), where):
        if at in frozen:
            tick.set_color("0.6")
    return True


def step_legend(fig, axes, title: str = "logged step"):
    """One legend for the whole figure, outside the axes, so that it never hides a line."""
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            # centred, not upper: a long two-line title would run into it
            fig.legend(handles, labels, loc="outside right center", fontsize=8, title=title)
            return


def over_steps(ax, run, column: str, log: bool) -> bool:
    """One line per layer: this column against the training step. For nets with few layers, where a
    heat-map or a plot against the layer index would show one or two points per step."""
    by_layer: dict = {}
    for r in run.layers:
        if isinstance(r.get(column), (int, float)):
            by_layer.setdefault((r["layer"], r.get("name")), []).append(r)
    drawn = False
    for i, ((layer, name), rows) in enumerate(sorted(by_layer.items())):
        y = (positive if log else finite)(r[column] for r in rows)
        if has_values(y):
            ax.plot([r["step"] for r in rows], y, lw=1.5, color=f"C{i}", label=f"layer {layer} ({name})", **marks(y))
            drawn = True
    if drawn and log:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    return drawn
