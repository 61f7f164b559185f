"""Errors that the CLI turns into a one-line message and exit code 2."""


class UserError(ValueError):
    """Bad input from a person: the message names the problem and the fix."""
