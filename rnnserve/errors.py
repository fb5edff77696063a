"""Errors every subcommand may raise."""


class UsageError(Exception):
    """A mistake in what the user typed: reported as one line, exit status 2."""


class VerificationError(Exception):
    """A model failed a check before entering the repository (export, import); the message
    names the check, the graph and what was measured."""
