"""The one exception type for bad input: the CLI prints its message as one line and exits 2."""


class UserError(Exception):
    """Something the user must fix (a key, a file, a folder); the message says what and how."""
