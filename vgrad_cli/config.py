"""The config schema (one place), loading it safely, and `--set` overrides. Which model keys apply to
which model kind, and the checks across them, are in kinds.py.

Every key has a default except what defines the experiment, so a config can be three lines.
Errors become one-line UsageErrors that name the key path, the value, and what is allowed.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .activations import ACTIVATIONS
from .errors import UsageError
from .inits import INITS
from .kinds import (  # noqa: F401  (re-exported: the kind tables are part of the schema)
    DEFAULT_ACTIVATION, KIND_ONLY, MODEL_KINDS, NORM_POSITIONS, RECURRENT_KINDS, SEQUENCE_KINDS, SQRT_DEPTH,
    TRANSFORMER_DEFAULTS, applicable, branch_scale, check_kind, check_residual_scale,
)
from .tasks import TASK_NAMES, TASK_TYPES

NORMS = ("none", "batch", "layer")
OPTIMIZERS = ("sgd", "adam", "rmsprop")
DEVICES = ("auto", "cpu", "cuda")


def _closest(word: str, options) -> str:
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def one_of(options, what: str):
    """A validator: the value must be one of `options` (kept in the registries, not here)."""

    def check(value: str) -> str:
        if value not in options:
            raise ValueError(
                f"'{value}' is not a known {what}; choose one of: {', '.join(options)}{_closest(value, options)}"
            )
        return value

    return AfterValidator(check)


class Section(BaseModel):
    # allow_inf_nan=False: .inf or .nan is never a sensible learning rate, std or clip value
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Guards against a typo that would take the machine's memory (depth=100000): far above anything
# vgrad's experiments need, far below what exhausts a laptop.
MAX_PARAMETERS = 100_000_000
MAX_ACTIVATIONS = 200_000_000  # values kept for backprop per step: batch x width x depth (x seq_len)
MAX_INIT_SEEDS = 256  # log.init_seeds: each seed is one step-0 forward/backward; more is a sweep, not a check


class ModelConfig(Section):
    kind: Annotated[str, one_of(MODEL_KINDS, "model kind")] = Field("mlp", description="mlp, cnn, rnn, lstm, gru or transformer")
    depth: int = Field(8, ge=1, description="hidden layers (mlp blocks, cnn conv blocks, transformer blocks, or stacked recurrent layers)")
    width: int = Field(64, ge=1, description="units per hidden layer (channels for cnn, the hidden size for rnn/lstm/gru, d_model for transformer)")
    activation: Optional[Annotated[str, one_of(tuple(ACTIVATIONS), "activation")]] = Field(
        None, description=f"mlp, cnn (default relu): one of {', '.join(ACTIVATIONS)}; rnn (default tanh): tanh or relu; "
        "transformer (default gelu): the blocks' MLP activation, any of the above; not for lstm/gru"
    )
    init: Annotated[str, one_of(tuple(INITS), "init")] = Field(
        "default", description=f"weight init: {', '.join(INITS)}"
    )
    init_std: Optional[float] = Field(
        None, gt=0, description="std for normal (default 0.01), bound for uniform (default 0.05), gain for the others"
    )
    bias_init: float = Field(0.0, description="constant every bias starts at")
    norm: Annotated[str, one_of(NORMS, "norm")] = Field(
        "none", description="none, batch or layer: after each Linear (mlp) or conv (cnn; layer = GroupNorm(1, width)), or "
        "between stacked layers (layer only, recurrent)"
    )
    residual: bool = Field(False, description="identity skip around each hidden block (or stacked layer) after the first")
    residual_scale: Annotated[Union[float, str], BeforeValidator(check_residual_scale)] = Field(
        1.0, description="mlp or cnn with residual: the branch multiplier s in h + s*F(h), a number > 0 or "
        f"'{SQRT_DEPTH}' (1/sqrt(model.depth): keeps a deep unnormalised residual stream from exploding)"
    )
    recurrent_init: Annotated[str, one_of(tuple(INITS), "recurrent_init")] = Field(
        "default", description="rnn/lstm/gru hidden-to-hidden weights (per gate block): any init, e.g. orthogonal, identity"
    )
    recurrent_std: Optional[float] = Field(None, gt=0, description="like init_std, for recurrent_init")
    forget_bias: Optional[float] = Field(None, description="lstm only: forget-gate bias (null = 0; 1.0 is the usual)")
    heads: Optional[int] = Field(None, ge=1, description="transformer only (default 4): attention heads; must divide width")
    norm_position: Optional[Annotated[str, one_of(NORM_POSITIONS, "norm_position")]] = Field(
        None, description="transformer only (default pre): LayerNorm after the residual add (post, Vaswani et al.) "
        "or inside each branch plus a final one (pre, Xiong et al. 2020)"
    )
    chrono_init: Optional[int] = Field(
        None, ge=3, description="lstm only: chrono init for dependencies up to T_max steps (Tallec & Ollivier 2018): "
        "forget bias ~ log U(1, T_max - 1), input bias = -forget bias; e.g. the sequence length"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_activation(cls, data):
        if isinstance(data, dict) and data.get("activation") is None and isinstance(data.get("kind", "mlp"), str):
            data = {**data, "activation": DEFAULT_ACTIVATION.get(data.get("kind", "mlp"))}
        if isinstance(data, dict) and data.get("kind") == "transformer":
            data = {**data, **{k: v for k, v in TRANSFORMER_DEFAULTS.items() if data.get(k) is None}}
        return data

    def branch_scale(self) -> float:
        return branch_scale(self.residual_scale, self.depth)


def _times_positions(task) -> str:
    """What multiplies the activations besides batch, width and depth: time steps or pixels."""
    if hasattr(task, "image_size"):
        return " x task.image_size^2"
    return " x task.seq_len" if getattr(task, "seq_len", 1) > 1 else ""


TaskConfig = Annotated[Union[TASK_TYPES], Field(discriminator="name")]  # type: ignore[valid-type]


class TrainConfig(Section):
    optimizer: Annotated[str, one_of(OPTIMIZERS, "optimizer")] = Field("sgd", description="sgd, adam or rmsprop")
    lr: float = Field(0.1, gt=0, le=1e6, description="learning rate")
    momentum: float = Field(0.0, ge=0, lt=1, description="momentum for sgd and rmsprop")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay")
    batch_size: int = Field(128, ge=1, description="examples per step")
    steps: int = Field(1000, ge=1, description="optimizer updates")
    clip_norm: Optional[float] = Field(None, gt=0, description="clip the total gradient L2 norm to this")
    clip_value: Optional[float] = Field(None, gt=0, description="clip each gradient element to +/- this")
    warmup_steps: int = Field(
        0, ge=0, description="linear learning-rate warm-up: step s uses lr x min(1, (s+1)/warmup_steps); 0 = none"
    )
    device: Annotated[str, one_of(DEVICES, "device")] = Field("auto", description="auto (cuda if available), cpu, cuda")
    cpu_threads: int = Field(
        1, ge=0, description="torch intra-op threads on CPU; 0 = torch's default (all cores). 1 suits vgrad's "
        "small models and does not collapse when other processes share the cores"
    )


class LogConfig(Section):
    every: int = Field(10, ge=1, description="write table rows every N steps (step 0 and the last always)")
    eval_every: int = Field(100, ge=1, description="evaluate on the held-out set every N steps (and the last)")
    activations: bool = Field(True, description="activation statistics on/off")
    every_step: bool = Field(True, description="the every-step tier: the loss, total gradient norm (before and "
                             "after clipping), learning rate and finiteness of every step, into steps.csv; "
                             "false: only the loss between logged steps (one read of the gradients per step fewer)")
    init_seeds: int = Field(
        0, ge=0, le=MAX_INIT_SEEDS, description="also measure step 0 of seeds seed .. seed+K-1 (no training) and "
        "report the per-layer factor's spread over them (init_spread.csv, summary.json); 0 = off",
    )
    float64_init: bool = Field(
        False, description="measure step 0 again in float64 (layers_float64.csv); false: only when a step-0 "
        "grad_norm or delta_norm is below 1e-30, where float32 underflows"
    )


class Config(Section):
    name: Optional[str] = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=80,
        description="part of the run directory's name (letters, digits, . _ -)",
    )
    seed: int = Field(0, ge=0, description="seeds the model init, the data and the batch order")
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(description="the synthetic task (default: spirals for mlp, shapes for cnn, adding for rnn/lstm/gru/transformer)")
    train: TrainConfig = Field(default_factory=TrainConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_task(cls, data):
        if isinstance(data, dict) and data.get("task") is None:
            model = data.get("model") if isinstance(data.get("model"), dict) else {}
            default = {"cnn": "shapes"}.get(model.get("kind"), "adding" if model.get("kind") in SEQUENCE_KINDS else "spirals")
            data = {**data, "task": {"name": default}}
        return data

    @model_validator(mode="after")
    def _consistent(self):
        t = self.train
        if t.clip_norm is not None and t.clip_value is not None:
            raise ValueError("train.clip_norm and train.clip_value are both set; choose one way to clip")
        if t.optimizer == "adam" and t.momentum != 0:
            raise ValueError("train.momentum applies to sgd and rmsprop only; adam has its own moment estimates")
        check_kind(self.model)
        if self.model.kind not in self.task.model_kinds:
            raise ValueError(
                f"task.name '{self.task.name}' does not fit model.kind '{self.model.kind}'; "
                f"it takes model.kind: {', '.join(self.task.model_kinds)}"
            )
        if self.model.norm == "batch" and t.batch_size < 2:
            raise ValueError("model.norm: batch needs train.batch_size >= 2")
        self._check_size()
        return self

    def _check_size(self):
        m = self.model
        gates = {"rnn": 1, "lstm": 4, "gru": 3, "transformer": 12}.get(m.kind, 1)  # transformer: 4 w^2 attention + 8 w^2 MLP
        kernel = 9 if m.kind == "cnn" else 1  # 3x3 weights per channel pair
        params = m.depth * gates * m.width * (kernel * m.width + 1)
        if params > MAX_PARAMETERS:
            raise ValueError(
                f"model.depth {m.depth} x model.width {m.width} makes ~{params:.2g} parameters, above vgrad's "
                f"limit of {MAX_PARAMETERS:.0e}; use a smaller depth or width"
            )
        seq_len = getattr(self.task, "seq_len", 1) * getattr(self.task, "image_size", 1) ** 2  # or pixels
        acts = self.train.batch_size * m.width * m.depth * gates * seq_len
        if acts > MAX_ACTIVATIONS:
            raise ValueError(
                f"train.batch_size x model.width x model.depth{_times_positions(self.task)} makes "
                f"~{acts:.2g} activations per step, above vgrad's limit of {MAX_ACTIVATIONS:.0e}; make one smaller"
            )

    def run_name(self) -> str:
        act = f"-{self.model.activation}" if self.model.activation else ""
        return self.name or f"{self.model.kind}{act}-d{self.model.depth}"

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------------- loading


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping safely (no object-constructing tags); any problem -> UsageError."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"config file '{p}' not found")
    if p.is_dir():
        raise UsageError(f"config path '{p}' is a directory; give a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read config file '{p}': {getattr(e, 'strerror', None) or e}") from None
    if not text.strip():
        raise UsageError(f"config file '{p}' is empty; it needs at least a mapping such as 'model: {{depth: 10}}'")
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        tag = (e.problem or "").split("tag '")[-1].rstrip("'")
        raise UsageError(
            f"{p}, line {line}: YAML tag '{tag}' is not allowed; configs hold plain mappings, lists, numbers and strings"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"invalid YAML in {p}{where}: {problem}") from None
    if data is None:
        raise UsageError(f"config file '{p}' holds no keys (only comments?)")
    if not isinstance(data, dict):
        raise UsageError(f"config file '{p}' must be a mapping of keys such as 'model:', got a {type(data).__name__}")
    return data


def apply_overrides(data: dict, sets: list[str]) -> dict:
    """Apply `--set a.b=value` overrides (value parsed as a YAML scalar) to a nested dict, in place.
    `--set task.name=X` switching to another task first drops the old task's own keys (seq_len,
    image_size, ...) that X does not take: a user switching tasks means the new task with its
    defaults, not an "unknown key" for a key they never typed. Keys set with --set stay, and are
    checked."""
    _switch_task(data, sets)
    for item in sets:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key or any(not part for part in key.split(".")):
            raise UsageError(f"--set '{item}': expected KEY=VALUE with a dotted key, e.g. --set model.depth=30")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UsageError(f"--set '{item}': '{'.'.join(parts[: i + 1])}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def _switch_task(data: dict, sets: list[str]) -> None:
    names = [raw for key, _, raw in (item.partition("=") for item in sets) if key.strip() == "task.name"]
    task = data.get("task")
    if not names or not isinstance(task, dict):
        return
    try:
        new = yaml.safe_load(names[-1])
    except yaml.YAMLError:
        return
    if new == task.get("name") or new not in TASK_NAMES:  # an unknown name: the validator names it
        return
    takes = TASK_TYPES[TASK_NAMES.index(new)].model_fields
    data["task"] = {k: v for k, v in task.items() if k in takes}


def validate(data: dict, source: str = "config", overrides: dict | None = None) -> Config:
    """Validate a config dict. `overrides` maps dotted keys set on the command line to the
    flag that set them (e.g. "--set train.lr=0"), so an error about one of them blames the flag."""
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        path, _ = _fields_at(tuple(errors[0]["loc"]))
        if overrides and path in overrides:
            source = overrides[path]
        elif overrides and not path:  # a rule across keys ("task.name 'shapes' does not fit ..."): blame the flag it names
            named = [k for k in overrides if re.search(rf"(^|\W){re.escape(k)}(\W|$)", errors[0]["msg"])]
            source = overrides[named[0]] if named else source
        raise UsageError(f"{source}: {_describe(errors[0])}{more}") from None


def load_config(path: str | Path | None, sets: list[str] | tuple = (), flags: dict | None = None) -> Config:
    """Read, override and validate. `path=None` starts from the defaults (used by sweeps and tests).
    `flags` names the command-line flag behind a key (e.g. {"train.steps": "--steps -5"}) for errors."""
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, list(sets))
    overrides = {item.partition("=")[0].strip(): f"--set {item}" for item in sets}
    overrides.update(flags or {})
    return validate(data, str(path) if path is not None else "config", overrides)


# ----------------------------------------------------------------------------- error messages


def _fields_at(loc: tuple) -> tuple[str, list[str]]:
    """Walk the schema along an error location: (dotted key path, valid sibling keys)."""
    cls: Any = Config
    path: list[str] = []
    siblings: list[str] = list(Config.model_fields)
    for part in loc:
        if isinstance(part, int):
            path.append(str(part))
            continue
        if part in TASK_NAMES and path == ["task"]:
            cls = TASK_TYPES[TASK_NAMES.index(part)]  # the union's tag: not a key the user wrote
            continue
        siblings = list(cls.model_fields) if cls is not None else []
        path.append(part)
        field = cls.model_fields.get(part) if cls is not None else None
        ann = getattr(field, "annotation", None)
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return ".".join(path), siblings


def _elsewhere(parent: str, leaf: str) -> str:
    """A key that exists, just not here: `depth` at the top (-> model.depth), or `seq_len` under a
    task that has none (-> the tasks that take it)."""
    if parent == "task":
        takers = [name for name, t in zip(TASK_NAMES, TASK_TYPES) if leaf in t.model_fields]
        if takers:
            return f" (only task{'s' if len(takers) > 1 else ''} {', '.join(takers)} take{'' if len(takers) > 1 else 's'} '{leaf}')"
        return ""
    if parent:
        return ""
    sections = {"model": ModelConfig, "train": TrainConfig, "log": LogConfig}
    homes = [f"{name}.{leaf}" for name, cls in sections.items() if leaf in cls.model_fields]
    homes += [f"task.{leaf}"] if not homes and any(leaf in t.model_fields for t in TASK_TYPES) else []
    return f" (did you mean '{homes[0]}'?)" if homes else ""


def _describe(err: dict) -> str:
    kind, loc, value, ctx = err["type"], tuple(err["loc"]), err.get("input"), err.get("ctx") or {}
    path, siblings = _fields_at(loc)
    where = f"{path}: " if path else ""
    got = f"got {value!r}"
    if kind == "extra_forbidden":
        parent, _, leaf = path.rpartition(".")
        full = [f"{parent}.{s}" if parent else s for s in siblings]
        return f"unknown key '{path}'{_elsewhere(parent, leaf) or _closest(path, full)}; allowed here: {', '.join(siblings)}"
    if kind == "missing":
        return f"{where}required key is missing"
    if kind == "union_tag_invalid":
        return f"{path}.name: '{ctx.get('tag')}' is not a known task; choose one of: {', '.join(TASK_NAMES)}{_closest(ctx.get('tag'), TASK_NAMES)}"
    if kind == "union_tag_not_found":
        return f"{path}.name is missing; choose one of: {', '.join(TASK_NAMES)}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        return f"{where}must be {bounds[kind]} {bound:g} ({got})"
    if kind == "finite_number":
        return f"{where}must be a finite number ({got})"
    if kind == "string_pattern_mismatch":
        return f"{where}{value!r} may hold only letters, digits, '.', '_' and '-'"
    types = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string"}
    for prefix, what in types.items():
        if kind.startswith(prefix + "_"):
            return f"{where}expected {what} ({got})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where}expected a mapping of keys ({got})"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}{msg}" if kind == "value_error" else f"{where}{msg} ({got})"
