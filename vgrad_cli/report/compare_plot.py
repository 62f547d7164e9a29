"""`vgrad compare --plot`: several runs side by side in one figure (plots.py draws a single run)."""

from __future__ import annotations

from pathlib import Path

from .axes import below_float32, empty_note, has_values, integer_x, positive, pyplot, save
from .plots import FIGSIZE, decades, draw_loss


def compare_plot(runs, path) -> Path:
    """Runs side by side: grad_norm and delta_norm per layer (first step dashed, last solid), loss.
    The run names go in one legend under the panels (in columns when there are many runs), so that
    no legend covers a curve."""
    from .compare import label
    from ..rundir.store import Run, load_run

    runs = [r if isinstance(r, Run) else load_run(Path(r)) for r in runs]
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=FIGSIZE["compare"], layout="constrained")
    palette = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    colors = [palette(i % palette.N) for i in range(len(runs))]
    from ..analysis.verdict import BELOW_FLOAT32

    left_out = set()  # panels where a value below float32's range (a 0 or a subnormal) is a gap, not a point
    for run, color in zip(runs, colors):
        steps = run.steps
        for ax, col in ((axes[0], "grad_norm"), (axes[1], "delta_norm")):
            for step, ls in ((steps[0], "--"), (steps[-1], "-")) if steps else ():
                rows = run.layer_rows(step)
                values = [r.get(col) for r in rows]
                if any(below_float32(v) for v in values):
                    left_out.add(col)
                ax.plot([r["layer"] for r in rows], positive(None if below_float32(v) else v for v in values),
                        ls=ls, marker="o", ms=3, color=color)
        draw_loss(axes[2], run, color)
    for ax, col in ((axes[0], "grad_norm"), (axes[1], "delta_norm")):
        if col in left_out:
            ax.annotate(f"gaps: 0 or {BELOW_FLOAT32}", xy=(0.01, 0.99), xycoords="axes fraction",
                        fontsize=8, va="top")
        if any(has_values(list(ln.get_ydata())) for ln in ax.get_lines()):
            ax.set_yscale("log")
        else:
            empty_note(ax, f"no positive finite {col} values")
        ax.set_title(f"{col} per layer (dashed: first step, solid: last)")
        ax.set_xlabel("layer (0 = input side)")
        ax.set_ylabel(f"{col} (log scale)")
        integer_x(ax)
    if decades([y for ln in axes[2].get_lines() for y in ln.get_ydata()]):
        axes[2].set_yscale("log")
        axes[2].set_ylabel("loss (log scale)")
    axes[2].set_title("loss (line: train batch, dots: eval)")
    from matplotlib.lines import Line2D

    many = len(runs) > 4
    handles = [Line2D([], [], color=c, lw=2) for c in colors]
    texts = [f"{label(i)} = {r.name} (" + ("" if many else f"{r.model_text()}; ")
             + f"{r.status}, {r.summary.get('verdict') or 'no verdict'})" for i, r in enumerate(runs)]
    fig.legend(handles, texts, loc="outside lower center", ncol=1 if not many else (2 if len(runs) <= 12 else 3),
               fontsize=9 if not many else 7)
    names = " vs ".join(str(r.summary.get("name", r.name)) for r in runs)
    fig.suptitle(f"vgrad compare: {names}" if len(runs) <= 3 else f"vgrad compare: {len(runs)} runs")
    return save(fig, Path(path))
