"""KFP component: log to MLflow and register the model behind the champion gate (:mod:`entropy_ft.steps.register`)."""

from kfp.dsl import Artifact, Input, Markdown, Model, Output


def register(model: Input[Model], evaluation: Input[Artifact], profile: Input[Artifact], selection: Input[Artifact],
             model_name: str, promote: str, mlflow_run_id: str, kfp_run_id: str, kfp_run_name: str,
             pipeline_name: str, report: Output[Markdown]) -> str:
    """Register a new model version; ``champion`` moves only as ``promote`` allows. Returns the version."""
    from pathlib import Path

    from entropy_ft.components import kfp_io
    from entropy_ft.reports import registration_markdown
    from entropy_ft.steps import register as step

    summary = step.run(step.Config(
        model=model.path, eval=str(Path(evaluation.path, "eval.json")), model_name=model_name, promote=promote,
        run_id=mlflow_run_id or None, kfp_run_id=kfp_run_id, kfp_run_name=kfp_run_name, pipeline_name=pipeline_name,
        profile=str(Path(profile.path, "profile.json")), selection=str(Path(selection.path, "selection.json")),
    ))
    Path(report.path).write_text(registration_markdown(summary))
    kfp_io.before_exit()
    return str(summary["version"])
