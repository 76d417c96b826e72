"""KFP component: fine-tune the selected layers and the head (:mod:`entropy_ft.steps.finetune`)."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def finetune(dataset: Input[Dataset], selection: Input[Artifact], epochs: int, lr: float, batch_size: int,
             seed: int, track: bool, kfp_run_id: str, kfp_run_name: str, pipeline_name: str,
             model: Output[Model], metrics: Output[Metrics]) -> str:
    """Train; with ``track`` an MLflow run is opened and its id returned, with per-epoch metrics logged as they happen."""
    from pathlib import Path

    from entropy_ft.components import kfp_io
    from entropy_ft.steps import finetune as step

    checkpoint_dir = kfp_io.checkpoint_dir(model.uri)
    cfg = step.Config(dataset=dataset.path, selection=str(Path(selection.path, "selection.json")), out=model.path,
                      epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                      checkpoint_dir=checkpoint_dir, resume=checkpoint_dir is not None)
    if track:
        from entropy_ft import tracking

        run_id = tracking.ensure_run(None, f"{pipeline_name}-{kfp_run_name}"[:250],
                                     tracking.pipeline_tags(kfp_run_id, kfp_run_name, pipeline_name))
        with tracking.active_run(run_id):  # RUNNING with system metrics while training; FAILED if it raises
            summary = step.run(cfg, on_epoch_end=tracking.epoch_logger(run_id))
    else:
        run_id, summary = "", step.run(cfg)
    kfp_io.log_numbers(metrics, {k: v for k, v in summary.items() if k not in ("seed",)})
    model.metadata.update({"arch": summary["arch"], "strategy": summary["strategy"], "mlflow_run_id": run_id})
    kfp_io.before_exit()
    return run_id
