"""The registry gate: every registered model becomes a new version and the ``challenger``;
``champion`` moves only to a version that is strictly better on the gate metric.

The decision is a pure function (:func:`decide`) over numbers read from eval.json (the
candidate) and from the champion version's tags, so recurring retraining can never replace
a good production model with a worse one, a tie, or one whose metric is missing.

Order of operations, so that a failure at any point leaves no alias on a half-made version:
log the model, create the version with all its tags, wait until it is READY, and only then
set ``challenger`` and (if the gate says so) ``champion``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from entropy_ft.errors import UserError
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


def _finite(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(mode: str, candidate: float | None, champion_version: str | None, champion: float | None) -> Decision:
    """Whether the new version takes ``champion``.

    ``always`` and ``never`` are what they say. ``better``: with no champion yet, any
    candidate with the metric wins; otherwise only a strictly higher value does. A missing
    value on either side never promotes: without both numbers there is no evidence.
    """
    if mode == "always":
        return Decision(True, "--promote always")
    if mode == "never":
        return Decision(False, "--promote never")
    if candidate is None:
        return Decision(False, "the new version has no value for the gate metric")
    if champion_version is None:
        return Decision(True, "no champion yet")
    if champion is None:
        return Decision(False, f"champion v{champion_version} has no value for the gate metric to compare with")
    if candidate > champion:
        return Decision(True, f"{candidate:.4f} beats champion v{champion_version} ({champion:.4f})")
    relation = "ties" if candidate == champion else "is below"
    return Decision(False, f"{candidate:.4f} {relation} champion v{champion_version} ({champion:.4f})")


def version_tags(metrics: Mapping[str, float], metric: GateMetric, value: float | None, decision: Decision,
                 champion_version: str | None, champion_value: float | None,
                 extra: Mapping[str, str]) -> dict[str, str]:
    """Tags for a new model version: its test metrics and the gate decision, readable in the UI.

    Numbers are written with ``repr`` (shortest exact round trip), because the next
    registration compares against them: rounding here could turn a tie into a promotion.
    """
    tags = {f"{TAG_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()}
    tags.update({
        f"{TAG_PREFIX}gate.metric": str(metric),
        f"{TAG_PREFIX}gate.value": "missing" if value is None else repr(value),
        f"{TAG_PREFIX}gate.promoted": str(decision.promote).lower(),
        f"{TAG_PREFIX}gate.reason": decision.reason,
        f"{TAG_PREFIX}gate.champion_before": champion_version or "none",
        f"{TAG_PREFIX}gate.champion_value_before": "missing" if champion_value is None else repr(champion_value),
    })
    tags.update({f"{TAG_PREFIX}{k}": v for k, v in extra.items()})
    return tags


def current_champion(client, model_name: str, metric: GateMetric) -> tuple[str | None, float | None]:
    """The champion's version and its gate metric (from its tags); (None, None) if there is none."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as exc:
        # no such registered model: RESOURCE_DOES_NOT_EXIST; a model without the alias: "alias ... not found"
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "alias" in str(exc) and "not found" in str(exc):
            return None, None
        raise
    return str(version.version), _finite(version.tags.get(metric.tag))


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
