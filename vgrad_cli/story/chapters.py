"""The chapters of the story: the YAML files of a configs folder (01_deep_sigmoid.yaml ...
27_residual_scaled.yaml), found on disk and named on the command line by number or stem."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError


@dataclass
class Chapter:
    stem: str                 # 01_deep_sigmoid: the file name without .yaml, the chapter's id everywhere
    path: Path
    config: dict = field(default_factory=dict)  # the file's keys as read (before seeds and --steps)
    shows: str = ""           # what the chapter shows: its "Chapter N — ..." comment line
    kind: str = "mlp"         # model.kind once validated: mlp, cnn, rnn, lstm, gru or transformer

    @property
    def number(self) -> int | None:
        digits = re.match(r"\d+", self.stem)
        return int(digits.group()) if digits else None

    @property
    def recurrent(self) -> bool:
        return self.kind in ("rnn", "lstm", "gru")


def configs_dir(given: Path | None) -> Path:
    """--configs DIR, else ./configs (a checkout), else the configs/ folder beside the installed package
    (an editable install or a source tree; a wheel does not ship it)."""
    if given is not None:
        if not given.is_dir():
            raise UsageError(f"--configs '{given}' is not a folder; give the folder that holds the chapter YAML files")
        return given
    here = Path("configs")
    if here.is_dir():
        return here
    beside = Path(__file__).resolve().parents[2] / "configs"  # vgrad_cli/story/chapters.py -> the checkout
    if beside.is_dir():
        return beside
    raise UsageError("no chapters found: there is no ./configs folder and none beside the vgrad package; "
                     "give the folder with --configs DIR")


def find_chapters(folder: Path) -> list[Chapter]:
    """The folder's *.yaml files in name order (01_..., 02_..., so the story reads in order)."""
    chapters = [Chapter(p.stem, p) for p in sorted(folder.glob("*.yaml")) if p.is_file()]
    if not chapters:
        raise UsageError(f"no chapters in '{folder}': it holds no .yaml files")
    return chapters


def select(chapters: list[Chapter], names: list[str]) -> list[Chapter]:
    """CHAPTER arguments -> chapters, in story order, each once; none given -> all of them.
    A chapter is named by its number (01 or 1), its stem (01_deep_sigmoid) or the stem without the
    number (deep_sigmoid)."""
    if not names:
        return list(chapters)
    wanted: set[str] = set()
    for name in names:
        match = [c for c in chapters if name in (c.stem, re.sub(r"^\d+_", "", c.stem))
                 or (name.isdigit() and c.number == int(name))]
        if not match:
            raise UsageError(f"unknown chapter '{name}'; name one by number (e.g. 01) or file stem, one of: "
                             f"{', '.join(c.stem for c in chapters)}")
        if len(match) > 1:  # two files with the same number (01_a.yaml, 01_b.yaml): the stem decides
            raise UsageError(f"chapter '{name}' is ambiguous: {', '.join(c.stem for c in match)}; name it by stem")
        wanted.add(match[0].stem)
    return [c for c in chapters if c.stem in wanted]


def load(chapter: Chapter) -> Chapter:
    """Read the chapter's YAML (one-line errors from config.read_yaml) and its description."""
    from ..config import read_yaml

    chapter.config = read_yaml(chapter.path)
    chapter.shows = describe(chapter.path.read_text(encoding="utf-8"))
    return chapter


def describe(text: str, limit: int = 160) -> str:
    """What the chapter shows: its first comment line without the "Chapter N —" label (the
    `# expect-at-init:` line that tests/test_configs.py reads is skipped). A line that stops mid-
    sentence goes on to the end of that sentence, within `limit` characters."""
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break  # the comments are the header; the keys follow
        words = line.lstrip("#").strip()
        if words and not words.startswith("expect-at-init:"):
            header.append(words)
    if not header:
        return ""
    first = re.sub(r"^Chapter\s+\d+\s*[—–:-]\s*", "", header[0])
    rest = " ".join(header[1:])
    if not first.endswith((".", "!", "?")) and rest:
        end = re.search(r"[.!?](?=\s+[A-Z]|$)", rest)  # "et al. 2013" is no sentence end
        first += " " + (rest[: end.end()] if end else rest)
    return first if len(first) <= limit else first[: limit - 2].rsplit(" ", 1)[0] + " …"
