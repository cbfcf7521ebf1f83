"""The one exception type a user is meant to read."""


class CharrnnError(ValueError):
    """A problem with the user's input: the CLI prints the message on one line and exits 1."""
