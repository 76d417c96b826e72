"""KFP component: activation entropy of every conv layer (:mod:`entropy_ft.steps.profile`)."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output


def profile(dataset: Input[Dataset], arch: str, weights: str, images: int, bins: int, estimator: str, tap: str,
            bootstrap: int, seed: int, profile: Output[Artifact], chart: Output[HTML], metrics: Output[Metrics]):
    """Profile the entropy of ``arch`` with ``weights`` on a seeded subset of the training split.

    Args:
        dataset: the Dataset artifact from ingest.
        arch: backbone architecture.
        weights: imagenet, none, a state_dict file or an s3:// URI.
        images: profiling images (a class-stratified subset).
        bins: histogram bins per layer.
        estimator: histogram or channel.
        tap: where activations are read (conv, bn, relu).
        bootstrap: resamples of the profiling batches for the selection's stability (0: none).
        seed: seed of the image subset, its batch order and the bootstrap.
        profile: profile.json with the entropy of every conv layer.
        chart: entropy per layer (profile.html).
        metrics: the step's summary numbers.
    """
    from entropy_ft import kfp_outputs
    from entropy_ft.steps import profile as step

    out = profile.path  # the output artifact's folder (the parameter shadows this function's name)
    summary = kfp_outputs.run_step(step, "profile", dataset=dataset.path, arch=arch, weights=weights, out=out,
                                   images=images, bins=bins, estimator=estimator, tap=tap, bootstrap=bootstrap,
                                   seed=seed)
    kfp_outputs.publish_html(out, "profile", chart.path)
    kfp_outputs.log_numbers(metrics, summary)
    kfp_outputs.before_exit()
