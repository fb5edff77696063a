"""Errors every subcommand may raise."""


class UsageError(Exception):
    """A mistake in what the user typed: reported as one line, exit status 2."""
