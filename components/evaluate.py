"""KFP component: test metrics and Gaussian-noise robustness (:mod:`entropy_ft.steps.evaluate`)."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def evaluate(model: Input[Model], dataset: Input[Dataset], noise: str, seed: int,
             evaluation: Output[Artifact], plot: Output[HTML], metrics: Output[Metrics],
             confusion: Output[ClassificationMetrics]):
    """Evaluate the model on the test split at every noise sigma.

    Args:
        model: the Model artifact from finetune.
        dataset: the Dataset artifact from ingest.
        noise: comma-separated Gaussian noise sigmas on [0, 1] pixels.
        seed: seed of the noise.
        evaluation: eval.json with the metrics at every sigma.
        plot: scores against sigma (eval.html).
        metrics: the step's summary numbers.
        confusion: the clean confusion matrix.
    """
    from entropy_ft import kfp_outputs
    from entropy_ft.artifacts import Evaluation
    from entropy_ft.evaluation.noise import parse_sigmas
    from entropy_ft.steps import evaluate as step

    summary = kfp_outputs.run_step(step, "evaluate", model=model.path, dataset=dataset.path, out=evaluation.path,
                                   noise=parse_sigmas(noise), seed=seed)
    kfp_outputs.publish_html(evaluation.path, "eval", plot.path)
    kfp_outputs.log_numbers(metrics, summary)
    report = Evaluation.read(evaluation.path)
    confusion.log_confusion_matrix(report.classes, report.confusion_matrix)
    kfp_outputs.before_exit()


def evaluate_external(model: Input[Model], training_data: Input[Dataset], data: str, noise: str, seed: int,
                      mlflow_run_id: str, evaluation: Output[Artifact], plot: Output[HTML], metrics: Output[Metrics]):
    """External validation: score the model on every image of other data, logged into the pipeline's MLflow run.

    Args:
        model: the Model artifact from finetune.
        training_data: the Dataset it was trained on (external images that copy its images are counted).
        data: the external data: a raw source (folder, .zip, .tar, s3://) or a Dataset's URI.
        noise: comma-separated Gaussian noise sigmas on [0, 1] pixels.
        seed: seed of the noise.
        mlflow_run_id: the MLflow run finetune opened ("" to log nothing).
        evaluation: eval.json with the external section (class mapping, unknown classes, copies, unseen scores).
        plot: the report (eval.html).
        metrics: the step's summary numbers.
    """
    from entropy_ft import kfp_outputs
    from entropy_ft.evaluation.noise import parse_sigmas
    from entropy_ft.steps import evaluate as step

    summary = kfp_outputs.run_step(step, "evaluate-external", model=model.path, data=data,
                                   training_data=training_data.path, out=evaluation.path, noise=parse_sigmas(noise),
                                   seed=seed)
    if mlflow_run_id:
        from entropy_ft.artifacts import Evaluation
        from entropy_ft.tracking import runs

        runs.log_external_evaluation(mlflow_run_id, Evaluation.read(evaluation.path).to_json(), evaluation.path)
    kfp_outputs.publish_html(evaluation.path, "eval", plot.path)
    kfp_outputs.log_numbers(metrics, summary)
    kfp_outputs.before_exit()
