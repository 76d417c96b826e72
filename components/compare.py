"""KFP component: the strategies side by side (:mod:`entropy_ft.steps.compare`)."""

from typing import List

from kfp.dsl import HTML, Artifact, Input, Markdown, Output


def compare(evaluations: Input[List[Artifact]], comparison: Output[Artifact], table: Output[Markdown],
            plot: Output[HTML]):
    """One table of accuracy, macro-F1, trainable parameters, reduction and robustness per strategy.

    Args:
        evaluations: the eval artifacts of the ablation's branches.
        comparison: comparison.json, .md and .html.
        table: the comparison as a Markdown table.
        plot: accuracy against noise sigma, one line per strategy (comparison.html).
    """
    import shutil
    from pathlib import Path

    from entropy_ft import kfp_outputs
    from entropy_ft.steps import compare as step

    kfp_outputs.run_step(step, "compare", evaluations=tuple(e.path for e in evaluations), out=comparison.path)
    shutil.copyfile(Path(comparison.path, "comparison.md"), table.path)
    kfp_outputs.publish_html(comparison.path, "comparison", plot.path)
    kfp_outputs.before_exit()
