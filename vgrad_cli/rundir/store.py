"""Finding and loading existing run directories, for `compare`, `show`, `runs` and the plots.

A RUN argument is a path, or a unique prefix of a run's name under the runs directory (runs inside
a sweep directory count too). A sweep directory (one holding sweep.csv) stands for all its runs.
Tables are checked as they are read, so a damaged run gives one clear line instead of a traceback
somewhere downstream. Like files.py, this module imports neither torch nor pandas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import vocab as V
from ..errors import UsageError
from .files import read_summary, read_table

# A run that did not reach its end (vocab.INCOMPLETE): its tables hold what was logged so far, and
# that is worth showing.
REQUIRED = {
    V.LAYERS_CSV: ("step", "layer", "grad_norm", "delta_norm"),
    V.BLOCKS_CSV: ("step", "layer", "grad_norm", "delta_norm"),
    V.METRICS_CSV: ("step", "loss"),
    V.TIME_CSV: ("step", "layer", "t", "delta_norm"),
    V.FLOAT64_CSV: ("step", "layer", "grad_norm", "delta_norm"),
    V.STEPS_CSV: ("step", "loss", "grad_norm_total"),
}
_STAMP = re.compile(r"-(\d{4})(\d{2})(\d{2})-(\d{2})(\d{2})(\d{2})-[0-9a-f]{4}$")


def is_run(d: Path) -> bool:
    return (d / V.SUMMARY_JSON).is_file()


def is_sweep(d: Path) -> bool:
    return (d / "sweep.csv").is_file()


@dataclass
class Run:
    path: Path
    summary: dict
    config: dict
    layers: list[dict]
    metrics: list[dict]
    time: list[dict] | None = None                  # gradient through time, recurrent runs only
    notes: list[str] = field(default_factory=list)  # what is missing or partial, said to the user
    float64: list[dict] | None = None               # step 0 measured again in float64 (layers_float64.csv)
    # `layers` is the run's view, what verdicts, plots and tables read: the block rows (blocks.csv) of a
    # model with repeated blocks, else the module rows of layers.csv. `modules` holds layers.csv's rows
    # when the view is the block one (else None: the two are the same).
    modules: list[dict] | None = None
    every_step: list[dict] | None = None  # steps.csv: the loss and total gradient norm of every step

    @property
    def module_rows(self) -> list[dict]:
        """layers.csv's rows: one per module (or per declared layer of vgrad's own models)."""
        return self.modules if self.modules is not None else self.layers

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def incomplete(self) -> bool:
        return self.status in V.INCOMPLETE

    @property
    def steps(self) -> list[int]:
        """The logged steps with finite numbers: a diverged run's tables end with the step whose loss
        went non-finite (kept as evidence), which no ratio, plot line or indicator should read."""
        bad = self.summary.get("diverged_step") if self.status == V.DIVERGED else None
        return sorted({r["step"] for r in self.layers if bad is None or r["step"] < bad})

    def layer_rows(self, step: int | None) -> list[dict]:
        return sorted((r for r in self.layers if r["step"] == step), key=lambda r: r["layer"])

    def module_layer_rows(self, step: int | None) -> list[dict]:
        """layer_rows of the module rows (layers.csv), also when the view is the block one."""
        return sorted((r for r in self.module_rows if r["step"] == step), key=lambda r: r["layer"])

    def time_rows(self, step: int | None) -> list[dict]:
        return sorted((r for r in self.time or [] if r["step"] == step), key=lambda r: (r["layer"], r["t"]))

    def pick_step(self, which) -> int | None:
        """'first', 'last' or a step number -> a logged step of this run (None: nothing logged yet)."""
        steps = self.steps
        if which in ("first", "last"):
            return (steps[0] if which == "first" else steps[-1]) if steps else None
        if which in steps:
            return which
        near = sorted(steps, key=lambda s: abs(s - which))[:2]
        hint = f"nearest logged: {', '.join(map(str, sorted(near)))}" if near else "it logged no steps"
        raise UsageError(f"run '{self.name}' has no logged step {which} ({hint})")

    def model_text(self) -> str:
        return model_text(self.config.get("model") or {})

    def train_text(self) -> str:
        return train_text(self.config.get("train") or {})

    def date_text(self) -> str:
        started = self.summary.get("started_at")
        if isinstance(started, str) and len(started) >= 16:
            return started[:16].replace("T", " ")
        m = _STAMP.search(self.name)
        return f"{m[1]}-{m[2]}-{m[3]} {m[4]}:{m[5]}" if m else ""


def model_text(m: dict) -> str:
    return " ".join(model_phrases(m))


def model_phrases(m: dict) -> list[str]:
    """A model config (as in config.json) in one line: kind, depth, width, activation, init, then every
    other key that tells two chapters apart, each only when it is not its default (chapters 26 and 27
    differ only in residual_scale, 12 and 25 only in chrono_init). The run header, compare and the plot
    titles all print it; a phrase ("depth 20") is what a wrapped line never breaks."""
    if m.get("kind") == "custom":  # a Monitor run: the user's own model
        blocks = sum(b.get("role") == "block" and b.get("stack") == m.get("main_stack") for b in m.get("blocks") or [])
        parts = ([f"{blocks} blocks"] if blocks else []) + [f"{len(m.get('layers') or [])} modules" if blocks else
                                                            f"{len(m.get('layers') or [])} layers",
                                                            f"{m.get('parameters', 0):,} parameters"]
        return [f"{m.get('class', 'model')} ({', '.join(parts)})"]
    parts = [str(m.get("kind", "?"))]
    for key in ("depth", "width"):
        if m.get(key) is not None:
            parts.append(f"{key} {m[key]}")
    parts += [str(m["activation"])] if m.get("activation") else []
    if m.get("init"):  # "default" alone would not say what is default
        parts.append("default init" if m["init"] == "default" else str(m["init"]))
    if m.get("init_std") is not None:
        parts.append(f"(std/gain {m['init_std']:g})")
    if m.get("bias_init"):
        parts.append(f"bias {m['bias_init']:g}")
    if m.get("recurrent_init") not in (None, "default") or m.get("recurrent_std") is not None:
        std = f" x{m['recurrent_std']:g}" if m.get("recurrent_std") is not None else ""
        parts.append(f"recurrent {m.get('recurrent_init', 'default')}{std}")
    if m.get("forget_bias") is not None:
        parts.append(f"forget_bias {m['forget_bias']:g}")
    if m.get("chrono_init") is not None:
        parts.append(f"chrono_init {m['chrono_init']}")
    if m.get("norm") not in (None, "none"):
        parts.append(f"{m['norm']}norm")
    if m.get("residual"):
        scale = m.get("residual_scale", 1.0)
        parts.append("residual" + ("" if scale in (1, 1.0, None) else f" x{scale:g}" if isinstance(scale, (int, float))
                                   else f" x{scale}"))
    if m.get("norm_position") is not None:  # a transformer
        parts.append(f"{m.get('heads')} heads {m['norm_position']}-LN")
    return parts


def train_text(t: dict) -> str:
    return " ".join(train_phrases(t))


def train_phrases(t: dict) -> list[str]:
    """The optimiser in one line: optimizer and lr always, then momentum, weight decay, warm-up and
    clipping only when set (chapters 22 and 24 differ only in warm-up, 09 and 10 only in clipping)."""
    if not t:
        return []
    parts = [f"{t.get('optimizer', '?')} lr {t['lr']:g}" if t.get("lr") is not None else str(t.get("optimizer", "?"))]
    if t.get("momentum"):
        parts.append(f"momentum {t['momentum']:g}")
    if t.get("weight_decay"):
        parts.append(f"weight_decay {t['weight_decay']:g}")
    if t.get("warmup_steps"):
        parts.append(f"warm-up {t['warmup_steps']} steps")
    for key in ("clip_norm", "clip_value"):
        if t.get(key) is not None:
            parts.append(f"{key} {t[key]:g}")
    return parts


def _checked_table(run: Path, name: str, incomplete: bool, notes: list[str]) -> list[dict]:
    """read_table plus the checks that turn a damaged table into one line: columns present, numbers
    where numbers belong. A killed run may end on a torn line; that one line is dropped, not fatal."""
    rows = read_table(run, name)
    required = REQUIRED[name]
    if rows:
        missing = [c for c in required if c not in rows[0]]
        if missing:
            raise UsageError(f"'{run / name}' is corrupt: no column {', '.join(missing)}")
    if rows and _torn_last_line(run / name, len(rows[0])):
        rows[-1][None] = "torn"  # fewer fields than the header: flagged like any malformed row below
    for i, r in enumerate(rows):
        bad = None in r or any(not isinstance(r[c], int) for c in required if c in V.INT_COLUMNS) or any(
            isinstance(r[c], str) for c in required)
        if not bad:
            continue
        if incomplete and i == len(rows) - 1:
            notes.append(f"the last line of {name} is incomplete and was skipped")
            return rows[:-1]
        raise UsageError(f"'{run / name}' is corrupt: line {i + 2} is not a row of numbers")
    return rows


def _torn_last_line(path: Path, n_columns: int) -> bool:
    """Whether the file's last line has fewer fields than the header: the mark of a write cut short
    (read_table cannot tell a missing trailing field from an empty cell)."""
    import csv

    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 8192))
        tail = f.read().decode("utf-8", "replace")
    last = tail.rstrip("\r\n").rsplit("\n", 1)[-1]
    return len(next(csv.reader([last]), [])) < n_columns


def load_run(path: Path) -> Run:
    import yaml

    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"'{path}' is not a directory")
    summary = read_summary(path)
    if not isinstance(summary, dict):
        raise UsageError(f"'{path}/summary.json' is corrupt: not a JSON object")
    notes: list[str] = []
    status = str(summary.get("status", "unknown"))
    incomplete = status in V.INCOMPLETE
    try:
        config = yaml.safe_load((path / V.CONFIG_YAML).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        config = {}
        notes.append(f"{V.CONFIG_YAML} is missing")
    except (yaml.YAMLError, UnicodeDecodeError):
        raise UsageError(f"'{path}/config.yaml' is corrupt: not valid YAML") from None
    tables = {}
    for name in (V.LAYERS_CSV, V.METRICS_CSV):
        if incomplete and not (path / name).exists():
            tables[name] = []  # a run that failed before its first step has no tables: say so, don't fail
            continue
        tables[name] = _checked_table(path, name, incomplete, notes)
    time_rows = _checked_table(path, V.TIME_CSV, incomplete, notes) if (path / V.TIME_CSV).exists() else None
    f64 = path / V.FLOAT64_CSV
    float64 = sorted(_checked_table(path, f64.name, incomplete, notes), key=lambda r: r["layer"]) if f64.exists() else None
    layers, modules = tables[V.LAYERS_CSV], None
    if (path / V.BLOCKS_CSV).exists():  # a model with repeated blocks: the run is read by its blocks
        layers, modules = _checked_table(path, V.BLOCKS_CSV, incomplete, notes), layers
    every = _checked_table(path, V.STEPS_CSV, incomplete, notes) if (path / V.STEPS_CSV).exists() else None
    run = Run(path, summary, config if isinstance(config, dict) else {}, layers,
              tables[V.METRICS_CSV], time_rows, notes, float64 or None, modules, every)
    if incomplete:
        steps = run.steps
        span = f"steps {steps[0]}–{steps[-1]} of {summary.get('steps_planned', '?')}" if steps else "no steps yet"
        why = {V.RUNNING: "is still running, or was killed", V.INTERRUPTED: "was interrupted",
               V.FAILED: f"failed ({summary.get('error', 'see summary.json')})"}[status]
        notes.insert(0, f"incomplete run: it {why}; showing what it logged ({span})")
    elif not run.layers:
        raise UsageError(f"'{path}/layers.csv' has no rows, although the run is {status}")
    return run


# ----------------------------------------------------------------------------- finding runs


def sweep_runs(sweep: Path) -> list[Path]:
    """A sweep's run directories, in sweep.csv's order when it names them (else by name)."""
    runs = sorted(d for d in sweep.iterdir() if d.is_dir() and is_run(d))
    order: dict[str, int] = {}
    try:
        for i, row in enumerate(read_table(sweep, "sweep.csv")):
            for v in row.values():
                if isinstance(v, str) and Path(v).name not in order:
                    order[Path(v).name] = i
    except UsageError:
        pass  # an unreadable sweep.csv still leaves the runs themselves
    return sorted(runs, key=lambda d: (order.get(d.name, len(order)), d.name))


def find_runs(runs_dir: Path) -> list[Path]:
    """Every run under runs_dir: its direct children, and the runs inside sweep directories."""
    if not runs_dir.is_dir():
        return []
    out = []
    for d in sorted(runs_dir.iterdir()):
        if d.is_dir() and is_run(d):
            out.append(d)
        elif d.is_dir() and is_sweep(d):
            out.extend(sweep_runs(d))
    return out


def _expand(d: Path) -> list[Path]:
    if is_run(d):
        return [d]
    if is_sweep(d):
        runs = sweep_runs(d)
        if not runs:
            raise UsageError(f"sweep '{d}' holds no runs yet")
        return runs
    inner = [c for c in sorted(d.iterdir()) if c.is_dir() and is_run(c)]
    hint = f"; it holds {len(inner)} runs: name one, e.g. '{inner[0]}'" if inner else ""
    raise UsageError(f"'{d}' is not a vgrad run: it has no summary.json{hint}")


def resolve(arg: str, runs_dir: Path) -> list[Path]:
    """One RUN argument -> run directories (several for a sweep)."""
    p = Path(arg)
    for cand in (p, runs_dir / arg):
        if cand.is_dir():
            return _expand(cand)
        if cand.exists():
            raise UsageError(f"'{cand}' is a file, not a run directory")
    if not runs_dir.is_dir():
        raise UsageError(f"no run '{arg}': no such directory, and there is no runs directory "
                         f"'{runs_dir.resolve()}' (run from the folder that holds runs/, or add --runs-dir DIR)")
    candidates = [d for d in sorted(runs_dir.iterdir()) if d.is_dir() and is_sweep(d)] + find_runs(runs_dir)
    # An exact directory name wins; then the newest run whose config name is exactly ARG (the part
    # before -<date>-<time>-<id>: `show exploding` means the run named "exploding", not
    # "exploding-clipped"); then any prefix.
    named = [d for d in candidates if re.fullmatch(re.escape(arg) + r"-\d{8}-\d{6}-[0-9a-f]{4}", d.name)]
    # a config run twice: its name means its newest run (the stamp sorts by time)
    named = [max(named, key=lambda d: d.name[len(arg):])] if named else []
    matches = ([d for d in candidates if d.name == arg] or named or [d for d in candidates if d.name.startswith(arg)])
    if not matches:
        raise UsageError(f"no run '{arg}': not a directory, and no run under '{runs_dir.resolve()}' has a name "
                         f"starting with it (`vgrad runs` lists them; --runs-dir DIR looks elsewhere)")
    if len(matches) > 1:
        shown = ", ".join(d.name for d in matches[:8]) + (f", and {len(matches) - 8} more" if len(matches) > 8 else "")
        raise UsageError(f"'{arg}' is ambiguous: it matches {len(matches)} runs: {shown}; give a longer prefix")
    return _expand(matches[0])


def run_ref(path: Path) -> str:
    """How to name a run in a command run from here: its name if it is in ./runs (RUN lookups
    search there), else its path, relative when that is shorter."""
    import os

    path = Path(path).resolve()
    if path.parent == Path("runs").resolve():
        return path.name
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else str(path)
