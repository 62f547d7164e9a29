"""`vgrad diagnose RUN`: every symptom of vanishing/exploding gradients, theory, verdict, advice.

The report goes to stdout and diagnosis.json into the run directory. `--try` prints the config the
top (or `--rec N`) recommendation suggests, as YAML that `vgrad run` accepts; `--write FILE` writes
it to a file instead. torch is imported only by the ablation probe (skip it with --no-ablation).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .app import app, usage_errors
from .. import vocab as V

STATUS_STYLE = {"present": "bold red", "absent": "green", "not measurable": "dim"}


@app.command()
@usage_errors
def diagnose(
    run: str = typer.Argument(..., help="a run directory or a unique prefix of a run's name"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where run names are looked up"),
    k: Optional[int] = typer.Option(None, "--k", help="ablation: re-initialise the first K hidden layers [default: a third of the depth]"),
    no_ablation: bool = typer.Option(False, "--no-ablation", help="skip the ablation probe and the Jacobian spectrum (no torch, no model.pt needed)"),
    try_: bool = typer.Option(False, "--try", help="print the suggested config (YAML) instead of the report"),
    write: Optional[Path] = typer.Option(None, "--write", help="write the suggested config to FILE"),
    rec: int = typer.Option(1, "--rec", help="which recommendation --try/--write use (1 = the top one)"),
    format_: str = typer.Option("table", "--format", "-f", help="table or json"),
    init_seeds: Optional[int] = typer.Option(None, "--init-seeds", help="re-initialise the model K times (seeds seed..seed+K-1, step 0, no training): the per-layer factor's spread"),
):
    """Check a run for vanishing and exploding gradients and recommend config changes.

    The symptoms with their evidence, the measured per-layer factor against mean-field theory, and
    what to change."""
    from ..analysis.diagnose import diagnose as run_diagnosis
    from ..errors import UsageError
    from ..rundir.store import resolve

    if format_ not in ("table", "json"):
        raise UsageError(f"--format must be table or json, not '{format_}'")
    if k is not None and k < 1:
        raise UsageError(f"--k must be >= 1, not {k}")
    paths = resolve(run, runs_dir)
    if len(paths) > 1:
        raise UsageError(f"'{run}' is a sweep of {len(paths)} runs: diagnose one of them")
    spread = _init_spread(paths[0], init_seeds) if init_seeds is not None else None
    d = run_diagnosis(paths[0], k=k, ablation=not no_ablation, init_spread=spread)
    suggested = _suggested(paths[0], d, rec) if (try_ or write is not None) else None
    if try_ and write is None:
        sys.stdout.write(suggested)
        return
    if format_ == "json":
        import json

        sys.stdout.write(json.dumps(d, indent=2) + "\n")
    else:
        render(d, paths[0])
    if write is not None:
        try:
            write.parent.mkdir(parents=True, exist_ok=True)
            write.write_text(suggested, encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write '{write}': {e.strerror}") from None
        print(f"suggested config: {write}  (run it: vgrad run {write})", file=sys.stderr)


def _init_spread(path: Path, k: int) -> dict:
    from ..analysis.diagnose import load
    from ..config import MAX_INIT_SEEDS
    from ..errors import UsageError

    if not 1 <= k <= MAX_INIT_SEEDS:
        raise UsageError(f"--init-seeds must be between 1 and {MAX_INIT_SEEDS} (seeds measured at step 0), not {k}")
    _, cfg, _ = load(path)
    if cfg is None:
        raise UsageError(f"'{path.name}' is a model of your own (a Monitor run): --init-seeds rebuilds the model "
                         "from a vgrad config, which this run does not have")
    from ..training.initspread import init_spread

    return init_spread(cfg, k)[0]


def _suggested(path: Path, d: dict, rec: int) -> str:
    from ..analysis.advice import suggested_config
    from ..errors import UsageError
    from ..rundir.store import load_run

    recs = d["recommendations"]
    if not recs:
        raise UsageError(f"nothing to try: the diagnosis of '{path.name}' is {d['verdict']}, with no recommendation")
    if not 1 <= rec <= len(recs):
        raise UsageError(f"--rec must be between 1 and {len(recs)} (the recommendations of this run)")
    if not recs[rec - 1].get("command"):
        raise UsageError(f"'{path.name}' is a model of your own (a Monitor run): --try writes vgrad configs only; "
                         "the recommendations say what to change in your code")
    return suggested_config(load_run(path).config, recs[rec - 1], str(path))


def render(d: dict, path: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..analysis.diagnose import theory_line
    from ..analysis.isometry import jacobian_line
    from ..analysis.spread import line as spread_line
    from ..report.console import VERDICT_STYLE, make_console, print_command, print_lines, print_phrases

    console = make_console()
    print_phrases(console, [escape(d["model"]), f"status {d['status']}"], sep=" | ",
                  head=f"[bold]vgrad diagnose[/] {escape(d['run'])}:")
    t = Table(show_edge=False, pad_edge=False, expand=False)
    t.add_column("#", justify="right")
    t.add_column("indicator", max_width=26)
    t.add_column("status")
    t.add_column("evidence (threshold below)", overflow="fold")
    for i in d["indicators"]:
        style = STATUS_STYLE.get(i["status"], "")
        t.add_row(str(i["id"]), escape(i["name"]), f"[{style}]{i['status']}[/]",
                  f"{escape(i['summary'])}\n[dim]{escape(i['threshold'])}[/]")
    console.print(t)
    found = d.get("first_nonfinite")
    if isinstance(found, dict) and found.get("message"):
        print_lines(console, [f"first non-finite value: {found['message']}"])
    if d.get("steps_skipped"):
        print_lines(console, [f"{d['steps_skipped']} step(s) skipped by the loss scaler (overflow; not a divergence)"])
    # Prose wraps like `vgrad run`'s: between "; "-phrases first, between words only inside one.
    texts = (theory_line(d["theory"]), spread_line(d.get("init_spread")), jacobian_line(d.get("jacobian")))
    print_lines(console, [line for text in texts if text for line in text.split("\n")])
    style = VERDICT_STYLE.get(d["verdict"], "bold magenta")
    print_phrases(console, escape(d["verdict_detail"]).split("; "), head=f"verdict: [{style}]{d['verdict']}[/] —")
    for n, r in enumerate(d["recommendations"], 1):
        after = f" (theory after: per-layer factor {r['theory_factor_after']:.3f})" if r.get("theory_factor_after") else ""
        opt = " [optional: training recovered]" if r.get("optional") else ""
        print_lines(console, [f"{n}. {r['title']}{opt}: {r['why']}{after}"])
        if r.get("command"):
            print_command(console, ["vgrad run", str(path / V.CONFIG_YAML), *_arguments(r["command"])], "   ")
    if any(r.get("command") for r in d["recommendations"]):
        print_lines(console, [f"`vgrad diagnose {d['run']} --try` prints recommendation 1 as a config file"], style="dim")
    print_lines(console, [f"written: {path / 'diagnosis.json'}"], style="dim")


def print_short_report(console, diagnosis: dict, run_dir) -> None:
    """The short form of `vgrad diagnose` that `vgrad run` and `show` end with; its suggestion as a
    command that pastes as printed: `vgrad run CONFIG --set ...` (the config path relative to here
    when it is below), wrapped after a backslash."""
    from ..analysis.diagnose import short_report
    from ..report.console import print_command, print_lines
    from ..rundir.store import run_ref

    lines = short_report(diagnosis, headline=False, ref=run_ref(run_dir), command=False)
    print_lines(console, lines)
    rec = (diagnosis.get("recommendations") or [None])[0]
    if rec and rec.get("command") and lines and lines[-1].startswith("try") and lines[-1].endswith(":"):
        config, here = Path(run_dir, V.CONFIG_YAML).resolve(), Path.cwd().resolve()
        shown = config.relative_to(here) if config.is_relative_to(here) else config
        print_command(console, ["vgrad run", str(shown), *_arguments(rec["command"])], "  ")


def _arguments(command: str) -> list[str]:
    """'--set a=1 --set b=2' -> ['--set a=1', '--set b=2']: an option and its value stay on one line."""
    words = command.split(" ")
    out: list[str] = []
    for w in words:
        if out and not w.startswith("-") and out[-1].startswith("-") and " " not in out[-1]:
            out[-1] += " " + w
        else:
            out.append(w)
    return out
