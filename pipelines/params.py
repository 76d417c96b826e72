"""The pipeline parameters a user turns, with their defaults: one table shared by the
pipeline signatures, ``entropy-ft run``, ``submit`` and ``schedule``.

Flags are spelled like the step commands' own (``--arch``, ``--rule``, ``--batch-size``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


def csv_list(text: str) -> list[str]:
    """``a,b`` -> ``["a", "b"]`` for list parameters given on the command line."""
    return [item.strip() for item in text.split(",") if item.strip()]


@dataclass(frozen=True)
class Param:
    name: str  # pipeline parameter name
    type: object  # callable parsing the flag's text
    default: object
    help: str
    pipelines: tuple[str, ...] = ("training", "ablation")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


PARAMS: list[Param] = [
    Param("data", str, "synthetic:400", "data source(s), comma-separated: dir, .zip, .tar[.gz], s3://..., synthetic:N"),
    Param("layout", str, "auto", "dataset layout: auto|kaggle|brisc2025|imagefolder"),
    Param("image_size", int, 224, "square image side after preprocessing"),
    Param("duplicates", str, "report", "duplicate policy: report|drop|fail"),
    Param("arch", str, "resnet18", "resnet18|resnet34|squeezenet1_0|squeezenet1_1"),
    Param("weights", str, "imagenet", "pretrained weights: imagenet|none|PATH|s3://..."),
    Param("profile_images", int, 512, "images used for the entropy profile"),
    Param("bins", int, 256, "histogram bins of the entropy estimator"),
    Param("estimator", str, "histogram", "entropy estimator: histogram|channel"),
    Param("tap", str, "conv", "where activations are read: conv|bn|relu"),
    Param("strategy", str, "entropy", "layer selection: entropy|full|head|random", ("training",)),
    Param("strategies", csv_list, ["entropy", "full", "head", "random"], "strategies compared, comma-separated", ("ablation",)),
    Param("rule", str, "below-mean", "entropy rule: below-mean|quantile:Q|budget:F"),
    Param("seed", int, 0, "seed for splits, selection, training and noise"),
    Param("epochs", int, 10, "maximum fine-tuning epochs (early stopping on validation macro-F1)"),
    Param("lr", float, 1e-3, "peak learning rate (AdamW, cosine schedule)"),
    Param("batch_size", int, 32, "training batch size"),
    Param("noise", str, "0,0.1,0.2,0.3,0.4", "Gaussian noise sigmas for the robustness evaluation"),
    Param("model_name", str, "entropy-ft-brain-mri", "registered model name in MLflow", ("training",)),
    Param("promote", str, "better", "move the champion alias: better|always|never", ("training",)),
]


def params_for(pipeline: str) -> list[Param]:
    return [p for p in PARAMS if pipeline in p.pipelines]


def add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per parameter of either pipeline; unset flags keep the pipeline's default."""
    group = parser.add_argument_group("pipeline parameters")
    for p in PARAMS:
        group.add_argument(p.flag, dest=p.name, type=p.type, default=None,
                           help=f"{p.help} (default: {','.join(p.default) if isinstance(p.default, list) else p.default})")


def arguments_from_args(args: argparse.Namespace, pipeline: str) -> dict:
    """The run arguments for ``pipeline``: defaults overridden by the flags the user gave.

    A flag that belongs only to the other pipeline is an error rather than silently ignored.
    """
    from entropy_ft.errors import UserError

    wanted = {p.name for p in params_for(pipeline)}
    for p in PARAMS:
        if getattr(args, p.name, None) is not None and p.name not in wanted:
            raise UserError(f"{p.flag} is not a parameter of the {pipeline} pipeline")
    return {p.name: (getattr(args, p.name) if getattr(args, p.name, None) is not None else p.default)
            for p in params_for(pipeline)}
