"""KFP component: fine-tune the selected layers and the head (:mod:`entropy_ft.steps.finetune`)."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def finetune(dataset: Input[Dataset], selection: Input[Artifact], epochs: int, lr: float, batch_size: int,
             train_noise: float, train_noise_p: float, train_noise_mode: str, seed: int, track: bool,
             kfp_run_id: str, kfp_run_name: str, pipeline_name: str,
             model: Output[Model], metrics: Output[Metrics]) -> str:
    """Train; with ``track`` an MLflow run is opened and its id returned, with per-epoch metrics logged as they happen.

    Args:
        dataset: the Dataset artifact from ingest.
        selection: the selection artifact from select.
        epochs: maximum epochs (early stopping on validation macro-F1).
        lr: AdamW peak learning rate.
        batch_size: training batch size.
        train_noise: the largest Gaussian pixel noise sigma drawn per training image (0: none).
        train_noise_p: the share of training images that get noise.
        train_noise_mode: uniform (sigma ~ U(0, train_noise)) or fixed (sigma = train_noise: the same-sigma ablation).
        seed: seed of the head's init, the shuffle and the augmentation.
        track: open an MLflow run for this pipeline run (training) or not (ablation branches).
        kfp_run_id: the KFP run id (tags the MLflow run).
        kfp_run_name: the KFP run name.
        pipeline_name: the pipeline's name.
        model: the Model artifact (weights.safetensors, model.json, history.json).
        metrics: the step's summary numbers.

    A retried (preempted) pod resumes from its checkpoint: ``resume`` is always on, and a
    first attempt finds none and starts afresh.
    """
    from entropy_ft import kfp_outputs
    from entropy_ft.steps import finetune as step

    values = dict(dataset=dataset.path, selection=selection.path, out=model.path, epochs=epochs, lr=lr,
                  batch_size=batch_size, train_noise=train_noise, train_noise_p=train_noise_p,
                  train_noise_mode=train_noise_mode, seed=seed, resume=True)
    if track:
        from entropy_ft.tracking import runs

        run_id = runs.ensure_run(None, runs.run_name(pipeline_name, kfp_run_name),
                                 runs.pipeline_tags(kfp_run_id, kfp_run_name, pipeline_name))
        with runs.active_run(run_id):  # RUNNING with system metrics while training; FAILED if it raises
            summary = kfp_outputs.run_step(step, "finetune", hooks={"on_epoch_end": runs.epoch_logger(run_id)},
                                           **values)
    else:
        run_id, summary = "", kfp_outputs.run_step(step, "finetune", **values)
    kfp_outputs.log_numbers(metrics, summary)
    model.metadata.update({"arch": summary["arch"], "strategy": summary["strategy"], "mlflow_run_id": run_id})
    kfp_outputs.before_exit()
    return run_id
