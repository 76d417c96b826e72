"""KFP component: image sources -> Dataset artifact (:mod:`entropy_ft.steps.ingest`)."""

from kfp.dsl import Dataset, Markdown, Metrics, Output


def ingest(data: str, layout: str, image_size: int, duplicates: str, seed: int, extends: str, labels: str,
           dataset: Output[Dataset], report: Output[Markdown], metrics: Output[Metrics]):
    """Ingest the sources into Parquet shards with a manifest.

    Args:
        data: source(s), comma-separated: folder, .zip, .tar[.gz], s3:// prefix, or synthetic:N.
        layout: how the sources are organised (auto, kaggle, brisc2025, imagefolder).
        image_size: square side in pixels after preprocessing.
        duplicates: what to do with duplicate groups that cross splits (report, drop, fail).
        seed: seed of the split assignment.
        extends: an earlier dataset whose images keep their splits ("" for none).
        labels: a CSV file (local or s3://) giving the classes instead of folders ("" for none).
        dataset: the Dataset artifact (Parquet shards and manifest.json).
        report: images per split and class, duplicates and quarantine.
        metrics: the step's summary numbers.
    """
    from pathlib import Path

    from entropy_ft import kfp_outputs
    from entropy_ft.data.format import load_manifest
    from entropy_ft.options import csv
    from entropy_ft.reports import dataset_markdown
    from entropy_ft.steps import ingest as step

    summary = kfp_outputs.run_step(step, "ingest", sources=csv(data), out=dataset.path, layout=layout,
                                   image_size=image_size, duplicates=duplicates, seed=seed,
                                   extends=extends or None, labels=labels or None)
    Path(report.path).write_text(dataset_markdown(load_manifest(dataset.path)))
    kfp_outputs.log_numbers(metrics, summary)
    dataset.metadata.update({"classes": summary["classes"], "totals": summary["totals"]})
    kfp_outputs.before_exit()
