"""The console-script entry point: imports every command module (each registers its commands on
`app` when imported, keeping its heavy imports inside its functions), then runs the app."""

from __future__ import annotations

import sys

# Registration order is the order `vgrad --help` lists the commands in.
from . import run, diagnose, sweep, story, compare, report, watch, export  # noqa: F401,I001  (registration by import)
from .app import app


def _commands() -> set:
    import typer.main

    return set(typer.main.get_command(app).commands)


def main():  # console-script entry point
    """Runs the app; a usage error the parser finds (a missing argument, an unknown option) is one
    line on stderr and exit code 2, like vgrad's own errors, instead of click's boxed block."""
    try:
        code = app(prog_name="vgrad", standalone_mode=False)  # `python -m vgrad_cli` too
    except Exception as e:
        # click's exceptions (typer may vendor its own copy of click: matched by what they offer)
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:  # `vgrad run` alone: its help
            ctx.get_help()
            sys.exit(2)
        from ..report.console import error

        where = ctx.command_path if ctx is not None else "vgrad"
        if where == "vgrad":  # an error in a command's options can come with the root's context
            command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
            where += f" {command}" if command in _commands() else ""
        hint = f" (usage: {where} -h)" if type(e).__name__ != "ClickException" else ""
        error(f"{where}: {e.format_message()}{hint}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
