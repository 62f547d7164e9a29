"""`python -m vgrad_cli ...` runs the same CLI as the `vgrad` script."""

from .cli.main import main

main()
