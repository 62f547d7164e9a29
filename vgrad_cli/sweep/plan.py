"""A sweep's plan: one experiment per point of a parameter grid (times seeds), and its directory.

The flow of `vgrad sweep`:
  1. plan    - parse PARAMs and --values, build every point's config and validate ALL of them (here);
  2. (the CLI gets the executor ready: Ray imported and reachable)
  3. start   - only now create the sweep directory and its sweep.json (the plan, for --resume; here);
  4. run     - the executor runs the points; each finished run appends one complete row to sweep.csv
               (run.py; executors in executors.py);
  5. report  - sweep_summary.csv, sweep.png and the console table (report.py).
Bad input stops at step 1 or 2, so it leaves nothing behind.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UsageError
from ..rundir.files import create_unique_dir, write_text_atomic

SHORT_NAMES = {
    "depth": "model.depth", "width": "model.width", "activation": "model.activation", "init": "model.init",
    "norm": "model.norm", "residual": "model.residual", "kind": "model.kind", "optimizer": "train.optimizer",
    "lr": "train.lr", "clip_norm": "train.clip_norm", "seq_len": "task.seq_len",
}

# The base config when --config is not given: configs/01_deep_sigmoid.yaml (a test keeps the two
# equal). Embedded rather than read from configs/ because that folder is not part of an installed
# wheel. Its 1000 steps are cut to DEFAULT_STEPS so that `vgrad sweep depth` alone takes seconds.
DEFAULT_BASE = {
    "name": "deep-sigmoid",
    "seed": 0,
    "model": {"kind": "mlp", "depth": 20, "width": 64, "activation": "sigmoid", "init": "xavier_normal"},
    "task": {"name": "blobs"},
    "train": {"optimizer": "sgd", "lr": 0.1, "steps": 1000},
}
DEFAULT_STEPS = 300

MANIFEST = "sweep.json"


def default_values(key: str) -> list | None:
    """A sensible ladder per short name; None where there is no natural one (the user must say)."""
    from ..config import MODEL_KINDS, NORMS, OPTIMIZERS

    return {
        "model.depth": [1, 2, 4, 8, 16, 32],
        "model.width": [8, 16, 32, 64, 128, 256],
        "model.activation": ["sigmoid", "tanh", "relu", "leaky_relu", "gelu", "selu"],
        "model.init": ["normal", "xavier_normal", "kaiming_normal", "orthogonal"],
        "model.norm": list(NORMS),
        "model.residual": [False, True],
        "model.kind": list(MODEL_KINDS),
        "train.optimizer": list(OPTIMIZERS),
        "train.lr": [0.001, 0.01, 0.1, 1.0],
        "task.seq_len": [10, 25, 50, 100],
    }.get(key)


# ----------------------------------------------------------------------------- the plan


@dataclass
class Param:
    name: str      # as the user wrote it; the column name in sweep.csv
    key: str       # the dotted config key
    values: list


@dataclass
class Point:
    index: int
    values: tuple  # one per Param, as parsed
    seed: int
    run_name: str
    config: dict   # the point's config as plain data, validated: what the worker runs

    def label(self, params: list[Param]) -> str:
        return ", ".join(f"{p.name}={cell(v)}" for p, v in zip(params, self.values)) + f", seed={self.seed}"


@dataclass
class Plan:
    params: list[Param]
    seeds: list[int]
    base: dict                     # the base config after --config, --set and the default steps
    points: list[Point] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # lines for the console (e.g. "default config")

    def manifest(self) -> dict:
        return {"format": 1, "params": [vars(p) for p in self.params], "seeds": self.seeds, "base": self.base}


def resolve_param(name: str) -> str:
    """A short name or dotted key -> the dotted config key."""
    if name in SHORT_NAMES:
        return SHORT_NAMES[name]
    if name in ("seed", "name"):
        raise UsageError(f"'{name}' cannot be swept: use --seeds K for seeds; each run is named after its point")
    if "." in name and all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part) for part in name.split(".")):
        return name  # any dotted key: the schema checks it when the points are validated
    match = difflib.get_close_matches(name, list(SHORT_NAMES), n=1, cutoff=0.6)
    hint = f" (did you mean '{match[0]}'?)" if match else ""
    raise UsageError(
        f"unknown parameter '{name}'{hint}; use a short name ({', '.join(SHORT_NAMES)}) "
        "or a dotted config key such as model.init_std"
    )


def parse_scalar(text: str):
    """One value as YAML reads it (2 -> int, relu -> str, true -> bool, null -> None), plus 1e-3 -> float,
    which YAML 1.1 would leave a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):
        return float(value)
    if isinstance(value, (dict, list)):
        raise UsageError(f"--values: '{text}' is not a single value (numbers, words, true/false, null)")
    return value


def parse_values(names: list[str], items: list[str]) -> dict[str, list]:
    """--values items -> {param name: values}. `2,4,8` is allowed when one parameter is swept."""
    keys = {resolve_param(n): n for n in names}
    out: dict[str, list] = {}
    for item in items:
        name, eq, text = item.partition("=") if "=" in item else ("", "", item)
        if eq:
            key = resolve_param(name.strip())
            if key not in keys:
                raise UsageError(
                    f"--values names '{name.strip()}', which is not a swept parameter; sweeping: {', '.join(names)}"
                )
            name = keys[key]
        elif len(names) == 1:
            name = names[0]
        else:
            raise UsageError(f"--values '{item}': with several parameters name each list, e.g. --values {names[0]}=1,2")
        if name in out:
            raise UsageError(f"--values for '{name}' is given twice; put all its values in one list")
        raw = [v.strip() for v in text.split(",")]
        if not text.strip() or any(v == "" for v in raw):
            raise UsageError(f"--values for '{name}' has an empty value list or an empty item ('{text}'); e.g. {name}=2,4,8")
        values = [parse_scalar(v) for v in raw]
        dupes = sorted({cell(v) for v in values if values.count(v) > 1})
        if dupes:
            raise UsageError(f"--values for '{name}' lists {', '.join(dupes)} more than once")
        out[name] = values
    return out


def _set(data: dict, key: str, value):
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"cannot sweep '{key}': '{'.'.join(parts[: i + 1])}' is a value, not a section")
    node[parts[-1]] = value


def _check_known(name: str, key: str, base: dict):
    """An unknown dotted key fails here, as an unknown parameter, before any point is built."""
    from ..config import validate

    data = json.loads(json.dumps(base))
    _set(data, key, None)
    try:
        validate(data)
    except UsageError as e:
        problem = str(e).partition(": ")[2]
        if problem.startswith(f"unknown key '{key}'"):
            raise UsageError(f"unknown parameter '{name}': {problem}") from None


def _run_name(parts: list[tuple[str, object]], seed: int) -> str:
    """A readable, valid run name: depth-4_activation-relu_seed-0 (schema: letters, digits, . _ -)."""
    text = "_".join(f"{n.rpartition('.')[2]}-{cell(v)}" for n, v in parts) + f"_seed-{seed}"
    text = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip("._-") or "run"
    if len(text) > 60:  # the schema allows 80; keep it unique with a short hash of the full text
        text = text[:51] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return text


def build_plan(names: list[str], values: dict[str, list], seeds: list[int], base: dict) -> Plan:
    """Every point of the grid x seeds, each validated; the first bad one raises a UsageError naming it."""
    from itertools import product

    from ..config import validate

    params = []
    for name in names:
        key = resolve_param(name)
        _check_known(name, key, base)
        vals = values.get(name)
        if vals is None:
            vals = default_values(key)
            if vals is None:
                raise UsageError(f"'{name}' has no default values; give them with --values {name}=...")
        params.append(Param(name, key, list(vals)))
    keys = [p.key for p in params]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise UsageError(f"parameter '{dup[0]}' is swept twice; list each parameter once")

    plan = Plan(params, seeds, base)
    seen_names: set[str] = set()
    for combo in product(*(p.values for p in params)):
        for seed in seeds:
            data = json.loads(json.dumps(base))  # a deep copy of plain data
            for p, v in zip(params, combo):
                _set(data, p.key, v)
            data["seed"] = seed
            name = _run_name([(p.name, v) for p, v in zip(params, combo)], seed)
            if name in seen_names:  # two values that read the same once sanitized
                name = f"{name[:70]}-p{len(plan.points)}"
            seen_names.add(name)
            data["name"] = name
            point = Point(len(plan.points), tuple(combo), seed, name, {})
            validate(data, f"sweep point {point.label(params)}")
            point.config = data  # the worker validates this same input again (it is what was checked)
            plan.points.append(point)
    return plan


def new_plan(names: list[str], value_items: list[str], seeds: int | None, config: Path | None,
             sets: list[str]) -> Plan:
    """The plan for a fresh sweep from the command line."""
    from ..config import apply_overrides, read_yaml

    if not names:
        raise UsageError("name at least one parameter to sweep, e.g. `vgrad sweep depth` (or use --resume DIR)")
    if seeds is not None and seeds < 1:
        raise UsageError(f"--seeds must be >= 1 (got {seeds})")
    notes = []
    if config is None:
        base = json.loads(json.dumps(DEFAULT_BASE))
        base["train"]["steps"] = DEFAULT_STEPS
        note = "base config: the bundled deep sigmoid MLP (configs/01_deep_sigmoid.yaml)"
        if not any(item.partition("=")[0].strip() == "train.steps" for item in sets):
            note += f" with train.steps={DEFAULT_STEPS} for speed; give --config FILE or --set train.steps=N to change it"
        notes.append(note)
    else:
        base = read_yaml(config)
        notes.append(f"base config: {config}")
    swept = {resolve_param(n) for n in names}
    for item in sets:
        if item.partition("=")[0].strip() in swept:
            raise UsageError(f"--set '{item}' sets a swept parameter; give its values with --values instead")
    apply_overrides(base, list(sets))
    values = parse_values(names, list(value_items))
    seed_list = list(range(seeds)) if seeds is not None else [int(base.get("seed", 0) or 0)]
    plan = build_plan(names, values, seed_list, base)
    plan.notes = notes
    return plan


def resumed_plan(sweep_dir: Path) -> Plan:
    """The plan stored in SWEEPDIR/sweep.json, validated again (the schema may have moved on)."""
    path = Path(sweep_dir) / MANIFEST
    if not path.is_file():
        raise UsageError(f"--resume '{sweep_dir}': not a sweep directory ({MANIFEST} is missing)")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
        params = [Param(**p) for p in m["params"]]
        plan = build_plan([p.name for p in params], {p.name: p.values for p in params}, m["seeds"], m["base"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UsageError(f"--resume '{sweep_dir}': {MANIFEST} is corrupt ({e})") from None
    plan.notes = [f"resuming {sweep_dir}"]
    return plan


# ----------------------------------------------------------------------------- the sweep directory


def create_sweep_dir(out: Path, plan: Plan) -> Path:
    names = "-".join(re.sub(r"[^A-Za-z0-9._-]", "_", p.name) for p in plan.params)[:60]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # two sweeps started in the same second get -2, -3, ...
    path = create_unique_dir(out, (f"sweep-{names}-{stamp}" + (f"-{i + 1}" if i else "") for i in range(100)),
                             "sweep directory")
    write_text_atomic(path / MANIFEST, json.dumps(plan.manifest(), indent=2) + "\n")
    return path


def cell(v) -> str:
    """A CSV cell that reads back as the same YAML scalar: None -> '', True -> 'true', floats exact."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    return str(v)
