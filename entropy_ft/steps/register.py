"""Register a fine-tuned model in MLflow: a new version every time, ``champion`` only when it is better.

Logs the run's params, the test metrics at every noise sigma and eval.json to the pipeline's
MLflow run (``--run-id``, or a new run), logs the model as a pyfunc that serves raw images
(see :mod:`entropy_ft.tracking.serving`), registers it as a new version tagged with its metrics and
the gate decision, sets alias ``challenger``, and moves ``champion`` only if the gate allows
(see :mod:`entropy_ft.tracking.registry`). Tracking goes to ``MLFLOW_TRACKING_URI`` or the embedded
local store (see :mod:`entropy_ft.tracking.runs`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from entropy_ft import storage
from entropy_ft.artifacts import DatasetManifest, Evaluation, ModelMeta, Profile, Selection
from entropy_ft.errors import UserError, short
from entropy_ft.logs import log
from entropy_ft.options import Options, below, between, fraction, option
from entropy_ft.reports import flatten_numbers, model_card
from entropy_ft.tracking import registry
from entropy_ft.tracking import runs as tracking
from entropy_ft.tracking.gate_lock import gate_lock

DATASET_TAG = registry.TAG_PREFIX + "dataset_uri"  # on every version: its data, for the next run's drift report


def _model_name_problem(name: str) -> str | None:
    ok = name.strip() and "/" not in name and ":" not in name
    return None if ok else "expected a non-empty name without '/' or ':'"


def _gate_metric_problem(text: str) -> str | None:
    registry.GateMetric.parse(text)  # raises a UserError that quotes it
    return None


@dataclass(frozen=True, kw_only=True)
class Config(Options):
    model: str = option(flag="MODEL", help="Model dir (local path or s3:// prefix) from `entropy-ft finetune`")
    eval: str = option(metavar="URI", help="eval.json (or its folder) from `entropy-ft evaluate`")
    model_name: str = option("entropy-ft-brain-mri", check=_model_name_problem, help="registered model name")
    promote: str = option("better", choices=registry.PROMOTE_MODES,
                          help="move alias champion: only if strictly better on the gate metric, always, never")
    gate_metric: str = option("macro_f1", check=_gate_metric_problem,
                              help=f"test metric the gate compares: {', '.join(registry.GATE_METRICS)}, optionally "
                                   "@SIGMA for a noise level")
    gate_data: str | None = option(
        None, metavar="DATASET", help="the Dataset whose test split both the candidate and the champion are "
                                      "evaluated on for the gate (default: --dataset, or the one eval.json names)")
    gate_alpha: float = option(0.05, check=fraction(0, 1), help="significance level of the gate's paired test")
    gate_min_delta: float = option(0.005, check=below(0, 1),
                                   help="smallest gain of the gate metric that can promote, on the shared images")
    drift_threshold: float = option(
        0.75, check=between(0.5, 1), help="domain-classifier AUC (champion's training data against this run's) from "
                                          "which the data counts as drifted: a warning and tag drift=true")
    run_id: str | None = option(None, help="MLflow run of this pipeline run to log into (default: create one)")
    run_name: str | None = option(None, help="name for a newly created MLflow run")
    dataset: str | None = option(
        None, metavar="DATASET", help="the Dataset the model was trained and tested on: logged as the run's dataset "
                                      "inputs and summarised in the model card (default: the one eval.json names, "
                                      "when it can be read)")
    dataset_uri: str | None = option(None, cli=False, help="where later runs can read --dataset (the KFP artifact's "
                                                         "URI when --dataset is the task's local copy)")
    profile: str | None = option(None, metavar="URI", help="profile.json to log with the run (optional)")
    selection: str | None = option(
        None, metavar="URI", help="selection.json to log with the run (default: the copy in the model's model.json)")
    kfp_run_id: str | None = option(None, cli=False, help="the KFP run this registration belongs to")
    kfp_run_name: str | None = option(None, cli=False, help="its display name")
    pipeline_name: str | None = option(None, cli=False, help="the pipeline that ran")


def run(cfg: Config) -> dict:
    metric = registry.GateMetric.parse(cfg.gate_metric)
    evaluation = Evaluation.read(cfg.eval).to_json()
    profile = Profile.read(cfg.profile).to_json() if cfg.profile else None
    given_selection = Selection.read(cfg.selection).to_json() if cfg.selection else None
    with storage.local_copy(ModelMeta.folder_of(cfg.model)) as model_dir:
        from entropy_ft.model.model_dir import load_model_meta

        meta = load_model_meta(model_dir).to_json()
        if list(evaluation.get("classes") or meta["classes"]) != list(meta["classes"]):
            raise UserError(f"--eval {cfg.eval}: its classes {evaluation['classes']} are not the model's "
                            f"{meta['classes']} ({cfg.model}); evaluate this model first")
        selection = given_selection or meta.get("selection")
        dataset = _dataset(cfg.dataset, evaluation.get("dataset"))
        gate_data = DatasetManifest.read(DatasetManifest.folder_of(cfg.gate_data)) if cfg.gate_data else dataset
        if gate_data is not None and list(gate_data.classes) != list(meta["classes"]):
            raise UserError(f"--gate-data {gate_data.origin.uri}: its classes {gate_data.classes} are not the "
                            f"model's {meta['classes']}")
        with tracking.tracking_errors():
            summary = _register(cfg, metric, evaluation, meta, model_dir, profile, selection, dataset, gate_data)
    log.info("registered %s version %s (%s); champion is v%s: %s", cfg.model_name, summary["version"],
             "promoted" if summary["promoted"] else "challenger", summary["champion"], summary["reason"])
    return summary


def _dataset(given: str | None, recorded: str | None) -> DatasetManifest | None:
    """The Dataset's manifest: ``--dataset`` must be readable; the one eval.json names is used when it is."""
    if given:
        return DatasetManifest.read(DatasetManifest.folder_of(given))
    if recorded:
        try:
            return DatasetManifest.read(DatasetManifest.folder_of(recorded))
        except UserError as exc:
            log.warning("the model card and the run's dataset inputs leave out the data: %s", exc)
    return None


def _register(cfg: Config, metric: registry.GateMetric, evaluation: dict, meta: dict, model_dir,
              profile: dict | None, selection: dict | None, dataset: DatasetManifest | None,
              gate_data: DatasetManifest | None) -> dict:
    client = tracking.connect()
    default_name = (tracking.run_name(cfg.pipeline_name, cfg.kfp_run_name) if cfg.pipeline_name
                    else f"{meta['arch']}-{(selection or {}).get('strategy', 'model')}")
    run_name = cfg.run_name or default_name
    tags = tracking.pipeline_tags(cfg.kfp_run_id, cfg.kfp_run_name, cfg.pipeline_name)
    run_id = tracking.ensure_run(cfg.run_id, run_name, tags)
    data_uri = DatasetManifest.folder_of(dataset.origin.uri) if dataset is not None else None
    durable = cfg.dataset_uri or data_uri  # what the run's inputs and the version's tag record
    with tracking.active_run(run_id):
        tracking.log_params(run_id, tracking.run_params(profile=profile, selection=selection, model_meta=meta))
        for name, doc, uri in (("profile", profile, cfg.profile and Profile.file_in(cfg.profile)),
                           ("selection", selection, cfg.selection and Selection.file_in(cfg.selection))):
            if doc:
                tracking.log_json(run_id, f"{name}.json", doc)
            _log_siblings(run_id, uri, f"{name}.png")
        metrics = tracking.log_evaluation(run_id, evaluation)
        if dataset is not None:
            tracking.log_dataset_splits(run_id, durable, dataset.totals or {}, dataset.counts or {},
                                        dataset.origin.sha256)
        _log_siblings(run_id, Evaluation.file_in(cfg.eval), "eval.png", "gradcam.png", "eval.html")
        value = registry.metric_value(evaluation, metric)
        from entropy_ft.tracking import serving  # imports mlflow.pyfunc: only when registering, not on every CLI start

        info = serving.log_pyfunc(model_dir, meta)
        # from reading the champion to moving the aliases, one registration of this model at a time
        with gate_lock(client, cfg.model_name) as lock:
            champion_before = registry.champion_version(client, cfg.model_name)
            seed = int(evaluation.get("seed") or 0)
            comparisons, unavailable, drift = {}, None, None
            if champion_before is not None:
                with tempfile.TemporaryDirectory(prefix="entropy-ft-champion-") as tmp:
                    try:
                        champion_dir = registry.download_model_dir(cfg.model_name, champion_before, Path(tmp))
                    except (UserError, OSError) as exc:
                        champion_dir, unavailable = None, f"its model could not be loaded ({exc})"
                    if champion_dir is not None and cfg.promote == "better":
                        comparisons, unavailable = _head_to_head(metric, Path(model_dir), champion_before,
                                                                 champion_dir, gate_data, seed)
                    drift = _drift(cfg, client, champion_before, champion_dir, data_uri, seed)
                _log_drift(run_id, drift)
            comparison = comparisons.get(metric.sigma)
            decision = registry.decide(cfg.promote, champion_before, comparison,
                                       [c for s, c in comparisons.items() if s != metric.sigma],
                                       min_delta=cfg.gate_min_delta, alpha=cfg.gate_alpha, unavailable=unavailable)
            champion_value = comparison.champion if comparison else None
            extra = {"arch": meta["arch"], "strategy": str((selection or {}).get("strategy")),
                     "data_manifest_sha256": str(meta.get("data_manifest_sha256")), **drift_tags(drift),
                     **({"dataset_uri": durable} if durable else {})}
            tags = registry.version_tags(metrics, metric, value, decision, champion_before, comparison, extra)
            version = registry.create_version(client, cfg.model_name, info.model_uri, tags)
            gate = {"gate_metric": str(metric), "value": value, "champion_before": champion_before,
                    "promoted": decision.promote, "reason": decision.reason}
            card = model_card(cfg.model_name, version, meta, evaluation, gate, drift, *(
                (dataset.to_json(), durable, dataset.origin.sha256) if dataset is not None else ()))
            client.update_model_version(cfg.model_name, version, description=tracking.redact(card))
            tracking.set_description(run_id, card)
            lock.check()
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
        "comparison": {f"{s:g}": c.to_json() for s, c in comparisons.items()},
        "drift": drift,
    }


def _head_to_head(metric: registry.GateMetric, model_dir: Path, champion: str, champion_dir: Path,
                  gate_data: DatasetManifest | None, seed: int) -> tuple[dict, str | None]:
    """Candidate and champion on the gate data's test split at sigma 0 and the gate's sigma:
    ({sigma: PairedComparison}, None), or ({}, why there is no comparison)."""
    from entropy_ft.evaluation.head_to_head import head_to_head

    if gate_data is None:
        return {}, "no data to compare them on (pass --gate-data or --dataset)"
    folder = DatasetManifest.folder_of(gate_data.origin.uri)
    with storage.local_copy(folder) as root:
        try:
            found = head_to_head(model_dir, champion_dir, root, metric.name, sorted({0.0, metric.sigma}), seed)
        except UserError as exc:
            return {}, str(exc)
    for c in found.values():
        log.info("gate at sigma %g: candidate %.4f, champion v%s %.4f on %d images, delta %+.4f (95%% CI %+.4f to "
                 "%+.4f), p=%.4g (%s)", c.sigma, c.candidate, champion, c.champion, c.images, c.delta, c.ci_low,
                 c.ci_high, c.p_better, c.test)
    return found, None


def _drift(cfg: Config, client, champion: str, champion_dir: Path | None, data_uri: str | None, seed: int) -> dict:
    """The drift report of this run's data against the champion's training data, or why there is none."""
    from entropy_ft.evaluation import drift

    reference = client.get_model_version(cfg.model_name, champion).tags.get(DATASET_TAG)
    why = ("the champion's model could not be loaded" if champion_dir is None
           else "this run's dataset is not known (pass --dataset)" if data_uri is None
           else f"v{champion} does not record its dataset (tag {DATASET_TAG})" if not reference else None)
    if why:
        log.warning("no drift report: %s", why)
        return {"unavailable": why}
    try:
        with storage.local_copy(reference) as ref_root, storage.local_copy(data_uri) as root:
            report = drift.measure(champion_dir, ref_root, root, seed, cfg.drift_threshold)
    except (UserError, OSError) as exc:
        log.warning("no drift report: the champion's dataset %s could not be read (%s)", reference, short(exc))
        return {"unavailable": f"the champion's dataset {reference} could not be read ({short(exc)})"}
    report = {"reference": reference, "champion": champion, **report}
    if report["drift"]:
        log.warning("DRIFT: this run's training data differs from champion v%s's: domain-classifier AUC %.3f >= "
                    "%.2f; check the new scans before trusting the comparison", champion,
                    report["features"]["domain_auc"], cfg.drift_threshold)
    return report


def drift_tags(drift: dict | None) -> dict[str, str]:
    """Version tags (after the entropy_ft. prefix) that put the drift verdict in the registry's list view."""
    if drift is None:
        return {}
    if "unavailable" in drift:
        return {"drift": "unavailable", "drift.reason": drift["unavailable"]}
    tags = {"drift": str(drift["drift"]).lower(), "drift.reference": drift["reference"],
            "drift.class_tv": repr(drift["class_balance"]["total_variation"])}
    if drift["features"]:
        tags.update({"drift.domain_auc": repr(drift["features"]["domain_auc"]),
                     "drift.domain_auc_p": repr(drift["features"]["p_value"]),
                     "drift.intensity_mean_ks": repr(drift["intensity"]["mean_ks"])})
    return tags


def _log_drift(run_id: str, drift: dict | None) -> None:
    """The scores as run metrics (comparable across weeks in the UI) and the whole report as drift.json."""
    if drift and "unavailable" not in drift:
        tracking.log_metrics(run_id, flatten_numbers({k: drift[k] for k in ("class_balance", "intensity", "features")
                                                      if drift[k]}, "drift_"))
    if drift:
        tracking.log_json(run_id, "drift.json", drift)


def _log_siblings(run_id: str, json_uri: str | None, *names: str) -> None:
    """The step that wrote a JSON also wrote its plots and report beside it (``eval.png``, the
    Grad-CAM overlays ``gradcam.png``, ``eval.html``); log those that are there: PNGs under
    ``plots/``, where the MLflow UI previews them, an HTML report at the run's root."""
    if not json_uri:
        return
    folder = json_uri.rsplit("/", 1)[0] if "/" in json_uri else "."
    for name in names:
        uri = storage.join(folder, name)
        if storage.exists(uri):
            (tracking.log_image if name.endswith(".png") else tracking.log_file)(run_id, name, uri)
