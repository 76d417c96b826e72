"""KFP component: the layers to unfreeze (:mod:`entropy_ft.steps.select`)."""

from kfp.dsl import HTML, Artifact, Input, Metrics, Output


def select_layers(profile: Input[Artifact], strategy: str, rule: str, seed: int,
                  selection: Output[Artifact], chart: Output[HTML], metrics: Output[Metrics]) -> int:
    """Apply ``strategy`` (``rule`` for entropy and random) to the profile; returns the trainable parameters."""
    from entropy_ft.components import kfp_io
    from entropy_ft.steps import select as step

    summary = step.run(step.Config(profile=profile.path, strategy=strategy, out=selection.path, seed=seed,
                                   rule=rule if strategy in ("entropy", "random") else None))
    kfp_io.publish_html(selection.path, "selection", chart.path)
    kfp_io.log_numbers(metrics, {k: v for k, v in summary.items() if k != "seed"})
    selection.metadata.update({"strategy": strategy, "trainable_params": summary["trainable_params"]})
    kfp_io.before_exit()
    return int(summary["trainable_params"])
