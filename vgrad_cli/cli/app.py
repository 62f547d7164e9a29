"""The typer `app` every command module registers on, and the one error path all of them share.

Heavy imports (torch, matplotlib) happen inside the commands so that `vgrad --help` starts instantly.
"""

from __future__ import annotations

import functools

import typer

app = typer.Typer(
    name="vgrad",
    help="Measure vanishing and exploding gradients: train a network from a YAML config and get "
    "per-layer gradient tables.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        from ..vocab import VERSION as __version__

        typer.echo(f"vgrad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    # metavar "": a flag takes no value, but typer's help would show it as "--version <bool>"
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, metavar="",
                                 help="print the version and exit"),
):
    """Measure vanishing and exploding gradients, layer by layer and step by step."""


def usage_errors(fn):
    """Bad input -> one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..errors import UsageError

        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            from ..report.console import error

            error(str(e))
            raise typer.Exit(e.exit_code) from None

    return wrapper
