"""One module per pipeline step, shared by the CLI, the KFP components and the tests.

Each module defines a frozen ``Config`` dataclass validated at construction (a bad value is
a :class:`~entropy_ft.errors.UserError`), ``add_arguments(parser)`` and
``config_from_args(args)`` for the command line, and ``run(cfg) -> dict`` that does the
work and returns the JSON summary the CLI prints as its last line.
"""

PROFILE_FILE = "profile.json"
"""The profile step's output file: named here so that the select step reads it without
importing :mod:`entropy_ft.steps.profile` (and torch with it)."""
