"""KFP components: one module per stage, named like the stage, each a thin adapter over :mod:`entropy_ft.steps`.

Every component is a lightweight Python component whose body imports the library, so the
same function runs under ``kfp.local.SubprocessRunner(use_venv=False)`` on a laptop and in
the component image on a cluster. :mod:`entropy_ft.pipelines.definitions` turns the
functions into components with the image chosen at compile time.
"""
