"""Register a fine-tuned model in MLflow: a new version every time, ``champion`` only when it is better.

Logs the run's params, the test metrics at every noise sigma and eval.json to the pipeline's
MLflow run (``--run-id``, or a new run), logs the model as a pyfunc that serves raw images
(see :mod:`entropy_ft.serving`), registers it as a new version tagged with its metrics and
the gate decision, sets alias ``challenger``, and moves ``champion`` only if the gate allows
(see :mod:`entropy_ft.registry`). Tracking goes to ``MLFLOW_TRACKING_URI`` or the embedded
local store (see :mod:`entropy_ft.tracking`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .. import registry, storage, tracking
from ..errors import UserError
from ..logs import log

DEFAULT_MODEL_NAME = "entropy-ft-brain-mri"


@dataclass(frozen=True)
class Config:
    model: str
    eval: str
    model_name: str = DEFAULT_MODEL_NAME
    promote: str = "better"
    gate_metric: str = "macro_f1"
    run_id: str | None = None
    run_name: str | None = None
    profile: str | None = None
    selection: str | None = None
    kfp_run_id: str | None = None
    kfp_run_name: str | None = None
    pipeline_name: str | None = None

    def __post_init__(self) -> None:
        if self.promote not in registry.PROMOTE_MODES:
            raise UserError(f"--promote {self.promote}: expected one of {', '.join(registry.PROMOTE_MODES)}")
        if not self.model_name.strip() or "/" in self.model_name or ":" in self.model_name:
            raise UserError(f"--model-name {self.model_name!r}: expected a non-empty name without '/' or ':'")
        registry.GateMetric.parse(self.gate_metric)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="Model dir (local path or s3:// prefix) from `entropy-ft finetune`")
    p.add_argument("--eval", required=True, metavar="URI", help="eval.json from `entropy-ft evaluate`")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="registered model name (default: %(default)s)")
    p.add_argument("--promote", choices=registry.PROMOTE_MODES, default="better",
                   help="move alias champion: only if strictly better on the gate metric (default), always, never")
    p.add_argument("--gate-metric", default="macro_f1",
                   help=f"test metric the gate compares: {', '.join(registry.GATE_METRICS)}, optionally @SIGMA "
                        "for a noise level (default: macro_f1 at sigma 0)")
    p.add_argument("--run-id", default=None, help="MLflow run of this pipeline run to log into (default: create one)")
    p.add_argument("--run-name", default=None, help="name for a newly created MLflow run")
    p.add_argument("--profile", default=None, metavar="URI", help="profile.json to log with the run (optional)")
    p.add_argument("--selection", default=None, metavar="URI",
                   help="selection.json to log with the run (optional; default: the copy in the model's model.json)")


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(args.model, args.eval, args.model_name, args.promote, args.gate_metric, args.run_id, args.run_name,
                  args.profile, args.selection)


def run(cfg: Config) -> dict:
    metric = registry.GateMetric.parse(cfg.gate_metric)
    evaluation = storage.read_json(cfg.eval)
    profile = storage.read_json(cfg.profile) if cfg.profile else None
    given_selection = storage.read_json(cfg.selection) if cfg.selection else None
    with storage.local_copy(cfg.model) as model_dir:
        from ..model_dir import load_model_meta

        meta = load_model_meta(model_dir)
        if list(evaluation.get("classes", meta["classes"])) != list(meta["classes"]):
            raise UserError(f"--eval {cfg.eval}: its classes {evaluation.get('classes')} are not the model's "
                            f"{meta['classes']} ({cfg.model}); evaluate this model first")
        selection = given_selection or meta.get("selection")
        with tracking.tracking_errors():
            summary = _register(cfg, metric, evaluation, meta, model_dir, profile, selection)
    log.info("registered %s version %s (%s); champion is v%s: %s", cfg.model_name, summary["version"],
             "promoted" if summary["promoted"] else "challenger", summary["champion"], summary["reason"])
    return summary


def _register(cfg: Config, metric: registry.GateMetric, evaluation: dict, meta: dict, model_dir,
              profile: dict | None, selection: dict | None) -> dict:
    client = tracking.connect()
    run_name = cfg.run_name or f"{meta['arch']}-{(selection or {}).get('strategy', 'model')}"
    run_id = tracking.ensure_run(cfg.run_id, run_name, tracking.pipeline_tags(cfg.kfp_run_id, cfg.kfp_run_name, cfg.pipeline_name))
    with tracking.active_run(run_id):
        tracking.log_params(run_id, tracking.run_params(profile=profile, selection=selection, model_meta=meta))
        for name, doc, uri in (("profile", profile, cfg.profile), ("selection", selection, cfg.selection)):
            if doc:
                tracking.log_json(run_id, f"{name}.json", doc)
            _log_sibling_png(run_id, uri, name)
        metrics = tracking.log_evaluation(run_id, evaluation)
        _log_sibling_png(run_id, cfg.eval, "eval")
        value = registry.metric_value(evaluation, metric)
        champion_before, champion_value = registry.current_champion(client, cfg.model_name, metric)
        decision = registry.decide(cfg.promote, value, champion_before, champion_value)
        from .. import serving  # imports mlflow.pyfunc: only when registering, not on every CLI start

        info = serving.log_pyfunc(model_dir, meta)
        extra = {"arch": meta["arch"], "strategy": str((selection or {}).get("strategy")),
                 "data_manifest_sha256": str(meta.get("data_manifest_sha256"))}
        tags = registry.version_tags(metrics, metric, value, decision, champion_before, champion_value, extra)
        version = registry.create_version(client, cfg.model_name, info.model_uri, tags)
        registry.set_aliases(client, cfg.model_name, version, decision.promote)
    champion = version if decision.promote else champion_before
    return {
        "model_name": cfg.model_name,
        "version": version,
        "model_uri": f"models:/{cfg.model_name}/{version}",
        "run_id": run_id,
        "tracking_uri": tracking.redact(tracking.tracking_uri()),
        "gate_metric": str(metric),
        "value": value,
        "champion_before": champion_before,
        "champion_value_before": champion_value,
        "champion": champion,
        "promoted": decision.promote,
        "reason": decision.reason,
    }


def _log_sibling_png(run_id: str, json_uri: str | None, name: str) -> None:
    """The step that wrote ``<name>.json`` also wrote its plot ``<name>.png`` beside it; log it when there."""
    if not json_uri:
        return
    png = storage.join(json_uri.rsplit("/", 1)[0] if "/" in json_uri else ".", f"{name}.png")
    if storage.exists(png):
        tracking.log_image(run_id, f"{name}.png", png)
