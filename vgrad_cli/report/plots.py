"""PNG figures for a run directory (`plots/`) and for `vgrad compare --plot`.

matplotlib is imported inside the functions, with the non-interactive Agg backend, so importing
this module costs nothing and plotting works without a display. Every figure has a fixed size
(no tight bounding box), so a figure's pixel size is FIGSIZE x DPI whatever it shows.
Gradients span many decades, so their axes are logarithmic; zero, negative, NaN and infinite
values cannot sit on a log axis and are masked (a gap in the line), never a crash.
"""

from __future__ import annotations

import math
from pathlib import Path

from .axes import (  # noqa: F401 - DPI, FIGSIZE: figure sizes are FIGSIZE x DPI, part of this module's interface
    DPI, FIGSIZE, FEW_LAYERS, below_float32, decades, diverged_line, empty_note, finite, has_values, include_y, integer_x, layer_lines,
    marks, over_steps, pick_steps, pyplot, positive, row_ticks, save, step_legend, run_title,
)



def gradient_flow(run, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE["gradient_flow"], layout="constrained")
    steps = pick_steps(run.steps)
    cmap = plt.get_cmap("viridis")
    for ax, col, what in ((axes[0], "grad_norm", "parameter gradient ||dL/dW||"),
                          (axes[1], "delta_norm", "back-propagated error ||dL/dz||")):
        if not layer_lines(ax, run, col, steps, cmap):
            empty_note(ax, f"no positive finite {col} values")
        ax.set_title(f"{col}: {what}")
        ax.set_xlabel("layer (0 = input side)")
        ax.set_ylabel(f"{col} (log scale)")
        if not row_ticks(ax, run):  # a block view: its rows by name
            integer_x(ax)
    _theory_line(axes[1], run)
    step_legend(fig, axes)
    fig.suptitle(run_title("gradient flow", run))
    return save(fig, path)


def _theory_line(ax, run):
    """Theory's prediction at step 0 (plain and batch-norm MLPs): delta changes by the predicted
    factor per layer -- layer by layer along the variance map's trajectory where the run's data is
    known (factor_trajectory), else sqrt(chi_1) at the fixed point. Anchored on the measured step-0
    delta_norm of the last hidden layer, drawn back to layer 0."""
    from ..analysis.theory import theory_for_run

    th = theory_for_run(run.path) or {}
    rows = [r for r in run.layer_rows(run.steps[0]) if r.get("name") != "output"] if run.steps else []
    if not th.get("applicable") or not rows or not has_values(positive([rows[-1].get("delta_norm")])):
        return
    last, anchor = rows[-1]["layer"], rows[-1]["delta_norm"]
    per_layer = th.get("factor_trajectory") or [th["factor"]] * last  # d_l / d_{l+1}, l = 0 .. last-1
    if len(per_layer) != last:
        return
    ys = [anchor]
    for f in reversed(per_layer):
        ys.insert(0, ys[0] * f)
    (line,) = ax.plot(range(last + 1), ys, ls="--", lw=1.2, color="black")
    at = th.get("factor_at_depth") or th["factor"]
    ax.legend([line], [f"theory at step 0: x{at:.3g} per layer"], loc="lower right", fontsize=8)


def grad_heatmap(run, path: Path) -> Path:
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE["grad_heatmap"], layout="constrained")
    steps = run.steps
    n_layers = max((r["layer"] for r in run.layers), default=-1) + 1
    if n_layers <= FEW_LAYERS:  # a heat-map of one or two rows shows colours, not a trend
        if over_steps(ax, run, "grad_norm", log=True):
            diverged_line(ax, run)
            ax.legend(fontsize=8)
        else:
            empty_note(ax, "no positive finite grad_norm values")
        ax.set_ylabel("grad_norm (log scale)")
        fig.suptitle(run_title("grad_norm per layer over training", run))
        return save(fig, path)
    grid = np.full((max(n_layers, 1), max(len(steps), 1)), np.nan)
    col_of = {s: j for j, s in enumerate(steps)}
    for r in run.layers:
        if r["step"] not in col_of:  # a diverged run's non-finite step: evidence in the table, not a column
            continue
        v = positive([r.get("grad_norm")])[0]
        grid[r["layer"], col_of[r["step"]]] = math.log10(v) if not math.isnan(v) else np.nan
    if np.isfinite(grid).any():
        # masked cells (zero, NaN, inf) in grey, not in a colour that means a value
        cmap = plt.get_cmap("magma").with_extremes(bad="0.8")
        extent = (-0.5, len(steps) - 0.5, -0.5, n_layers - 0.5)
        im = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap=cmap,
                       interpolation="nearest", extent=extent)
        fig.colorbar(im, ax=ax, label="log10 grad_norm")
        ticks = _nice_ticks(steps)
        ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
    else:
        empty_note(ax, "no positive finite grad_norm values")
    ax.set_xlabel("training step (logged steps)")
    ax.set_ylabel("layer (0 = input side)")
    ax.grid(False)
    if not row_ticks(ax, run, axis="y"):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(run_title("log10 grad_norm per layer and logged step", run))
    return save(fig, path)


def _nice_ticks(steps: list[int], target: int = 8) -> list[int]:
    """Indices of logged steps at round numbers (multiples of 1, 2 or 5 x 10^k), about `target` of them."""
    raw = max(steps[-1], 1) / target
    mag = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    nice = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    idx = [i for i, step in enumerate(steps) if step % nice == 0]
    return idx if len(idx) >= 2 else list(range(0, len(steps), max(1, math.ceil(len(steps) / 10))))


def loss_curves(run, path: Path) -> Path:
    plt = pyplot()
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=FIGSIZE["loss"], layout="constrained")
    draw_loss(ax_l, run)
    m = run.metrics
    acc = finite(r.get("accuracy") for r in m)
    ev = [r for r in m if isinstance(r.get("eval_accuracy"), (int, float))]
    if has_values(acc) or ev:
        ax_a.plot([r["step"] for r in m], acc, lw=1.2, label="train (batch)", **marks(acc))
        if ev:
            ax_a.plot([r["step"] for r in ev], finite(r["eval_accuracy"] for r in ev), "o-", ms=4, label="eval")
        chance = run.summary.get("chance_accuracy")
        if isinstance(chance, (int, float)):
            ax_a.axhline(chance, color="0.5", ls="--", lw=1, label=f"chance {chance:.3g}")
        diverged_line(ax_a, run)
        ax_a.set_ylim(-0.02, 1.02)
        ax_a.legend(fontsize=8)
        ax_a.set_title("accuracy")
        ax_a.set_ylabel("accuracy")
    else:
        _relative_loss(ax_a, run)
    ax_a.set_xlabel("training step")
    fig.suptitle(run_title("loss and accuracy", run))
    return save(fig, path)


def _baseline(run) -> float | None:
    base = run.summary.get("baseline_loss")
    return base if isinstance(base, (int, float)) and math.isfinite(base) and base > 0 else None


def _relative_loss(ax, run):
    """Regression has no accuracy: show the loss relative to the input-blind baseline instead
    (1 = the network has learned nothing about the input; log scale)."""
    base = _baseline(run)
    m = run.metrics
    ev = [r for r in m if has_values(finite([r.get("eval_loss")]))]  # a NaN eval loss has no place on the axis
    if base is None:
        empty_note(ax, "no accuracy (regression) and no baseline loss")
        return
    rel = positive((r.get("loss") or 0) / base for r in m)
    ax.plot([r["step"] for r in m], rel, lw=1.2, label="train (batch)", **marks(rel))
    if ev:
        ax.plot([r["step"] for r in ev], positive(r["eval_loss"] / base for r in ev), "o-", ms=4, label="eval")
    ax.axhline(1.0, color="0.5", ls="--", lw=1, label="input-blind baseline")
    diverged_line(ax, run)
    ax.set_yscale("log")
    include_y(ax, 1.0)
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.6, 2, 6 rather than 6x10^-1 on a short log axis
    ax.yaxis.set_major_formatter(plain)
    lo, hi = ax.get_ylim()
    if hi / lo < 30:  # label minor ticks only on a short axis; over decades they would crowd it
        ax.yaxis.set_minor_formatter(plain)
    ax.set_title("loss / baseline loss (regression: no accuracy)")
    ax.set_ylabel("loss / baseline (log scale)")
    ax.legend(fontsize=8)


def draw_loss(ax, run, color=None) -> bool:
    """Train loss (line) and eval loss (dots); log y when the loss spans more than two decades.
    A run's own figure (no color given) also shows the input-blind baseline, always on the axis, and
    where the run diverged; compare's shared panel shows only the curves. Returns whether it drew."""
    m = run.metrics
    loss = finite(r.get("loss") for r in m)
    ev = [r for r in m if has_values(finite([r.get("eval_loss")]))]  # a NaN eval loss has no place on the axis
    own = color is None
    ax.set_title("loss")
    ax.set_xlabel("training step")
    if not has_values(loss) and not ev:
        empty_note(ax, "no finite loss values")
        return False
    ax.plot([r["step"] for r in m], loss, lw=1.2, color=color, label="train (batch)", **marks(loss))
    if ev:
        ax.plot([r["step"] for r in ev], finite(r["eval_loss"] for r in ev), "o:", ms=4, color=color, label="eval")
    base = _baseline(run) if own else None
    if base is not None:
        ax.axhline(base, color="0.5", ls="--", lw=1, label=f"baseline {base:.3g}")
    if own:
        diverged_line(ax, run)
    if own and decades(loss + [r["eval_loss"] for r in ev] + ([base] if base else [])):
        ax.set_yscale("log")  # compare decides for its shared panel once every run is drawn
    if base is not None:
        include_y(ax, base)
    if own:
        ax.legend(fontsize=8)
    ax.set_ylabel("loss" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    return True


ACT_TITLES = {
    "act_unresponsive_frac": "unresponsive units (about the same output for every input)",
    "act_saturated_frac": "saturated units (activation in its flat region)",
    "act_dead_frac": "dead units (output 0 for every input)",
}


def activation_columns(run) -> list[str]:
    """The act_* statistics that tell this run's story, those it logged. A saturating activation
    (sigmoid, tanh; an LSTM/GRU hidden state is tanh-like) fails by units that are flat or constant;
    the ReLU family by units that are dead (zero for every input; dead units are unresponsive too)."""
    from ..activations import ACTIVATIONS

    name = (run.config.get("model") or {}).get("activation") or "tanh"  # lstm/gru: none configured
    act = ACTIVATIONS.get(name)
    if act is None:
        cols = list(ACT_TITLES)
    elif act.saturated_outside is not None:
        cols = ["act_unresponsive_frac", "act_saturated_frac"]
    elif name == "linear":
        cols = ["act_unresponsive_frac"]
    else:
        cols = ["act_dead_frac", "act_unresponsive_frac"]
    return [c for c in cols if any(isinstance(r.get(c), (int, float)) for r in run.layers)]


def activations(run, path: Path) -> Path | None:
    """Per hidden layer, the fractions of units that have stopped responding; None (no file) when
    activations were not logged. Few hidden layers: lines over training steps instead. A residual
    MLP or CNN without norm adds a panel: the forward stream (the branch outputs' RMS) against theory
    (an MLP's only: analysis/residual.py)."""
    from ..analysis.residual import applies

    cols = activation_columns(run)
    if not cols:
        return None
    by_step = len({r["layer"] for r in run.layers if isinstance(r.get(cols[0]), (int, float))}) < FEW_LAYERS
    stream = not by_step and applies(run.config.get("model") or {})
    plt = pyplot()
    fig, axes = plt.subplots(1, len(cols) + stream, figsize=FIGSIZE["activations"], layout="constrained",
                             squeeze=False)
    axes = axes[0]
    steps = pick_steps(run.steps, 4)
    cmap = plt.get_cmap("viridis")
    for ax, col in zip(axes, cols):
        if by_step:
            over_steps(ax, run, col, log=False)
            diverged_line(ax, run)
        else:
            for i, step in enumerate(steps):
                rows = [r for r in run.layer_rows(step) if isinstance(r.get(col), (int, float))]
                ax.plot([r["layer"] for r in rows], finite(r[col] for r in rows), marker="o", ms=3,
                        color=cmap(i / max(1, len(steps) - 1)), label=f"step {step}")
            ax.set_xlabel("hidden layer (0 = input side)")
            integer_x(ax)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(ACT_TITLES[col], fontsize="medium" if stream else None)  # three panels: narrower
        ax.set_ylabel(f"{col} (fraction of units)")
    if stream:
        _stream_panel(axes[-1], run, steps, cmap)
    step_legend(fig, axes, "hidden layer" if by_step else "logged step")
    fig.suptitle(run_title("activations", run))
    return save(fig, path)


def _stream_panel(ax, run, steps, cmap):
    """sqrt(act_mean^2 + act_std^2) per hidden layer and logged step (log axis), with the residual
    stream theory at step 0 (analysis/residual.py) dashed."""
    from ..analysis.residual import act_rms, section

    for i, step in enumerate(steps):
        rows = run.layer_rows(step)[:-1]
        ax.plot([r["layer"] for r in rows], positive(act_rms(r) for r in rows), marker="o", ms=3,
                color=cmap(i / max(1, len(steps) - 1)), label=f"step {step}")
    th = section(run.config.get("model") or {}, run.layer_rows(run.steps[0])) if run.steps else None
    if th and th.get("applicable"):
        (line,) = ax.plot(range(len(th["act_rms_predicted"])), th["act_rms_predicted"], ls="--", lw=1.2, color="black")
        ax.legend([line], [f"theory at step 0: x{th['stream_factor_per_block']:.3g} per block"], loc="upper left",
                  fontsize=8)
    ax.set_yscale("log")
    ax.set_title("forward stream: residual branch output RMS", fontsize="medium")
    ax.set_xlabel("hidden layer (0 = input side)")
    ax.set_ylabel("sqrt(act_mean^2 + act_std^2) (log scale)")
    integer_x(ax)


def gradient_through_time(run, path: Path) -> Path | None:
    """t vs delta_norm on a log axis, one line per a few logged steps, one panel per layer; an LSTM's
    cell-state gradient dashed in the same colour."""
    if not run.time:
        return None
    plt = pyplot()
    layers = sorted({r["layer"] for r in run.time})[:4]
    fig, axes = plt.subplots(1, len(layers), figsize=FIGSIZE["gradient_through_time"], layout="constrained",
                             squeeze=False)
    steps = pick_steps(sorted({r["step"] for r in run.time}))
    cmap = plt.get_cmap("viridis")
    for ax, layer in zip(axes[0], layers):
        drawn = cells = False
        for i, step in enumerate(steps):
            rows = [r for r in run.time_rows(step) if r["layer"] == layer]
            y = positive(r.get("delta_norm") for r in rows)
            color = cmap(i / max(1, len(steps) - 1))
            if has_values(y):
                ax.plot([r["t"] for r in rows], y, lw=1.5, color=color, label=f"step {step}")
                drawn = True
            cell = positive(r.get("cell_grad_norm") for r in rows)  # an LSTM's cell state: its memory path
            if has_values(cell):
                ax.plot([r["t"] for r in rows], cell, lw=1.2, ls="--", color=color)
                cells = drawn = True
        if drawn:
            ax.set_yscale("log")
        else:
            empty_note(ax, "no positive finite delta_norm values")
        ax.set_title(f"layer {layer}" if len(layers) > 1 else "gradient through time")
        ax.set_xlabel("time step t (0 = first input)")
        ax.set_ylabel("||dL/dh_t|| solid, ||dL/dc_t|| dashed (log)" if cells else "delta_norm at t (log scale)")
    step_legend(fig, axes[0])
    fig.suptitle(run_title("gradient through time", run))
    return save(fig, path)


def write_run_plots(run_dir, out: Path | None = None) -> list[Path]:
    """Write plots/*.png for one run directory (or into `out`: `vgrad report` leaves the run as it
    is); returns the files written."""
    from ..rundir.store import load_run
    from .steps_plot import every_step

    run = load_run(Path(run_dir))
    out = Path(out) if out is not None else Path(run_dir) / "plots"
    written = [gradient_flow(run, out / "gradient_flow.png"), grad_heatmap(run, out / "grad_heatmap.png"),
               loss_curves(run, out / "loss.png"), activations(run, out / "activations.png"),
               gradient_through_time(run, out / "gradient_through_time.png"), every_step(run, out / "steps.png")]
    return [p for p in written if p is not None]
