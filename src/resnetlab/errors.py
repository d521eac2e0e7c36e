"""The one exception type for mistakes a user can fix; the CLI prints it on one line and exits 2."""


class Error(ValueError):
    """A user-facing error whose message says what to do."""
