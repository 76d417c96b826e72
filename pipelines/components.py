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


def make_components(opts: ClusterOptions | None) -> Components:
    """The components for a cluster (``opts``) or, with ``opts`` None, for ``kfp.local``.

    Locally each task runs in this very environment, which has kfp, so the
    ``pip install kfp`` a lightweight component otherwise runs before its function is
    left out: it is a pip process per task (about 0.4 s) that could only find kfp installed.
    """
    install_kfp = opts is not None
    opts = opts or ClusterOptions()
    image, gpu_image = opts.step_image(), opts.step_image(gpu=True)

    def component(func, base_image: str):
        return dsl.component(func, base_image=base_image, install_kfp_package=install_kfp)

    return Components(
        ingest=component(ingest, image),
        profile_entropy=component(profile_entropy, image),
        select_layers=component(select_layers, image),
        finetune=component(finetune, gpu_image),
        evaluate_noise=component(evaluate_noise, image),
        register=component(register, image),
        compare=component(compare, image),
    )
