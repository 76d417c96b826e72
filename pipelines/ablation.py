"""The ablation pipeline: shared ingest and profile, one branch per strategy
(``dsl.ParallelFor``: select -> finetune -> evaluate), then ``compare``."""


from typing import List

from kfp import dsl

from . import cluster
from .cluster import ClusterOptions
from .components import make_components
from .params import PARAMS
from .training import configure

NAME = "entropy-ft-ablation"
D = {p.name: p.default for p in PARAMS}


def build_ablation(opts: "ClusterOptions | None" = None):
    c = make_components(opts)

    @dsl.pipeline(name=NAME, description="Entropy selection against full, head-only and random (same budget) "
                                         "fine-tuning on the same data: the paper's comparison.")
    def ablation(
        data: str = D["data"], layout: str = D["layout"], image_size: int = D["image_size"],
        duplicates: str = D["duplicates"], arch: str = D["arch"], weights: str = D["weights"],
        profile_images: int = D["profile_images"], bins: int = D["bins"], estimator: str = D["estimator"],
        tap: str = D["tap"], strategies: List[str] = D["strategies"], rule: str = D["rule"], seed: int = D["seed"],
        epochs: int = D["epochs"], lr: float = D["lr"], batch_size: int = D["batch_size"], noise: str = D["noise"],
    ):
        ing = c.ingest(data=data, layout=layout, image_size=image_size, duplicates=duplicates, seed=seed)
        prof = c.profile_entropy(dataset=ing.outputs["dataset"], arch=arch, weights=weights, images=profile_images,
                                 bins=bins, estimator=estimator, tap=tap, seed=seed)
        with dsl.ParallelFor(strategies, name="strategies") as strategy:
            sel = c.select_layers(profile=prof.outputs["profile"], strategy=strategy, rule=rule, seed=seed)
            ft = c.finetune(dataset=ing.outputs["dataset"], selection=sel.outputs["selection"], epochs=epochs,
                            lr=lr, batch_size=batch_size, seed=seed, track=False, kfp_run_id="", kfp_run_name="",
                            pipeline_name=NAME)
            ev = c.evaluate_noise(model=ft.outputs["model"], dataset=ing.outputs["dataset"], noise=noise, seed=seed)
            configure(opts, ing, prof, sel, ft, ev)
        cmp = c.compare(evaluations=dsl.Collected(ev.outputs["evaluation"]))
        cmp.set_caching_options(False)
        if opts is not None:
            cluster.talks_to_storage(cmp, opts)

    return ablation
