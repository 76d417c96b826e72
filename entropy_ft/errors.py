"""Errors that the command line turns into exit code 2 with a plain message."""


class UserError(Exception):
    """Bad input from the user: a path, a flag value, a file that is not what it claims.

    The CLI prints ``str(error)`` and exits 2 instead of a traceback, so the message
    must say what was wrong and where (the path, URI or flag involved).
    """


def short(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type), cut to ``limit`` characters: what a
    one-line error about a library failure (boto3, MLflow, HTTP) should quote."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
