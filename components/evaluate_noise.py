"""KFP component: test metrics and Gaussian-noise robustness (:mod:`entropy_ft.steps.evaluate`)."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def evaluate_noise(model: Input[Model], dataset: Input[Dataset], noise: str, seed: int,
                   evaluation: Output[Artifact], plot: Output[HTML], metrics: Output[Metrics],
                   confusion: Output[ClassificationMetrics]):
    """Evaluate on the test split at every sigma in ``noise`` (comma-separated)."""
    import json
    from pathlib import Path

    from entropy_ft.components import kfp_io
    from entropy_ft.steps import evaluate as step

    sigmas = step.parse_sigmas(noise)
    step.run(step.Config(model=model.path, dataset=dataset.path, out=evaluation.path, noise=sigmas, seed=seed))
    report = json.loads(Path(evaluation.path, "eval.json").read_text())
    kfp_io.publish_html(evaluation.path, "eval", plot.path)
    kfp_io.log_numbers(metrics, {k: report[k] for k in ("accuracy", "macro_f1", "balanced_accuracy")})
    for row in report["noise"]:
        metrics.log_metric(f"accuracy_sigma_{row['sigma']:g}", float(row["accuracy"]))
    confusion.log_confusion_matrix(report["classes"], report["confusion_matrix"])
    kfp_io.before_exit()
