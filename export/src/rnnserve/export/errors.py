"""What the export's checks raise."""


class VerificationError(Exception):
    """A model failed a check before entering the repository (export, import); the message
    names the check, the graph and what was measured."""
