"""KFP component: image sources -> Dataset artifact (:mod:`entropy_ft.steps.ingest`)."""

from kfp.dsl import Dataset, Markdown, Metrics, Output


def ingest(data: str, layout: str, image_size: int, duplicates: str, seed: int,
           dataset: Output[Dataset], report: Output[Markdown], metrics: Output[Metrics]):
    """Ingest ``data`` (comma-separated sources) into Parquet shards with a manifest."""
    from pathlib import Path

    from entropy_ft.components import kfp_io
    from entropy_ft.data.format import load_manifest
    from entropy_ft.reports import dataset_markdown
    from entropy_ft.steps import ingest as step

    summary = step.run(step.Config(sources=kfp_io.sources(data), out=dataset.path, layout=layout,
                                   image_size=image_size, duplicates=duplicates, seed=seed))
    manifest = load_manifest(dataset.path)
    Path(report.path).write_text(dataset_markdown(manifest))
    kfp_io.log_numbers(metrics, {"images": summary["images"], "quarantined": summary["quarantined"],
                                 **{f"{k}_images": v for k, v in manifest["totals"].items()}})
    dataset.metadata.update({"classes": manifest["classes"], "totals": manifest["totals"]})
    kfp_io.before_exit()
