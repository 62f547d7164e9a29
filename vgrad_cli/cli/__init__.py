"""The `vgrad` command line: parse, then delegate. app.py holds the typer app and the error path;
one module per command group registers on it; main.py imports them all. Commands may import any
package of vgrad_cli, inside their functions; no other package imports cli.
"""
