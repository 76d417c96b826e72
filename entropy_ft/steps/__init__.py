"""The pipeline stages, one module each, shared by the CLI, the KFP components and the tests.

Each module defines a frozen ``Config`` (an :class:`entropy_ft.options.Options`: its fields
carry their flags, defaults, help and checks, and a bad value is a
:class:`~entropy_ft.errors.UserError`) and ``run(cfg) -> dict`` that does the work, writes the
stage's artifact (:mod:`entropy_ft.artifacts`) and returns the JSON summary the CLI prints as
its last line and the KFP component logs as metrics. Stages import only the library below
them, never the pipelines.
"""
