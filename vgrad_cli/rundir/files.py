"""The run directory: writing it while a run goes, reading it back afterwards.

Layout (documented in docs/run-format.md):
    <name>-<YYYYmmdd-HHMMSS>-<id>/config.yaml, layers.csv, metrics.csv, summary.json
CSV rows are appended and flushed at every logged step, so a killed run leaves tables that parse.
summary.json is written when the run starts (status "running") and replaced atomically at the end.
This module imports neither torch nor pandas: `compare`/`show` read runs without them.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import time
from pathlib import Path

import yaml

from ..errors import UsageError
from ..vocab import CONFIG_YAML, SUMMARY_JSON, TEXT_COLUMNS


class CsvTable:
    """An append-only CSV file: header at creation, then whole rows handed to the OS per append."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = Path(path), list(columns)
        self.file = open(path, "wb", buffering=0)  # unbuffered: each append is one write() call
        self._write(",".join(columns) + "\n")

    def widen(self, new: list[str]):
        """Add columns at the end: the file is written again whole, with empty cells in the rows it
        already has, and replaces the old one atomically (a reader or a crash sees one or the other)."""
        self.file.close()
        rows = self.path.read_text(encoding="utf-8").splitlines()[1:]
        self.columns += new
        pad = "," * len(new)
        write_text_atomic(self.path, ",".join(self.columns) + "\n" + "".join(f"{r}{pad}\n" for r in rows))
        self.file = open(self.path, "ab", buffering=0)

    def append(self, rows: list[dict]):
        # Format every row first, then write them with a single system call: a SIGKILL lands
        # between appends, never inside a line, so the file always parses up to the last step.
        cols = self.columns
        self._write("".join(",".join(["" if (v := r.get(c)) is None else str(v) for c in cols]) + "\n" for r in rows))

    def _write(self, text: str):
        data = memoryview(text.encode("utf-8"))
        while data:  # a regular file takes it whole; loop only for the rare short write
            data = data[self.file.write(data):]

    def close(self):
        self.file.close()


def write_text_atomic(path: Path, text: str):
    """Write a whole file or nothing: readers (and a crash) never see half of it."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk: no half-written .tmp left behind either
        raise


def write_json_atomic(path: Path, data: dict):
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def create_unique_dir(root: str | Path, names, what: str = "run directory") -> Path:
    """Create the first of `names` (tried in order) that does not exist yet under `root`.

    Never reuses a directory: exist_ok=False makes the check and the creation one step.
    """
    root = Path(root)
    for name in names:
        path = root / name
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise UsageError(f"cannot create the {what} under '{root}': {e.strerror}") from None
    raise UsageError(f"cannot find a free {what} name under '{root}'")


class RunWriter:
    def __init__(self, root: str | Path, name: str):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        # a fresh random id on the (unlikely) collision
        self.path = create_unique_dir(root, (f"{name}-{stamp}-{secrets.token_hex(2)}" for _ in range(20)))
        self.tables: dict[str, CsvTable] = {}

    def write_config(self, config: dict):
        text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
        write_text_atomic(self.path / CONFIG_YAML, text)

    def table(self, name: str, columns: list[str]) -> CsvTable:
        self.tables[name] = CsvTable(self.path / name, columns)
        return self.tables[name]

    def write_summary(self, summary: dict):
        write_json_atomic(self.path / SUMMARY_JSON, summary)

    def close(self):
        for t in self.tables.values():
            t.close()


# ----------------------------------------------------------------------------- reading


def read_summary(run: Path) -> dict:
    try:
        return json.loads((run / SUMMARY_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"'{run}' is not a vgrad run: {SUMMARY_JSON} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"'{run}/summary.json' is corrupt: {e}") from None


def _number(text: str):
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def read_table(run: Path, name: str) -> list[dict]:
    """A CSV table as a list of dicts with numbers parsed; empty cells are None."""
    path = run / name
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise UsageError(f"'{run}' has no {name}") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise UsageError(f"'{path}' is corrupt: {e}") from None
    # a layer's name stays text: an nn.Sequential's layers are called "0", "1", ...
    return [{k: (v if k in TEXT_COLUMNS else _number(v)) if v is not None else None for k, v in r.items()} for r in rows]
