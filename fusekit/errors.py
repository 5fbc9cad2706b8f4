"""The one exception type users see: the CLI turns it into a one-line message and exit code 1."""


class FusekitError(Exception):
    """A problem with the user's input or files, explained in one line (what, where, what was expected)."""
