"""`vgrad report`: one self-contained HTML file for one run or several, and the notebook display.

Per run: what it was (model, training, task, status), the verdict and its evidence (the diagnosis:
diagnosis.json, or computed now without the ablation probe), the per-layer table (the run's view:
its blocks when it has them) at the first and last logged step, the figures, what to change. For
several runs the comparison (`vgrad compare`'s tables and figure) comes first, then each run.
The figures are the run's plots/ when it ended with them, else drawn now into a temporary folder:
the run directory is never written to.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .. import vocab as V
from ..analysis.verdict import BELOW_SHORT, underflowed
from ..errors import UsageError
from ..rundir.store import Run, load_run
from .console import fmt, status_phrases
from .html_parts import NOTEBOOK_CSS, VERDICT_COLOR, bar, block, esc, figure, log_range, page, table

FIGURES = [("gradient_flow.png", "gradient per layer at each logged step"), ("grad_heatmap.png", "grad_norm over layers and steps"),
           ("loss.png", "training loss"), ("activations.png", "activation statistics per layer"),
           ("gradient_through_time.png", "gradient through time")]


def write_report(runs: list[Run], out: Path) -> Path:
    """The report of `runs` into `out`, whole or not at all (a temporary file, then renamed)."""
    from ..rundir.files import write_text_atomic

    text = report_html(runs)
    try:
        write_text_atomic(out, text)
    except OSError as e:
        raise UsageError(f"cannot write '{out}': {e.strerror}") from None
    return out


def report_html(runs: list[Run]) -> str:
    names = ", ".join(r.name for r in runs)
    head = (f"<h1>vgrad report</h1><p class=\"muted small\">{esc(names)} · written {time.strftime('%Y-%m-%d %H:%M')} "
            f"by vgrad {V.VERSION}</p>")
    with tempfile.TemporaryDirectory(prefix="vgrad-report-") as tmp:
        parts = [head]
        if len(runs) > 1:
            parts.append(_comparison(runs, Path(tmp)))
        parts += [_run_section(r, i, len(runs), Path(tmp) / str(i)) for i, r in enumerate(runs)]
    return page(f"vgrad report: {names}", "".join(parts))


def _comparison(runs: list[Run], tmp: Path) -> str:
    from .compare import blocks, build, compact_blocks, label
    from .compare_plot import compare_plot

    data = build(runs, ["first", "last"])
    laid = blocks(data) if len(runs) <= 4 else compact_blocks(data)
    toc = "".join(f'<li><a href="#run-{i}">{label(i)}: {esc(r.name)}</a></li>' for i, r in enumerate(runs))
    return (f"<h2>Comparison</h2><nav><ul>{toc}</ul></nav>" + block(laid[-1]) + "".join(block(b) for b in laid[:-1])
            + figure(compare_plot(runs, tmp / "compare.png"), "the runs side by side (first step dashed, last solid)"))


def _run_section(run: Run, i: int, n: int, tmp: Path) -> str:
    from .compare import label

    title = f"{label(i)}: {run.name}" if n > 1 else run.name
    parts = [f'<h2 id="run-{i}">{esc(title)}</h2>', _about(run)]
    notes = run.notes + [x for x in run.summary.get("notes") or [] if isinstance(x, str)]
    if notes:
        parts.append("<ul class=\"small muted\">" + "".join(f"<li>note: {esc(x)}</li>" for x in notes) + "</ul>")
    d = _diagnosis(run)
    parts.append(_verdict_box(*verdict_of(run, d), run.incomplete))
    if run.steps:
        parts.append(_layer_table(run))
    if d is not None:
        parts.append(_evidence(d))
    parts.append(_figures(run, tmp))
    if d is not None and d.get("recommendations"):
        parts.append(_advice(d, run))
    return "".join(parts)


def _about(run: Run) -> str:
    task = (run.config.get("task") or {}).get("name")
    what = [run.model_text(), run.train_text(), f"task {task}" if task else
            "recorded by Monitor" if run.config.get("source") == V.SOURCE_MONITOR else "", run.date_text()]
    return (f"<p>{esc(' | '.join(w for w in what if w))}<br><span class=\"muted\">{esc('; '.join(status_phrases(run.summary)))}"
            f"</span><br><span class=\"small muted\">{esc(run.path)}</span></p>")


def _diagnosis(run: Run) -> dict | None:
    from ..analysis.diagnose import stored_or_fresh

    try:
        return stored_or_fresh(run) if run.steps and run.metrics else None
    except UsageError:  # e.g. no config.yaml: the tables are all there is
        return None


def verdict_of(run: Run, d: dict | None) -> tuple[str, str]:
    """The verdict and its reason: the diagnosis's (the same rule as summary.json's), else the summary's."""
    if d is not None:
        return d["verdict"], d["verdict_detail"]
    return str(run.summary.get("verdict") or V.UNKNOWN), str(run.summary.get("verdict_reason") or "")


def _verdict_box(verdict: str, reason: str, provisional: bool) -> str:
    note = " (provisional: the run is still running or did not end)" if provisional else ""
    return (f'<div class="verdict" style="--c:{VERDICT_COLOR.get(verdict, "#444")}"><b>{esc(verdict)}</b>'
            f"{esc(note)}<br>{esc(reason)}</div>")


def _layer_table(run: Run, compact: bool = False) -> str:
    """grad_norm and delta_norm at the first and last logged step, a bar of the last delta_norm
    (log scale, shared by the rows), and (not compact) how far each layer moved and how much is dead."""
    steps = run.steps
    first, last = run.layer_rows(steps[0]), run.layer_rows(steps[-1])
    shown = [steps[0]] if steps[0] == steps[-1] else [steps[0], steps[-1]]
    extra = [] if compact else [c for c in V.MOVEMENT_COLUMNS if any(r.get(c) is not None for r in last)]
    by_layer = {r["layer"]: j for j, r in enumerate(last)}
    lo, hi = log_range(r.get("delta_norm") for r in last)
    headers = ["layer", "name"] + [f"{c}\nstep {s}" for c in ("grad_norm", "delta_norm") for s in shown]
    headers += [f"delta_norm\nstep {steps[-1]}, log"] + [f"{c}\nstep {steps[-1]}" for c in extra]
    rows = []
    for k, r in enumerate(first):
        j = by_layer.get(r["layer"])
        cells = [_cell(first, k, c) if s == steps[0] else _cell(last, j, c) for c in ("grad_norm", "delta_norm") for s in shown]
        cells.append(bar(last[j].get("delta_norm"), lo, hi) if j is not None else "")
        cells += [_cell(last, j, c) for c in extra]
        rows.append([esc(r["layer"]), esc(r["name"])] + cells)
    what = "per-block" if run.modules is not None else "per-layer"
    return (f"<h3>{what} gradient (layer 0 = input side)</h3>"
            + table(headers, rows, text_columns=(1,), raw=True))


def _cell(rows: list[dict], i: int | None, col: str) -> str:
    """A value as the console shows it (a value float32 lost: "< 1e-38"), escaped; blank: no such row."""
    if i is None:
        return ""
    lost = col in ("grad_norm", "delta_norm") and underflowed(rows, i, col)
    return esc(BELOW_SHORT if lost else fmt(rows[i].get(col)))


def _evidence(d: dict) -> str:
    from ..analysis.diagnose import theory_line

    rows = [[str(i["id"]), i["name"], f'<span class="{esc(i["status"].replace(" ", "-"))}">{esc(i["status"])}</span>',
             f'{esc(i["summary"])}<br><span class="muted small">{esc(i["threshold"])}</span>'] for i in d["indicators"]]
    rows = [[esc(a), esc(b), c, e] for a, b, c, e in rows]
    theory = theory_line(d["theory"]) if d.get("theory") else ""
    return ("<h3>evidence: the eight indicators</h3>"
            + table(["#", "indicator", "status", "evidence (threshold below)"], rows, text_columns=(1, 2, 3),
                    wrap_columns=(1, 3), raw=True, stack=True)
            + (f"<h3>theory</h3><pre>{esc(theory)}</pre>" if theory else ""))


def _figures(run: Run, tmp: Path) -> str:
    plots = run.path / V.PLOTS_DIR
    if run.incomplete or not (plots / FIGURES[0][0]).is_file():
        if not run.steps:
            return ""
        from .plots import write_run_plots

        write_run_plots(run.path, tmp)
        plots = tmp
    shown = [figure(plots / f, caption) for f, caption in FIGURES if (plots / f).is_file()]
    return "<h3>figures</h3>" + "".join(shown) if shown else ""


def _advice(d: dict, run: Run) -> str:
    items = []
    for r in d["recommendations"]:
        optional = " <span class=\"muted\">(optional: training recovered)</span>" if r.get("optional") else ""
        command = (f"<br><code>vgrad run {esc(run.path / V.CONFIG_YAML)} {esc(r['command'])}</code>"
                   if r.get("command") else "")
        items.append(f"<li><b>{esc(r['title'])}</b>{optional}: {esc(r['why'])}{command}</li>")
    return f"<h3>what to change</h3><ol>{''.join(items)}</ol>"


def compact_html(run) -> str:
    """A notebook's view of a run (a Run or its directory): the verdict, then the per-layer table.
    summary.json's verdict; a run still going gets the same rule applied to what it logged so far."""
    run = run if isinstance(run, Run) else load_run(Path(run))
    verdict, reason = verdict_of(run, None)
    if run.incomplete or not run.summary.get("verdict"):
        from ..analysis.diagnose import run_verdict

        verdict, reason = run_verdict(run)
    head = f"<p><b>{esc(run.name)}</b> · {esc(run.model_text())} · {esc('; '.join(status_phrases(run.summary)))}</p>"
    body = _verdict_box(verdict, reason, run.incomplete) + (_layer_table(run, compact=True) if run.steps else "")
    return f'<div class="vgrad"><style>{NOTEBOOK_CSS}</style>{head}{body}</div>'
