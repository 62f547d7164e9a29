"""The console-script entry point: imports every command module (each registers its commands on
`app` when imported, keeping its heavy imports inside its functions), then runs the app."""

from __future__ import annotations

# Registration order is the order `vgrad --help` lists the commands in.
from . import run, diagnose, sweep, story, compare, report, watch, export  # noqa: F401,I001  (registration by import)
from .app import app


def main():  # console-script entry point
    app()
