"""`vgrad compare`: runs side by side, layer by layer.

One data structure (`build`) holds every number and `blocks` lays it out as tables; the four
formats (compare_render.py) only render it, so the json output always carries every number the
table shows. Runs are labelled A, B, C... in argument
order; A is the reference that the log10 ratios compare against. Rows align by what they are
(align.py): by name, and a block view's blocks by their index in their stack, so a row only some runs
have is blank in the others, never paired with an unrelated row of another run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError
from ..analysis.verdict import BELOW_SHORT, MLP_ENDS, run_stats, underflowed
from .. import vocab as V
from ..vocab import BELOW_KEY
from ..rundir.store import Run
from .align import align

FORMATS = ("table", "json", "csv", "markdown")
MAX_TIME_ROWS = 16  # the through-time profile is subsampled for reading; json/csv carry every t


def label(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"R{i + 1}"


def parse_step(text: str | None) -> list:
    if text is None:
        return ["first", "last"]
    if text in ("first", "last"):
        return [text]
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"--step must be first, last or a step number, not '{text}'") from None
    if n < 0:
        raise UsageError(f"--step must be >= 0, not {n}")
    return [n]


def log10_ratio(a, b) -> float | None:
    """log10(a / b), or None when either is missing, non-positive or not finite."""
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (a, b)):
        return None
    return math.log10(a / b)


RUN_FIELDS = [  # (key in the run's stats, label in the table)
    ("model", "model"), ("training", "training"), ("task", "task"), ("status", "status"), ("verdict", "verdict"),
    ("verdict_reason", "verdict reason"), ("final_loss", "final loss"), ("baseline_loss", "baseline loss"),
    ("final_accuracy", "final accuracy"), ("final_eval_loss", "final eval loss"),
    ("final_eval_accuracy", "final eval accuracy"), ("chance_accuracy", "chance accuracy"),
    ("grad_norm_ratio_first_step", "grad_norm 0/out, first"),
    ("grad_norm_ratio_last_step", "grad_norm 0/out, last"),
    ("delta_norm_ratio_first_step", "delta_norm 0/out, first"),
    ("delta_norm_ratio_last_step", "delta_norm 0/out, last"),
    ("measured_factor", "delta per layer, step 0"),
    ("theory_factor", "delta per layer, theory"),
    ("theory_depth_scale", "depth scale, theory"),
    ("theory_factor_at_depth", "delta per layer, theory at depth"),
    ("time_ratio_first_step", "through time 0/T, first"),
    ("time_ratio_last_step", "through time 0/T, last"),
    ("steps_completed", "steps completed"), ("steps_planned", "steps planned"),
    ("first_logged_step", "first logged step"), ("last_logged_step", "last logged step"),
    ("wall_time_s", "wall time (s)"), ("notes", "notes"),
]


# the ratio rows: their label names the rows the verdict compares (verdict.ends_label)
ENDS_FIELDS = ("grad_norm_ratio_first_step", "grad_norm_ratio_last_step",
               "delta_norm_ratio_first_step", "delta_norm_ratio_last_step")


def run_info(run: Run, lab: str) -> dict:
    from ..analysis.verdict import ends_label

    s = run_stats(run)
    kind = (run.config.get("model") or {}).get("kind")
    info = {"label": lab, "name": run.name, "dir": str(run.path), "model": run.model_text(),
            "training": run.train_text() or None,
            "task": (run.config.get("task") or {}).get("name"), "notes": "; ".join(run.notes) or None,
            "diverged_step": s.get("diverged_step"),
            "ends": ends_label(run.layer_rows(run.steps[0]), kind) if run.steps else MLP_ENDS}
    for key, _ in RUN_FIELDS:
        info.setdefault(key, s.get(key))
    info[BELOW_KEY] = s.get(BELOW_KEY) or []  # ratios whose first end underflowed float32: not 0
    from ..analysis.theory import theory_columns

    info.update(theory_columns(run.path))
    return info


def build(runs: list[Run], which_steps: list, modules: bool = False) -> dict:
    """modules: compare the module rows (layers.csv) of runs that have a block view."""
    labels = [label(i) for i in range(len(runs))]
    ref = labels[0]
    # "blocks": some run is read by its block view (blocks.csv); "modules": layers.csv's rows
    view = "modules" if modules or all(r.modules is None for r in runs) else "blocks"
    out = {"reference": ref, "runs": [run_info(r, lab) for r, lab in zip(runs, labels)], "sections": [], "rows": view}
    for which in which_steps:
        steps = {lab: r.pick_step(which) for r, lab in zip(runs, labels)}
        per_run = [(r.module_layer_rows if modules else r.layer_rows)(steps[lab]) for r, lab in zip(runs, labels)]
        below = {lab: _below(rows) for lab, rows in zip(labels, per_run)}
        layers = []
        for i, aligned in enumerate(align(per_run)):
            cells, mine = {}, dict(zip(labels, aligned))
            for lab, row in mine.items():
                if row is None:
                    cells[lab] = None  # this run has no such row: a blank cell, not a zero
                    continue
                cell = {"layer": row["layer"], "name": row.get("name"), "note": row.get("note"), "stack": row.get("stack"),
                        "grad_norm": row.get("grad_norm"), "delta_norm": row.get("delta_norm"),
                        BELOW_KEY: below[lab].get(row["layer"], [])}
                base = mine[ref]
                if lab != ref and base is not None:
                    for col in ("grad_norm", "delta_norm"):  # no ratio to a value float32 lost
                        lost = col in cell[BELOW_KEY] or col in below[ref].get(base["layer"], [])
                        cell[f"log10_{col}_vs_{ref}"] = None if lost else log10_ratio(row.get(col), base.get(col))
                cells[lab] = cell
            layers.append({"row": i, "runs": cells})
        time = None
        if any(r.time for r in runs):
            time = {lab: r.time_rows(steps[lab]) for r, lab in zip(runs, labels) if r.time}
            time = {lab: [{"layer": t["layer"], "t": t["t"], "delta_norm": t.get("delta_norm")} for t in rows]
                    for lab, rows in time.items()}
        out["sections"].append({"which": which, "steps": steps, "layers": layers, "time": time})
    return out


def _below(rows: list[dict]) -> dict:
    """Per layer, the columns whose value is below float32's range (verdict.underflowed): the 0 or
    subnormal stored there is no measurement, so the tables show "< 1e-38" and csv an empty cell."""
    return {r["layer"]: [c for c in ("grad_norm", "delta_norm") if underflowed(rows, i, c)] for i, r in enumerate(rows)}


# ----------------------------------------------------------------------------- rendering


@dataclass
class Block:
    """A titled grid of strings: rendered as a rich table or a markdown table."""
    title: str
    headers: list[str]
    rows: list[list[str]]
    left: tuple = ()  # indices of text columns (left-aligned); the rest are numbers
    caption: str = ""


def _fmt(v) -> str:
    from .console import fmt

    return fmt(v)


def _joined(values) -> str:
    """One value for the runs of a row, or each run's where they differ: "3/5", "h.0 / layers.0"."""
    values = list(dict.fromkeys(str(v) for v in values))
    return (" / " if any(not v.isdigit() for v in values) else "/").join(values)


def _row_name(cells: dict, short: bool) -> str:
    """The runs' names of a row ("transformer.h.3 / model.layers.3"; short: a block by its stack's last
    part, "h.3"), then the notes: "(frozen)" when every run says it, else "(B: partly frozen)"."""
    present = {lab: c for lab, c in cells.items() if c}
    names = _joined(_short(c) if short else c.get("name") for c in present.values())
    notes = {lab: c["note"] for lab, c in present.items() if c.get("note")}
    if not notes:
        return names
    if len(notes) == len(present) and len(set(notes.values())) == 1:
        return f"{names} ({next(iter(notes.values()))})"
    return f"{names} (" + ", ".join(f"{lab}: {n}" for lab, n in notes.items()) + ")"


def _short(c: dict) -> str:
    stack, name = c.get("stack"), str(c.get("name"))
    return stack.rsplit(".", 1)[-1] + name[len(stack):] if stack and name.startswith(stack) else name


def _cell(c: dict | None, col: str) -> str:
    c = c or {}
    return BELOW_SHORT if col in c.get(BELOW_KEY, ()) else _fmt(c.get(col))


def _step_title(which, steps: dict) -> str:
    if isinstance(which, int):
        return f"step {which}"
    distinct = set(steps.values())
    where = str(distinct.pop()) if len(distinct) == 1 else ", ".join(f"{k}: {v}" for k, v in steps.items())
    return f"the {which} logged step ({where})"


def blocks(data: dict, short: bool = False) -> list[Block]:
    """The tables. short: blocks named by their stack's last part (h.3 for transformer.h.3 and peft's
    base_model.model.transformer.h.3), the caption saying which stacks: for a narrow console."""
    labels = [r["label"] for r in data["runs"]]
    ref = data["reference"]
    others = labels[1:]
    out = []
    for sec in data["sections"]:
        # Short two-line headers keep two runs inside 80 columns; the caption spells them out.
        headers = ["layer", "name"]
        for lab in labels:
            headers += [f"{lab}\ngrad", f"{lab}\ndelta"]
        for lab in others:
            headers += [f"{lab}/{ref}\nlog10\ngrad", f"{lab}/{ref}\nlog10\ndelta"]
        rows = []
        for entry in sec["layers"]:
            cells = entry["runs"]
            row = [_joined(c["layer"] for c in cells.values() if c), _row_name(cells, short)]
            for lab in labels:
                row += [_cell(cells[lab], "grad_norm"), _cell(cells[lab], "delta_norm")]
            for lab in others:
                c = cells[lab] or {}
                row += [_ratio(c.get(f"log10_grad_norm_vs_{ref}")), _ratio(c.get(f"log10_delta_norm_vs_{ref}"))]
            rows.append(row)
        what = "per-block" if data.get("rows") == "blocks" else "per-layer"
        title = f"{what} gradient at {_step_title(sec['which'], sec['steps'])}; layer 0 = input side"
        caption = ("grad = grad_norm ||dL/dW||, delta = delta_norm ||dL/dz||; rows pair by name, blocks by their "
                   f"index in their stack (blank: the run has no such row; {BELOW_SHORT}: below float32 range)")
        if others:
            caption += f"; {others[0]}/{ref} log10 = log10 of {others[0]}'s value over {ref}'s (+2: 100x larger)"
        caption += "; " + ", ".join(f"{r['label']} = {r['name']}" for r in data["runs"])
        stacks: dict = {}  # short name -> {stack: the runs that have it}
        for e in sec["layers"]:
            for lab, c in e["runs"].items():
                if c and c.get("stack"):
                    stacks.setdefault(c["stack"].rsplit(".", 1)[-1], {}).setdefault(c["stack"], set()).add(lab)
        if short and stacks:
            caption += "; " + ", ".join(f"{tail}.k = " + ", ".join(
                f"{st}.k" + (f" ({', '.join(sorted(labs))})" if len(by) > 1 else "") for st, labs in by.items())
                for tail, by in stacks.items())
        out.append(Block(title, headers, rows, left=(1,), caption=caption))
    tb = time_block(data)
    if tb is not None:
        out.append(tb)
    run_headers = [""] + [f"{r['label']}" for r in data["runs"]]
    run_rows = [["run"] + [r["name"] for r in data["runs"]]]
    ends = {r.get("ends", MLP_ENDS) for r in data["runs"]}
    for key, text in RUN_FIELDS:
        values = [r.get(key) if key not in r.get(BELOW_KEY, ()) else BELOW_SHORT for r in data["runs"]]
        if all(v is None for v in values):
            continue  # e.g. no through-time rows for MLP runs, no accuracy for regression
        cells = [_run_cell(r, key) for r in data["runs"]]
        if key in ENDS_FIELDS and ends != {MLP_ENDS}:
            if len(ends) == 1:  # e.g. transformers alike: block0/block5
                text = text.replace("0/out", next(iter(ends)))
            else:  # runs of different kinds: each cell names its own ends
                text = text.replace("0/out", "ends")
                cells = [f"{c} ({r.get('ends', MLP_ENDS)})" if c else c for c, r in zip(cells, data["runs"])]
        run_rows.append([text] + cells)
    out.append(Block("runs", run_headers, run_rows, left=tuple(range(len(run_headers)))))
    return out


def _run_cell(run: dict, key: str, short: bool = False) -> str:
    """A per-run value as the tables show it. A diverged run stopped before its end: its last eval
    (if any) and its last batch accuracy came from earlier steps and are no result of the run."""
    if run.get("status") == V.DIVERGED and key in ("final_accuracy", "final_eval_loss", "final_eval_accuracy"):
        return "—" if short else f"— (diverged at step {run.get('diverged_step')})"
    if key in run.get(BELOW_KEY, ()):
        return BELOW_SHORT
    if run.get("status") == V.DIVERGED and key == "final_loss" and run.get(key) is not None:
        return "—" if short else f"{_fmt(run[key])} (last finite)"
    return _fmt(run.get(key))


# One row per run when the runs do not fit side by side: what a sweep's runs are compared by.
COMPACT_FIELDS = [("delta_norm_ratio_first_step", "ratio\nfirst"), ("delta_norm_ratio_last_step", "ratio\nlast"),
                  ("final_loss", "final\nloss"), ("final_eval_accuracy", "eval\nacc")]


def compact_blocks(data: dict) -> list[Block]:
    """For many runs: per layer delta_norm only, one column per run; the runs one per row."""
    labels = [r["label"] for r in data["runs"]]
    out = []
    for sec in data["sections"]:
        rows = [[_joined(c["layer"] for c in e["runs"].values() if c)] + [_cell(e["runs"][lab], "delta_norm")
                                                                         for lab in labels]
                for e in sec["layers"]]
        title = f"delta_norm per layer at {_step_title(sec['which'], sec['steps'])}; layer 0 = input side"
        out.append(Block(title, ["layer"] + labels, rows, caption="delta_norm ||dL/dz|| of each run, the last "
                         "row of a column is its output layer (runs: the table below)"))
    tb = time_block(data)
    if tb is not None:
        out.append(tb)
    fields = [(k, t) for k, t in COMPACT_FIELDS if any(r.get(k) is not None or k in r.get(BELOW_KEY, ())
                                                      for r in data["runs"])]
    rows = [[r["label"], r["name"], str(r.get("verdict") or "") + ("" if r.get("status") == V.COMPLETED else
                                                                     f"\n({r.get('status')})")]
            + [_run_cell(r, k, short=True) for k, _ in fields] for r in data["runs"]]
    out.append(Block("runs", ["", "run", "verdict"] + [t for _, t in fields], rows, left=(0, 1, 2),
                     caption=f"ratio = {ends_caption(data['runs'])} delta_norm at the first and last logged step"))
    return out


def ends_caption(runs: list[dict]) -> str:
    """What the ratio compares: 'layer 0/output', or per run where kinds differ (verdict.ends_label)."""
    ends = [r.get("ends", MLP_ENDS) for r in runs]
    if len(set(ends)) == 1:
        return ends[0]
    other = ", ".join(f"{r['label']} {e}" for r, e in zip(runs, ends) if e != MLP_ENDS)
    return f"{MLP_ENDS} ({other})"


def _ratio(v) -> str:
    return "" if v is None else f"{v:+.2f}"


def time_block(data: dict) -> Block | None:
    """One table for the through-time profiles: a row per t, a column per (run, step, layer)."""
    secs = [sec for sec in data["sections"] if sec["time"]]
    if not secs:
        return None
    single = len(data["runs"]) == 1
    cols, values, ts = [], {}, set()
    for sec in secs:
        for lab, rows in sec["time"].items():
            layers = list(dict.fromkeys(r["layer"] for r in rows))
            for layer in layers:
                head = ("" if single else f"{lab}\n") + f"step {sec['steps'][lab]}" + (f"\nlayer {layer}" if len(layers) > 1 else "")
                if head in [c[0] for c in cols]:
                    continue  # --step first and last can be the same step
                cols.append((head, sec["which"], lab, layer))
            for r in rows:
                values[(sec["which"], lab, r["layer"], r["t"])] = r["delta_norm"]
                ts.add(r["t"])
    ts = sorted(ts)
    shown = ts
    if len(ts) > MAX_TIME_ROWS:  # evenly spaced, keeping both ends: the ratio lives there
        k = math.ceil((len(ts) - 1) / (MAX_TIME_ROWS - 1))
        shown = ts[::k] + ([ts[-1]] if (len(ts) - 1) % k else [])
    rows = [[str(t)] + [_fmt(values.get((which, lab, layer, t))) for _, which, lab, layer in cols] for t in shown]
    caption = "delta_norm at time step t (t = 0: the first input); vanishing through time = small values at small t"
    if shown is not ts:
        caption += f"; every {shown[1] - shown[0]}th t of {len(ts)} shown (--format json or csv: all)"
    return Block("gradient through time", ["t"] + [c[0] for c in cols], rows, caption=caption)
