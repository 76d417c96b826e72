"""The training pipeline: ingest -> profile_entropy -> select_layers -> finetune -> evaluate_noise -> register."""


from kfp import dsl

from . import cluster
from .cluster import ClusterOptions
from .components import make_components
from .params import PARAMS

NAME = "entropy-ft-training"
D = {p.name: p.default for p in PARAMS}


def build_training(opts: "ClusterOptions | None" = None):
    """The pipeline function; ``opts`` None builds it for a local run (no cluster settings)."""
    c = make_components(opts)

    @dsl.pipeline(name=NAME, description="Entropy-based layer selection and fine-tuning for brain-tumour MRI, "
                                         "with noise-robustness evaluation and MLflow registration.")
    def training(
        data: str = D["data"], layout: str = D["layout"], image_size: int = D["image_size"],
        duplicates: str = D["duplicates"], arch: str = D["arch"], weights: str = D["weights"],
        profile_images: int = D["profile_images"], bins: int = D["bins"], estimator: str = D["estimator"],
        tap: str = D["tap"], strategy: str = D["strategy"], rule: str = D["rule"], seed: int = D["seed"],
        epochs: int = D["epochs"], lr: float = D["lr"], batch_size: int = D["batch_size"], noise: str = D["noise"],
        model_name: str = D["model_name"], promote: str = D["promote"],
    ):
        ing = c.ingest(data=data, layout=layout, image_size=image_size, duplicates=duplicates, seed=seed)
        prof = c.profile_entropy(dataset=ing.outputs["dataset"], arch=arch, weights=weights, images=profile_images,
                                 bins=bins, estimator=estimator, tap=tap, seed=seed)
        sel = c.select_layers(profile=prof.outputs["profile"], strategy=strategy, rule=rule, seed=seed)
        ft = c.finetune(dataset=ing.outputs["dataset"], selection=sel.outputs["selection"], epochs=epochs, lr=lr,
                        batch_size=batch_size, seed=seed, track=True, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                        kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, pipeline_name=NAME)
        ev = c.evaluate_noise(model=ft.outputs["model"], dataset=ing.outputs["dataset"], noise=noise, seed=seed)
        reg = c.register(model=ft.outputs["model"], evaluation=ev.outputs["evaluation"],
                         profile=prof.outputs["profile"], selection=sel.outputs["selection"],
                         model_name=model_name, promote=promote, mlflow_run_id=ft.outputs["Output"],
                         kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                         pipeline_name=NAME)
        configure(opts, ing, prof, sel, ft, ev, reg)

    return training


def configure(opts: "ClusterOptions | None", ing, prof, sel, ft, ev, reg=None) -> None:
    """Caching, retries, secrets and resources; locally only caching applies (kfp.local ignores the rest)."""
    for task in (ing, prof):
        task.set_caching_options(True)  # keyed by inputs: same data and settings -> reuse
    for task in (sel, ft, ev, *([reg] if reg is not None else [])):
        task.set_caching_options(False)
    if opts is None:
        return
    for task in (ing, prof, sel, ev):
        cluster.talks_to_storage(task, opts)
    cluster.talks_to_mlflow(ft, opts)
    cluster.trains(ft, opts)
    if reg is not None:
        cluster.talks_to_mlflow(reg, opts)
