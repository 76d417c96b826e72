"""KFP component: the strategies side by side (:mod:`entropy_ft.steps.compare`)."""

from typing import List

from kfp.dsl import HTML, Artifact, Input, Markdown, Output


def compare(evaluations: Input[List[Artifact]], comparison: Output[Artifact], table: Output[Markdown],
            plot: Output[HTML]):
    """One table of accuracy, macro-F1, trainable parameters, reduction and robustness per strategy."""
    import shutil
    from pathlib import Path

    from entropy_ft.components import kfp_io
    from entropy_ft.steps import compare as step

    step.run(step.Config(evaluations=tuple(str(Path(e.path, "eval.json")) for e in evaluations),
                         out=comparison.path))
    shutil.copyfile(Path(comparison.path, "comparison.md"), table.path)
    kfp_io.publish_html(comparison.path, "comparison", plot.path)
    kfp_io.before_exit()
