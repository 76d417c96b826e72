"""Turn the component functions into KFP components with the image chosen at compile time."""

from __future__ import annotations

from dataclasses import dataclass

from kfp import dsl

from entropy_ft.components.compare import compare
from entropy_ft.components.evaluate_noise import evaluate_noise
from entropy_ft.components.finetune import finetune
from entropy_ft.components.ingest import ingest
from entropy_ft.components.profile_entropy import profile_entropy
from entropy_ft.components.register import register
from entropy_ft.components.select_layers import select_layers

from .cluster import ClusterOptions


@dataclass(frozen=True)
class Components:
    ingest: object
    profile_entropy: object
    select_layers: object
    finetune: object
    evaluate_noise: object
    register: object
    compare: object


def make_components(opts: ClusterOptions) -> Components:
    image, gpu_image = opts.step_image(), opts.step_image(gpu=True)
    return Components(
        ingest=dsl.component(ingest, base_image=image),
        profile_entropy=dsl.component(profile_entropy, base_image=image),
        select_layers=dsl.component(select_layers, base_image=image),
        finetune=dsl.component(finetune, base_image=gpu_image),
        evaluate_noise=dsl.component(evaluate_noise, base_image=image),
        register=dsl.component(register, base_image=image),
        compare=dsl.component(compare, base_image=image),
    )
