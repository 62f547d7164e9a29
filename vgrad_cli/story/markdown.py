"""story.md: the story's tables for a person (slides, a README), with the machine and the seeds they
were measured with, and one figure per chapter when the figures were drawn."""

from __future__ import annotations

import os
import platform
import time

from ..vocab import VERSION as __version__
from .report import tables


def machine() -> dict:
    """What the figures were measured on: CPU model, the cores this process may use."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": cores,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a pipe inside a cell would split it


def _elapsed(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def render(groups: list[dict], seeds: int, about: dict, figures: dict) -> str:
    torch = next((g["_versions"].get("torch") for g in groups if g.get("_versions")), None) or "?"
    steps = (f"every chapter cut to `train.steps={about['steps']}` (a quick look: not the bundled figures)"
             if about.get("steps") else "each chapter's own settings")
    lines = [
        "# The vanishing-gradient story, measured",
        "",
        f"`{about['command']}`: {len(groups)} chapter{'s' if len(groups) != 1 else ''} x {seeds} "
        f"seed{'s' if seeds != 1 else ''} (each config's own seed, then +1, +2, ...; the first is the "
        f"config as shipped), {steps}.",
        "",
        f"Measured on {about['cpu']}, {about['cores']} core{'s' if about['cores'] != 1 else ''} "
        f"({about['workers']} worker process{'es' if about['workers'] != 1 else ''}, one torch thread each); "
        f"torch {torch}, vgrad {__version__}, Python {platform.python_version()}; {about['date']}, "
        f"took {_elapsed(about['elapsed_s'])}.",
        "",
        "Every figure is the median over the seeds, then [min–max]; a single value: every seed gave it "
        "(to the digits shown). Step 0 is before the first update; \"end\" is the last logged step. "
        "End-of-run figures come from completed runs only, `(n=3)` when fewer runs than seeds gave one; "
        f"a diverged run stopped at a non-finite loss. `vanishing (k/{seeds})`: k of the {seeds} runs got "
        "that verdict (a ratio below 0.01: vanishing; above 100, or a non-finite loss: exploding; "
        "docs/run-format.md).",
    ]
    for part in tables(groups):
        lines += ["", f"## {part['title']}", "", part["note"] + ".", ""]
        headers = part["headers"][:-2] + [part["headers"][-2] + (f" ({part['common']})" if part["common"] else ""),
                                          part["headers"][-1]]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join("---" for _ in part["headers"]) + "|")
        for row in part["rows"]:
            row = [f"`{row[0]}`"] + [_cell(c) for c in row[1:]]
            lines.append("| " + " | ".join(row) + " |")
    if figures:
        lines += ["", "## Figures", "",
                  "One per chapter: the back-propagated error at step 0 and at the end, a line per seed "
                  "(across layers for an MLP, back in time for a recurrent net)."]
        for g in groups:
            if g["chapter"] in figures:
                lines += ["", f"### {g['chapter']}: {g['shows']}", "",
                          f"![{g['chapter']}]({figures[g['chapter']]})"]
    return "\n".join(lines) + "\n"
