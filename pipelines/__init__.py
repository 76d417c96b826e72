"""The pipelines (training, ablation) and the commands that run, compile, submit and schedule them.

Dependencies point one way: the CLI calls the commands here (``run``, ``compile``,
``submit``, ``schedule``), which build a pipeline from :mod:`.definitions`, whose tasks are
the components, which call the stages in :mod:`entropy_ft.steps`, which call the library.
"""

from entropy_ft.options import option

PIPELINES = ("training", "ablation")


def pipeline_option(verb: str):
    """The ``--pipeline`` field of run, compile, submit and schedule: one default and one check."""
    return option("training", choices=PIPELINES, help=f"which pipeline to {verb}")
