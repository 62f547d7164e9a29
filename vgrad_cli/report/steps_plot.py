"""plots/steps.png: the every-step tier (steps.csv) — the loss and the total gradient norm at every
training step, not only the logged ones: a spike or a NaN between two logged steps shows here."""

from __future__ import annotations

from pathlib import Path

from .axes import FIGSIZE, decades, diverged_line, has_values, marks, positive, pyplot, run_title, save



def every_step(run, path: Path) -> Path | None:
    rows = run.every_step
    if not rows:
        return None
    plt = pyplot()
    fig, (ax_l, ax_g) = plt.subplots(1, 2, figsize=FIGSIZE["steps"], layout="constrained")
    steps = [r["step"] for r in rows]
    _line(ax_l, steps, [r.get("loss") for r in rows], "loss (every step)", "C0")
    ax_l.set_title("loss at every step")
    _line(ax_g, steps, [r.get("grad_norm_total") for r in rows], "grad_norm_total (before clipping)", "C3")
    clipped = [r.get("grad_norm_clipped") for r in rows]
    if any(v is not None for v in clipped):
        _line(ax_g, steps, clipped, "after clipping", "C2")
    ax_g.set_title("total gradient norm at every step")
    bad = [r["step"] for r in rows if r.get("finite") == 0 and not r.get("skipped")]
    for ax in (ax_l, ax_g):
        if bad:  # where a loss or a gradient was NaN or infinite: a gap in the line, marked here
            ax.axvline(bad[0], color="red", lw=1, ls=":", label=f"step {bad[0]}: first non-finite loss or norm")
        diverged_line(ax, run)
        ax.set_xlabel("training step")  # diverged_line set integer ticks
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.suptitle(run_title("every step (steps.csv)", run))
    return save(fig, path)


def _line(ax, steps: list[int], values: list, label: str, color: str):
    ys = positive(values)
    if not has_values(ys):
        return
    ax.plot(steps, ys, lw=0.8, color=color, label=label, **marks(ys))
    if decades(ys):
        ax.set_yscale("log")
