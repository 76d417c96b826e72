"""The pipelines (training, ablation) and the commands that run, compile, submit and schedule them.

Dependencies point one way: the CLI calls the commands here (``run``, ``compile``,
``submit``, ``schedule``), which build a pipeline from :mod:`.definitions`, whose tasks are
the components, which call the stages in :mod:`entropy_ft.steps`, which call the library.
"""

PIPELINES = ("training", "ablation")
