"""The error every part's command line raises for a user's mistake (`rnnserve` prints it as
one line and exits 2): here, in the one part every other part depends on."""


class UsageError(Exception):
    """A mistake in what the user typed: reported as one line, exit status 2."""
