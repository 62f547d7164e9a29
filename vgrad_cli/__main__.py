"""`python -m vgrad_cli ...` runs the same CLI as the `vgrad` script."""

from .cli import main

main()
