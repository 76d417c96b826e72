"""KFP component: log to MLflow and register the model behind the champion gate (:mod:`entropy_ft.steps.register`)."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output


def register(model: Input[Model], evaluation: Input[Artifact], dataset: Input[Dataset], profile: Input[Artifact],
             selection: Input[Artifact],
             model_name: str, promote: str, gate_metric: str, gate_alpha: float, gate_min_delta: float,
             drift_threshold: float,
             mlflow_run_id: str, kfp_run_id: str, kfp_run_name: str,
             pipeline_name: str, report: Output[Markdown]) -> str:
    """Register a new model version; ``champion`` moves only as ``promote`` allows. Returns the version.

    Args:
        model: the Model artifact from finetune.
        evaluation: the eval artifact of that model.
        dataset: the Dataset it was trained and tested on (the run's dataset inputs, the model card).
        profile: the profile artifact (logged with the run).
        selection: the selection artifact (logged with the run).
        model_name: registered model name.
        promote: better, always or never.
        gate_metric: the metric the gate compares head to head, optionally @SIGMA.
        gate_alpha: significance level of the gate's paired test.
        gate_min_delta: smallest gain of the gate metric that can promote.
        drift_threshold: domain-classifier AUC against the champion's training data that tags drift=true.
        mlflow_run_id: the MLflow run finetune opened ("" to create one).
        kfp_run_id: the KFP run id (tags the MLflow run).
        kfp_run_name: the KFP run name.
        pipeline_name: the pipeline's name.
        report: what the gate decided, as a Markdown table.
    """
    from pathlib import Path

    from entropy_ft import kfp_outputs, storage
    from entropy_ft.reports import registration_markdown
    from entropy_ft.steps import register as step

    summary = kfp_outputs.run_step(
        step, "register", model=model.path, eval=evaluation.path, dataset=dataset.path, model_name=model_name,
        promote=promote, gate_metric=gate_metric, gate_alpha=gate_alpha, gate_min_delta=gate_min_delta,
        dataset_uri=storage.durable_uri(dataset.uri), drift_threshold=drift_threshold, run_id=mlflow_run_id or None,
        kfp_run_id=kfp_run_id, kfp_run_name=kfp_run_name, pipeline_name=pipeline_name,
        profile=profile.path, selection=selection.path,
    )
    Path(report.path).write_text(registration_markdown(summary))
    kfp_outputs.before_exit()
    return str(summary["version"])
