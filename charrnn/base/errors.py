"""The exception and the warning a user is meant to read."""


class CharrnnError(ValueError):
    """A problem with the user's input: the CLI prints the message on one line and exits 1."""


class CharrnnWarning(UserWarning):
    """Something the user should know about their input that does not stop the work (a text
    changed by preprocessing, tokens outside a vocabulary): the CLI prints `Warning: ...`."""
