"""One figure per chapter (figures/<chapter>.png, linked from story.md): the back-propagated error at
step 0 and at the end, one line per seed, so that a slide shows the spread the table summarizes.
An MLP's is delta_norm across layers; a recurrent net's is ||dL/dh_t|| back in time (time.csv)."""

from __future__ import annotations

from pathlib import Path

from ..report.axes import below_float32, bottom_note, positive, pyplot, save
from ..rundir.store import load_run
from .. import vocab as V

FIGSIZE = (11, 4.2)  # inches at 100 dpi: 1100 x 420 pixels, a slide's width


def chapter_figures(story_dir: Path, groups: list[dict], rows: list[dict]) -> dict[str, str]:
    """Draw every chapter that has a finished run; returns chapter -> the figure's path in story_dir."""
    out = {}
    for g in groups:
        runs = [load_run(story_dir / r["run_dir"]) for r in rows
                if r["chapter"] == g["chapter"] and r["status"] in V.FINAL and r.get("run_dir")]
        if runs:
            rel = f"figures/{g['chapter']}.png"
            draw(runs, g, story_dir / rel)
            out[g["chapter"]] = rel
    return out


def _profile(run, step: int, recurrent: bool) -> tuple[list, list]:
    """x and delta_norm at one logged step: per layer, or per t for the top recurrent layer."""
    if not recurrent:
        rows = run.layer_rows(step)
        return [r["layer"] for r in rows], [r["delta_norm"] for r in rows]
    rows = run.time_rows(step)
    top = max((r["layer"] for r in rows), default=0)
    rows = [r for r in rows if r["layer"] == top]
    return [r["t"] for r in rows], [r["delta_norm"] for r in rows]


def draw(runs: list, g: dict, path: Path) -> Path:
    import textwrap

    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    recurrent = g["_chapter"].recurrent
    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE, layout="constrained", sharey=True)
    zeros: list[tuple] = []  # (axis, x, color): exactly 0 has no place on a log axis but is the finding
    ends = set()
    for i, run in enumerate(sorted(runs, key=lambda r: r.summary.get("seed", 0))):
        color = f"C{i % 10}"
        label = f"seed {run.summary.get('seed')}" + ("" if run.status == V.COMPLETED else f" ({run.status})")
        steps = run.steps
        panels = [(axes[0], steps[0])] if steps else []
        if run.status == V.COMPLETED and len(steps) > 1:  # a diverged run has no meaningful end
            panels.append((axes[1], steps[-1]))
            ends.add(steps[-1])
        for ax, step in panels:
            x, y = _profile(run, step, recurrent)
            y_log = positive(None if below_float32(v) else v for v in y)
            ax.plot(x, y_log, marker="o" if len(x) <= 40 else None, ms=3, lw=1.3, color=color, label=label, alpha=0.85)
            # a story figure has no dead-layer test at hand: a 0 here may be float32's (bottom_note)
            zeros += [(ax, xi, color) for xi, yi in zip(x, y) if below_float32(yi)]
    end = f"step {ends.pop()}" if len(ends) == 1 else "the last logged step"
    for ax, when in zip(axes, ("step 0 (before any update)", f"end: {end} (completed runs)")):
        ax.set_yscale("log")
        ax.set_title(when)
        ax.set_xlabel("time step t (0 = first input)" if recurrent else "layer (0 = input side)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, x, color in zeros:
        ax.plot([x], [0.02], "v", color=color, ms=7, transform=ax.get_xaxis_transform(), clip_on=False)
    for ax in {z[0] for z in zeros}:
        bottom_note(ax, exact=False)
    axes[0].set_ylabel("||dL/dh_t|| (log scale)" if recurrent else "delta_norm ||dL/dz|| (log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    title = textwrap.shorten(f"{g['chapter']}: {g['shows']}", 130, placeholder=" …")
    fig.suptitle(f"{title}\n{g['verdicts'] or 'no verdict'}", fontsize=10)
    return save(fig, path)
