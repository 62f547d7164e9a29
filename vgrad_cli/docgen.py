"""Generate docs/config.md from the schema, so the reference cannot drift from the code.

    python -m vgrad_cli.docgen > docs/config.md      (tests/test_docs.py checks it is current)
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from .config import Config
from .tasks import TASK_TYPES

HEADER = """# Config reference

Generated from the schema in `vgrad_cli/config.py` by `python -m vgrad_cli.docgen > docs/config.md`;
a test fails when this file and the code disagree. Every key has a default: a config may be as short as

```yaml
model: {depth: 20, activation: sigmoid, init: xavier_normal}
task: {name: blobs}
```

Override any key from the command line with `--set section.key=value` (value parsed as YAML).
`--set task.name=X` switches the task: the config's keys of the old task that X does not take
(`seq_len`, `image_size`, ...) are dropped, so X starts from its own defaults.
Unknown keys, wrong types and out-of-range values are errors that name the key (exit code 2).
"""


def _default(field) -> str:
    if field.default_factory is not None:
        return "(section)"
    return "`null`" if field.default is None else f"`{json.dumps(field.default)}`"


def _constraints(field) -> str:
    out = []
    for m in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(m, attr, None) is not None:
                out.append(f"{sym} {getattr(m, attr)}")
    return ", ".join(out)


def _table(model: type[BaseModel], prefix: str, skip=()) -> list[str]:
    lines = ["| key | default | constraint | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            continue
        lines.append(f"| `{prefix}{name}` | {_default(field)} | {_constraints(field)} | {field.description or ''} |")
    return lines


def render() -> str:
    out = [HEADER, "## Top level", *_table(Config, "", skip=("task",))]
    for section in ("model", "train", "log"):
        out += ["", f"## {section}", *_table(Config.model_fields[section].annotation, f"{section}.")]
    out += ["", "## task", "", "`task.name` picks the task; each task has its own keys (see also docs/tasks.md).",
            "Default task: `spirals`."]
    for t in TASK_TYPES:
        name = t.model_fields["name"].default
        doc = " ".join((t.__doc__ or "").split())
        out += ["", f"### task.name: {name}", "", doc, "", *_table(t, "task.", skip=("name",))]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
