"""Errors that the command line turns into exit code 2 with a plain message."""


class UserError(Exception):
    """Bad input from the user: a path, a flag value, a file that is not what it claims.

    The CLI prints ``str(error)`` and exits 2 instead of a traceback, so the message
    must say what was wrong and where (the path, URI or flag involved).
    """
