"""KFP component: the layers to unfreeze (:mod:`entropy_ft.steps.select`)."""

from kfp.dsl import HTML, Artifact, Input, Metrics, Output


def select(profile: Input[Artifact], strategy: str, rule: str, stability: float, seed: int,
           selection: Output[Artifact], chart: Output[HTML], metrics: Output[Metrics]) -> int:
    """Choose the layers by ``strategy``; returns the trainable parameters.

    Args:
        profile: the profile artifact.
        strategy: entropy, full, head or random.
        rule: the entropy rule (below-mean, quantile:Q, budget:F); full and head take none.
        stability: keep only layers the rule selects in at least this share of the profile's bootstrap
            resamples (0: off; full and head take none).
        seed: seed of the random strategy.
        selection: selection.json with the layers and the parameter accounting.
        chart: entropy per layer with the selected layers highlighted (selection.html).
        metrics: the step's summary numbers.
    """
    from entropy_ft import kfp_outputs
    from entropy_ft.steps import select as step

    summary = kfp_outputs.run_step(step, "select", profile=profile.path, strategy=strategy,
                                   rule=step.rule_for(strategy, rule),
                                   stability=step.stability_for(strategy, stability), seed=seed, out=selection.path)
    kfp_outputs.publish_html(selection.path, "selection", chart.path)
    kfp_outputs.log_numbers(metrics, summary)
    selection.metadata.update({"strategy": strategy, "trainable_params": summary["trainable_params"]})
    kfp_outputs.before_exit()
    return int(summary["trainable_params"])
