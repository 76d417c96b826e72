"""The registry gate: every registered model becomes a new version and the ``challenger``;
``champion`` moves only to a version that beats it head to head.

Head to head: the register step evaluates the candidate and the current champion on the same
images with the same noise (:mod:`entropy_ft.evaluation.paired`), and :func:`decide`, a pure
function of that comparison, promotes only a difference of at least ``--gate-min-delta`` that
the paired test finds significant at ``--gate-alpha``, and never a model that is significantly
worse at another gated noise level. So recurring retraining cannot replace a good production
model with a worse one, a tie, or one that drew an easier test set.

Order of operations, so that a failure at any point leaves no alias on a half-made version:
log the model, create the version with all its tags, wait until it is READY, and only then
set ``challenger`` and (if the gate says so) ``champion``. From reading the champion to
setting the aliases, ``register`` holds the model's registry lock
(:mod:`entropy_ft.tracking.gate_lock`), so two registrations decide in turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from entropy_ft.errors import UserError
from entropy_ft.evaluation.paired import PairedComparison
from entropy_ft.tracking.runs import eval_metrics, sigma_label

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTE_MODES = ("better", "always", "never")
GATE_METRICS = ("macro_f1", "accuracy", "balanced_accuracy")  # all: higher is better
TAG_PREFIX = "entropy_ft."


@dataclass(frozen=True)
class GateMetric:
    """A metric of eval.json at one noise sigma: ``macro_f1`` (sigma 0) or ``macro_f1@0.2``."""

    name: str
    sigma: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "GateMetric":
        name, _, sigma = text.strip().partition("@")
        if name not in GATE_METRICS:
            raise UserError(
                f"--gate-metric {text}: expected one of {', '.join(GATE_METRICS)}, "
                "optionally @SIGMA (e.g. macro_f1@0.2)"
            )
        try:
            value = float(sigma) if sigma else 0.0
        except ValueError:
            raise UserError(f"--gate-metric {text}: the sigma after @ must be a number") from None
        if not 0.0 <= value <= 1.0:
            raise UserError(f"--gate-metric {text}: sigma must be between 0 and 1")
        return cls(name, value)

    @property
    def key(self) -> str:
        """The metric's name among :func:`entropy_ft.tracking.runs.eval_metrics`, e.g. ``test_macro_f1_sigma_0``."""
        return f"test_{self.name}_sigma_{sigma_label(self.sigma)}"

    @property
    def tag(self) -> str:
        """The version tag that holds this metric, e.g. ``entropy_ft.test_macro_f1_sigma_0``."""
        return TAG_PREFIX + self.key

    def __str__(self) -> str:
        return self.name if self.sigma == 0 else f"{self.name}@{self.sigma:g}"


def metric_value(evaluation: Mapping, metric: GateMetric) -> float | None:
    """The gate metric of an eval.json; None when absent or not finite."""
    return eval_metrics(evaluation).get(metric.key)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(mode: str, champion_version: str | None, comparison: PairedComparison | None = None,
           guards: Sequence[PairedComparison] = (), *, min_delta: float = 0.005, alpha: float = 0.05,
           unavailable: str | None = None) -> Decision:
    """Whether the new version takes ``champion``.

    ``always`` and ``never`` are what they say. ``better``: with no champion yet, the candidate
    wins. Otherwise the decision rests on ``comparison``, both models on the same images at the
    gate metric's sigma: the candidate must be better by at least ``min_delta`` and the paired
    test must say so at ``alpha``; and no ``guard`` (the same comparison at the other gated
    noise levels) may show it significantly worse. Without a comparison (``unavailable`` says
    why) there is no evidence, so the champion stays.
    """
    if mode == "always":
        return Decision(True, "--promote always")
    if mode == "never":
        return Decision(False, "--promote never")
    if champion_version is None:
        return Decision(True, "no champion yet")
    if comparison is None:
        return Decision(False, f"no head-to-head with champion v{champion_version}: {unavailable or 'no evidence'}")
    evidence = (f"{comparison.metric}@{comparison.sigma:g} {comparison.candidate:.4f} vs {comparison.champion:.4f} "
                f"on the same {comparison.images} images, delta {comparison.delta:+.4f} "
                f"(95% CI {comparison.ci_low:+.4f} to {comparison.ci_high:+.4f}), p={comparison.p_better:.4g}")
    if comparison.delta < min_delta:
        return Decision(False, f"{evidence}: below --gate-min-delta {min_delta:g}; champion v{champion_version} stays")
    if comparison.p_better >= alpha:
        return Decision(False, f"{evidence}: not significant at --gate-alpha {alpha:g}; "
                               f"champion v{champion_version} stays")
    for guard in guards:
        if guard.p_worse < alpha:
            return Decision(False, f"{evidence}, but worse at sigma {guard.sigma:g} ({guard.candidate:.4f} vs "
                                   f"{guard.champion:.4f}, p={guard.p_worse:.4g}); champion v{champion_version} stays")
    return Decision(True, f"{evidence}: beats champion v{champion_version}")


def version_tags(metrics: Mapping[str, float], metric: GateMetric, value: float | None, decision: Decision,
                 champion_version: str | None, comparison: PairedComparison | None,
                 extra: Mapping[str, str]) -> dict[str, str]:
    """Tags for a new model version: its test metrics and the gate decision with its evidence, readable in the UI.

    Numbers are written with ``repr`` (shortest exact round trip)."""
    tags = {f"{TAG_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()}
    tags.update({
        f"{TAG_PREFIX}gate.metric": str(metric),
        f"{TAG_PREFIX}gate.value": "missing" if value is None else repr(value),
        f"{TAG_PREFIX}gate.promoted": str(decision.promote).lower(),
        f"{TAG_PREFIX}gate.reason": decision.reason,
        f"{TAG_PREFIX}gate.champion_before": champion_version or "none",
    })
    if comparison is not None:
        tags.update({f"{TAG_PREFIX}gate.{k}": v if isinstance(v, str) else repr(v)
                     for k, v in comparison.to_json().items() if k not in ("metric", "sigma")})
    tags.update({f"{TAG_PREFIX}{k}": v for k, v in extra.items()})
    return tags


def champion_version(client, model_name: str) -> str | None:
    """The version the ``champion`` alias points at, or None when there is none.

    Read from the registered model's aliases, not by asking for the alias: behind MLflow's
    ``basic-auth`` app that request answers 403, not 404, for a model that does not exist yet,
    which would fail every first registration."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = model.aliases.get(CHAMPION)
    return None if version is None else str(version)


def download_model_dir(model_name: str, version: str, dst: Path) -> Path:
    """The Model dir (weights.safetensors + model.json) inside a registered version's pyfunc."""
    import mlflow

    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version}", dst_path=str(dst)))
    found = sorted(root.rglob("model.json"))
    if not found:
        raise UserError(f"models:/{model_name}/{version} holds no model.json: not registered by entropy-ft")
    return found[0].parent


def create_version(client, model_name: str, model_uri: str, tags: Mapping[str, str], wait_s: int = 300) -> str:
    """Register ``model_uri`` as a new version of ``model_name`` with all its tags, and wait
    until MLflow reports it READY; anything else is a UserError and no alias is touched."""
    import mlflow

    version = mlflow.register_model(model_uri, model_name, await_registration_for=wait_s, tags=dict(tags))
    status = client.get_model_version(model_name, version.version).status
    if status != "READY":
        raise UserError(f"model {model_name} version {version.version} is {status}, not READY; no alias was moved")
    return str(version.version)


def set_aliases(client, model_name: str, version: str, promote: bool) -> None:
    """Point ``challenger`` (always) and ``champion`` (if promoted) at ``version``: the last
    step of a registration, so aliases only ever name complete, READY versions."""
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    if promote:
        client.set_registered_model_alias(model_name, CHAMPION, version)
