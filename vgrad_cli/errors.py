"""The one exception type for bad input: the CLI prints its message on one line and exits 2."""


class UsageError(Exception):
    """Bad input from the user (config, flags, paths). Message must name what and what is allowed."""

    exit_code = 2
