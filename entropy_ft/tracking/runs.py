"""MLflow tracking: one MLflow run per pipeline run, created by the first step that needs it
and handed on to the next steps by its run id.

Where runs go
    ``MLFLOW_TRACKING_URI`` when set (``http(s)://`` server, ``sqlite:///``, ``databricks``...).
    Otherwise the embedded local store: ``sqlite:///<root>/mlflow.db`` with artifacts in
    ``<root>/artifacts``, where ``root`` is ``$ENTROPY_FT_HOME/mlruns`` or ``./mlruns``,
    resolved to an absolute path so that every step of a local pipeline run, whatever its
    working directory, writes to the same store. Open it with
    ``mlflow ui --backend-store-uri sqlite:///<root>/mlflow.db`` (see docs/mlflow.md).
    Runs go to the experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``entropy-ft``); on the
    local store it is created with an explicit artifact location, because MLflow 3 with
    SQLite would otherwise put artifacts relative to whatever the working directory is.

How a step uses it::

    run_id = tracking.ensure_run(cfg.mlflow_run_id, run_name, tracking.pipeline_tags(kfp_run_id, ...))
    with tracking.active_run(run_id):          # status RUNNING, system metrics, FAILED on error
        train(..., on_epoch_end=tracking.epoch_logger(run_id))
        tracking.log_params(run_id, tracking.run_params(model_meta=meta))
    return {..., "mlflow_run_id": run_id}      # the next step's input

Faults: HTTP calls are retried by MLflow's own client with a short, bounded backoff (about
four tries within ten seconds unless ``MLFLOW_HTTP_REQUEST_*`` say otherwise); after that the
step fails with a :class:`UserError` naming the tracking URI. A server behind MLflow's
``basic-auth`` app that refuses ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``
(401, never retried) or denies the user an action (403) fails the same way, saying which.
Credentials never leave the process: :func:`redact` strips ``user:password@`` from URIs and
masks the values of the credential variables in every message, param and tag written here,
and no environment is ever logged.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from entropy_ft.artifacts import Evaluation
from entropy_ft.errors import UserError, short
from entropy_ft.logs import log
from entropy_ft.reports import flatten_numbers

DEFAULT_EXPERIMENT = "entropy-ft"

# MLflow's defaults retry 7 times over about four minutes; a pipeline step should fail fast
# and say why. Users can still override each of these in the environment.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}

# Values of these variables are masked wherever text leaves the process through this module.
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MINIO_ROOT_PASSWORD",
)

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


# --------------------------------------------------------------------------- where


def local_store_root() -> Path:
    """The embedded store's folder: ``$ENTROPY_FT_HOME/mlruns`` or ``./mlruns``, absolute."""
    return (Path(os.environ.get("ENTROPY_FT_HOME") or ".") / "mlruns").resolve()


def local_store_uri() -> str:
    return f"sqlite:///{local_store_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the embedded SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or local_store_uri()


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT


def redact(text: str) -> str:
    """``text`` without ``user:password@`` in URIs and without the value of any credential variable."""
    text = _USERINFO.sub(r"\g<scheme>***@", str(text))
    for var in SECRET_ENV_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


@contextlib.contextmanager
def tracking_errors() -> Iterator[None]:
    """Turn MLflow and HTTP failures inside the block into a UserError naming the tracking URI."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, requests.RequestException, OSError) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(f"MLflow tracking at {redact(tracking_uri())}: {redact(_problem(exc))}") from None


def _problem(exc: Exception) -> str:
    """What went wrong, in words a user can act on: a refused login or a missing permission says so
    (the server's own text is a generic 401/403 page), anything else is the exception's first line."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):  # REST calls: the HTTP status survives as the error code
        status = exc.get_http_status_code()
    else:  # artifact uploads through the server: requests.HTTPError
        status = getattr(getattr(exc, "response", None), "status_code", None)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401:
        who = f"for user {user!r}" if user else "without MLFLOW_TRACKING_USERNAME"
        return (f"authentication failed {who} (HTTP 401); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "to an MLflow user's credentials (in the cluster: the Secret entropy-ft-mlflow, docs/deploy.md)")
    if status == 403:
        return f"permission denied to user {user!r} (HTTP 403); an MLflow admin must grant it: {short(exc)}"
    return short(exc)


def connect():
    """An ``MlflowClient`` for :func:`tracking_uri`, with the experiment ready.

    The first contact goes through MLflow's own retrying HTTP client (bounded by
    :data:`HTTP_RETRY_DEFAULTS`); an unreachable server then fails with a UserError.
    """
    return _session()[0]


def experiment_id() -> str:
    return _session()[1]


def _session():
    import mlflow

    for var, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(var, value)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)  # the fluent API (start_run, log_model) follows the same store
    return _connect(uri, experiment_name(), _artifact_location(uri))


def _artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside the embedded store, else the server's choice."""
    return (local_store_root() / "artifacts").as_uri() if uri == local_store_uri() else None


@functools.cache
def _connect(uri: str, experiment: str, artifact_location: str | None):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with tracking_errors():
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            exp_id = client.create_experiment(experiment, artifact_location=artifact_location)
        elif exp.lifecycle_stage != "active":
            raise UserError(
                f"MLflow experiment {experiment!r} at {redact(uri)} is deleted; "
                "restore it or set MLFLOW_EXPERIMENT_NAME"
            )
        else:
            exp_id = exp.experiment_id
    log.info("MLflow tracking at %s, experiment %r", redact(uri), experiment)
    return client, exp_id


# --------------------------------------------------------------------------- runs


def pipeline_tags(kfp_run_id: str | None = None, kfp_run_name: str | None = None,
                  pipeline_name: str | None = None) -> dict[str, str]:
    """Tags that tie an MLflow run to its KFP run.

    KFP v2 does not put the run id into the component's environment (its pods get only
    ``KFP_POD_NAME`` / ``KFP_POD_UID``), so components pass ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``,
    ``dsl.PIPELINE_JOB_NAME_PLACEHOLDER`` and the pipeline's name in as arguments.
    """
    values = {"kfp.run_id": kfp_run_id, "kfp.run_name": kfp_run_name, "kfp.pipeline_name": pipeline_name,
              "kfp.pod_name": os.environ.get("KFP_POD_NAME")}
    return {k: redact(v) for k, v in values.items() if v and "{{$" not in v}


def ensure_run(run_id: str | None, run_name: str | None = None, tags: Mapping[str, str] | None = None) -> str:
    """The pipeline's MLflow run: reattach to ``run_id`` or, when it is empty, create one.

    Returns the run id for the step's outputs. An id that the tracking server does not
    know is a UserError (a run id from another server or a deleted run).
    """
    client = connect()
    clean = {k: redact(v) for k, v in (tags or {}).items()}
    with tracking_errors():
        if run_id:
            from mlflow.exceptions import MlflowException

            try:
                run = client.get_run(run_id)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                raise UserError(f"--run-id {run_id}: no such MLflow run at {redact(tracking_uri())}") from None
            for key, value in clean.items():
                client.set_tag(run.info.run_id, key, value)
            return run.info.run_id
        run = client.create_run(experiment_id(), run_name=run_name, tags=clean)
    log.info("created MLflow run %s (%s)", run.info.run_id, run.info.run_name)
    return run.info.run_id


@contextlib.contextmanager
def active_run(run_id: str) -> Iterator[str]:
    """Make ``run_id`` the active run for the block: status RUNNING, system metrics sampled
    in the background (CPU, memory, disk, network, GPU when present), FINISHED at the end or
    FAILED when the block raises. Each step of a pipeline wraps its work in one of these."""
    import mlflow

    connect()
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield run_id
        return
    with tracking_errors():
        run = mlflow.start_run(run_id=run_id, log_system_metrics=True)
    with run:
        yield run_id


# --------------------------------------------------------------------------- params


def _param_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = redact(text)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def run_params(profile: Mapping | None = None, selection: Mapping | None = None,
               model_meta: Mapping | None = None) -> dict[str, str]:
    """The run's parameters from whichever artifacts a step has: what was trained, from
    which weights and data, with which selection and hyperparameters."""
    params: dict[str, object] = {}
    for source in (profile, selection, (model_meta or {}).get("selection"), model_meta):
        if not source:
            continue
        for key in ("arch", "weights", "weights_sha256", "classes", "num_classes"):
            if key in source:
                params[key] = source[key]
    if profile:
        params["data_manifest_sha256"] = profile.get("dataset_manifest_sha256")
        params["image_size"] = profile.get("image_size")
        for key in ("estimator", "bins", "tap", "num_images"):
            if key in profile:
                params[f"profile.{key}"] = profile[key]
    sel = selection or (model_meta or {}).get("selection")
    if sel:
        for key in ("strategy", "rule", "seed", "trainable_params", "full_params", "reduction_vs_full"):
            if key in sel:
                params[f"selection.{key}"] = sel[key]
        if "layers" in sel:
            params["selection.num_layers"] = len(sel["layers"])
    if model_meta:
        if model_meta.get("data_manifest_sha256"):
            params["data_manifest_sha256"] = model_meta["data_manifest_sha256"]
        prep = model_meta.get("preprocessing") or {}
        if "image_size" in prep:
            params["image_size"] = prep["image_size"]
        training = model_meta.get("training") or {}
        config = training.get("config", training)
        for key, value in config.items():
            if isinstance(value, (str, int, float, bool)) or value is None:
                params[f"train.{key}"] = value
    return {k: _param_value(v) for k, v in params.items() if v is not None}


def log_params(run_id: str, params: Mapping[str, object]) -> None:
    """Log params once: values already on the run are skipped (MLflow params are immutable,
    and several steps log the same arch or classes); a different value is a warning, not a
    failure, because the run's artifacts say exactly what each step used."""
    from mlflow.entities import Param

    client = connect()
    with tracking_errors():
        existing = client.get_run(run_id).data.params
        new = []
        for key, value in params.items():
            value = _param_value(value)
            if key not in existing:
                new.append(Param(key, value))
            elif existing[key] != value:
                log.warning("MLflow param %s is already %r on run %s; not changing it to %r",
                            key, existing[key], run_id, value)
        for i in range(0, len(new), 100):  # MLflow's log_batch takes at most 100 params
            client.log_batch(run_id, params=new[i : i + 100])


# --------------------------------------------------------------------------- metrics


def epoch_logger(run_id: str) -> Callable[[int, dict], None]:
    """A training callback ``on_epoch_end(epoch, metrics)`` that logs every number in
    ``metrics`` (e.g. ``train_loss``, ``val_accuracy``; nested dicts joined with ``_``) at
    step ``epoch`` as it happens. The ``epoch`` entry itself is the step, not a metric.

    A tracking failure mid-training is a warning: hours of training are worth more than
    one point on a curve, and the register step checks the server again before it counts.
    """
    from mlflow.entities import Metric

    client = connect()

    def on_epoch_end(epoch: int, metrics: dict) -> None:
        now = _now_ms()
        batch = [Metric(k, v, now, int(epoch)) for k, v in flatten_numbers(metrics).items() if k != "epoch"]
        try:
            client.log_batch(run_id, metrics=batch)
        except Exception as exc:  # any failure here must not stop training
            log.warning(
                "could not log epoch %d metrics to MLflow at %s: %s", epoch, redact(tracking_uri()), redact(short(exc))
            )

    return on_epoch_end


def sigma_label(sigma: float) -> str:
    """``0.1`` -> ``"0.1"``, ``0`` -> ``"0"``: the sigma as it appears in metric names."""
    return f"{float(sigma):g}"


def eval_metrics(evaluation: Mapping) -> dict[str, float]:
    """Run metrics from an eval.json: ``test_<m>`` at sigma 0, ``test_<m>_sigma_<s>`` at every
    sigma (sigma 0 from the top-level figures when the noise table lacks it), and
    ``test_recall_<class>`` at sigma 0, with the 95% CIs (``test_<m>_ci_low`` / ``_high``) and the
    per-class ``test_<sensitivity|specificity|ppv|npv>_<class>`` when eval.json has them. Missing and
    non-finite values are left out."""
    names = ("accuracy", "macro_f1", "balanced_accuracy")
    out = {f"test_{m}": evaluation.get(m) for m in names}
    out.update({f"test_recall_{c}": r for c, r in (evaluation.get("per_class_recall") or {}).items()})
    out.update({f"test_{m}_sigma_0": evaluation.get(m) for m in names})
    out.update({f"test_{m}_ci_{end}": bound for m, ci in (evaluation.get("ci") or {}).items()
                for end, bound in zip(("low", "high"), ci or ())})
    for name, rates in (evaluation.get("per_class") or {}).items():
        out.update({f"test_{rate}_{name}": (r or {}).get("value") for rate, r in rates.items()})
    calibration = evaluation.get("calibration") or {}
    out.update({f"test_{k}": calibration.get(k) for k in ("ece", "ece_uncalibrated", "temperature")})
    for row in evaluation.get("noise", []):
        out.update({f"test_{m}_sigma_{sigma_label(row['sigma'])}": row.get(m) for m in names if m in row})
    return {k: float(v) for k, v in out.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def log_evaluation(run_id: str, evaluation: Mapping) -> dict[str, float]:
    """Final test metrics at every noise sigma, as named metrics and as curves over
    ``step = round(100 * sigma)`` (``test_<m>_vs_sigma_pct``), plus eval.json as an artifact."""
    from mlflow.entities import Metric

    client = connect()
    metrics = eval_metrics(evaluation)
    now = _now_ms()
    batch = [Metric(k, v, now, 0) for k, v in metrics.items()]
    for row in evaluation.get("noise", []):
        step = round(100 * float(row["sigma"]))
        for m in ("accuracy", "macro_f1", "balanced_accuracy"):
            if isinstance(row.get(m), (int, float)) and math.isfinite(row[m]):
                batch.append(Metric(f"test_{m}_vs_sigma_pct", float(row[m]), now, step))
    with tracking_errors():
        for i in range(0, len(batch), 1000):
            client.log_batch(run_id, metrics=batch[i : i + 1000])
    log_json(run_id, Evaluation.FILE, evaluation)
    return metrics


EXTERNAL_FILES = ("eval.json", "eval.html", "eval.png", "gradcam.png")


def external_metrics(evaluation: Mapping) -> dict[str, float]:
    """An external evaluation's run metrics: its scores as ``external_<m>`` (every name
    :func:`eval_metrics` gives ``test_<m>``), the counts ``external_scored``, ``external_unknown_images``,
    ``external_duplicates`` / ``_exact`` / ``_near``, and the unseen images' ``external_unseen_<m>``."""
    out = {"external_" + name.removeprefix("test_"): value for name, value in eval_metrics(evaluation).items()}
    section = evaluation.get("external") or {}
    duplicates = section.get("duplicates") or {}
    out.update(flatten_numbers({"scored": section.get("scored"), "unknown_images": section.get("unknown_images"),
                                "duplicates": duplicates.get("duplicates"), "duplicates_exact": duplicates.get("exact"),
                                "duplicates_near": duplicates.get("near"), "unseen": section.get("unseen") or {}},
                               "external_"))
    return out


def log_external_evaluation(run_id: str, evaluation: Mapping, folder: str) -> dict[str, float]:
    """External validation into the pipeline's run: :func:`external_metrics`, and the files evaluate
    wrote to ``folder`` (eval.json, eval.html, the plots) under ``external/``, beside the run's own
    test evaluation."""
    from entropy_ft import storage

    metrics = external_metrics(evaluation)
    log_metrics(run_id, metrics)
    for name in EXTERNAL_FILES:
        uri = storage.join(folder, name)
        if storage.exists(uri):
            _log_bytes(run_id, name, storage.read_bytes(uri), "external")
    return metrics


def log_metrics(run_id: str, metrics: Mapping[str, float]) -> None:
    """Named numbers at step 0, in one batch (e.g. the drift scores)."""
    from mlflow.entities import Metric

    now = _now_ms()
    with tracking_errors():
        connect().log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def log_dataset_splits(run_id: str, uri: str, totals: Mapping[str, int], counts: Mapping[str, Mapping[str, int]],
                       digest: str) -> None:
    """The Dataset's train, val and test splits as the run's dataset inputs: one name and digest
    per split (the manifest's sha256 names the exact data), its source, and rows per class, so the
    MLflow UI answers "trained on what?" instead of "Datasets: None"."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source = resolve_dataset_source(uri)
    name = Path(str(uri).rstrip("/")).name or "dataset"
    contexts = {"train": "training", "val": "validation", "test": "testing"}
    inputs = [
        DatasetInput(
            Dataset(name=f"{name}-{split}", digest=digest[:16], source_type=source._get_source_type(),
                    source=redact(source.to_json()),
                    profile=json.dumps({"num_rows": totals.get(split, 0),
                                        "rows_per_class": dict(counts.get(split, {}))})),
            tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)],
        )
        for split, context in contexts.items()
    ]
    with tracking_errors():
        connect().log_inputs(run_id, datasets=inputs)


def set_description(run_id: str, markdown: str) -> None:
    """The run's description in the MLflow UI (the ``mlflow.note.content`` tag)."""
    with tracking_errors():
        connect().set_tag(run_id, "mlflow.note.content", redact(markdown))


def run_name(pipeline_name: str | None, kfp_run_name: str | None) -> str:
    """The MLflow run's name: the KFP run's own name (which already starts with the pipeline's),
    or the pipeline's name when the run has none."""
    resolved = kfp_run_name if kfp_run_name and "{{$" not in kfp_run_name else None
    return (resolved or pipeline_name or "entropy-ft")[:250]


# --------------------------------------------------------------------------- artifacts


def log_json(run_id: str, name: str, content: Mapping | str) -> None:
    """Log a JSON artifact (profile.json, selection.json, eval.json) at the run's root.

    ``content`` is the parsed document or the local path / s3:// URI of the file.
    """
    from entropy_ft import storage

    data = storage.read_bytes(content) if isinstance(content, str) else (json.dumps(content, indent=2) + "\n").encode()
    _log_bytes(run_id, name, data, None)


def log_file(run_id: str, name: str, uri: str) -> None:
    """Log a file (local path or s3:// URI) as it is at the run's root, such as eval.html."""
    from entropy_ft import storage

    _log_bytes(run_id, name, storage.read_bytes(uri), None)


def log_image(run_id: str, name: str, png: bytes | str | Path) -> None:
    """Log a PNG plot under ``plots/``; ``png`` is the encoded bytes or a file path / URI."""
    from entropy_ft import storage

    data = png if isinstance(png, bytes) else storage.read_bytes(str(png))
    _log_bytes(run_id, name, data, "plots")


def _log_bytes(run_id: str, name: str, data: bytes, artifact_path: str | None) -> None:
    client = connect()
    with tempfile.TemporaryDirectory(prefix="entropy-ft-mlflow-") as tmp:
        path = Path(tmp, name)
        path.write_bytes(data)
        with tracking_errors():
            client.log_artifact(run_id, str(path), artifact_path)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
