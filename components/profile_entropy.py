"""KFP component: activation entropy of every conv layer (:mod:`entropy_ft.steps.profile`)."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output


def profile_entropy(dataset: Input[Dataset], arch: str, weights: str, images: int, bins: int, estimator: str,
                    tap: str, seed: int, profile: Output[Artifact], chart: Output[HTML], metrics: Output[Metrics]):
    """Write profile.json (+ chart) for ``arch`` with ``weights`` on a seeded subset of the training split."""
    from entropy_ft.components import kfp_io
    from entropy_ft.steps import profile as step

    summary = step.run(step.Config(dataset=dataset.path, arch=arch, weights=weights, out=profile.path,
                                   images=images, bins=bins, estimator=estimator, tap=tap, seed=seed))
    kfp_io.publish_html(profile.path, "profile", chart.path)
    kfp_io.log_numbers(metrics, {k: summary[k] for k in ("layers", "num_images", "entropy_mean", "entropy_min",
                                                         "entropy_max", "seconds")})
    kfp_io.before_exit()
