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
