"""One typed record per artifact file: what a step writes, and what the next step may rely on.

Every record knows its file name and ``schema_version``, writes itself into an artifact
folder (:meth:`Artifact.write`) and reads itself back from the folder or the file
(:meth:`Artifact.read`). Reading validates: a missing key, a value of the wrong type or a
newer schema is a :class:`~entropy_ft.errors.UserError` (exit 2) that names the file and the
key, instead of a ``KeyError`` three functions later. Keys a record does not declare are kept
in ``extra`` and written back, so a file from a newer minor version survives a round trip.

The records are the JSON files' top level; nested parts (a profile's layer rows, a noise row
of eval.json) stay plain JSON values, checked where they are used.

This module imports neither torch nor numpy: the select and compare steps, and the pipeline
compiler, read artifacts without paying for either.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from entropy_ft import SCHEMA_VERSION, storage
from entropy_ft.errors import UserError

A = TypeVar("A", bound="Artifact")
_BOOKKEEPING = ("extra", "origin", "present")  # fields of the record, not of the file


@dataclass(frozen=True)
class Origin:
    """Where a record was read from: the file's URI and the sha256 of its bytes (for provenance)."""

    uri: str
    sha256: str


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """Base of the artifact records."""

    FILE: ClassVar[str]  # the file name, given as ``class X(Artifact, file=..., producer=...)``
    PRODUCER: ClassVar[str]  # the command that writes it, for error messages

    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict, repr=False, compare=False)
    origin: Origin | None = field(default=None, repr=False, compare=False)
    present: frozenset | None = field(default=None, repr=False, compare=False)  # keys a file read had

    def __init_subclass__(cls, file: str = "", producer: str = "", **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.FILE, cls.PRODUCER = file, producer

    def to_json(self) -> dict:
        """The file's content: ``schema_version`` first, then the fields in order, then ``extra``.

        A record read from a file writes back the keys that file had, no more: an optional key it
        lacked does not appear as null."""
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
               if f.name not in _BOOKKEEPING and (self.present is None or f.name in self.present)}
        return {**out, **self.extra}

    def write(self, directory: str) -> str:
        """Write ``<directory>/<FILE>`` (atomically, local or s3://); returns its URI."""
        uri = storage.join(str(directory), self.FILE)
        storage.write_json(uri, self.to_json())
        return uri

    @classmethod
    def file_in(cls, uri: str) -> str:
        """The record's file given the artifact folder or the file itself."""
        return str(uri) if str(uri).endswith(".json") else storage.join(str(uri), cls.FILE)

    @classmethod
    def folder_of(cls, uri: str) -> str:
        """The artifact folder given the folder or the record's file (for artifacts that are more
        than their record: a Dataset's shards, a Model's weights)."""
        text = str(uri).rstrip("/")
        return text[: -len(cls.FILE) - 1] if text.endswith("/" + cls.FILE) else text

    @classmethod
    def read(cls: type[A], uri: str) -> A:
        """Read and validate the record from an artifact folder or its file."""
        path = cls.file_in(uri)
        data = storage.read_bytes(path)
        try:
            content = json.loads(data)
        except ValueError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_json(content, path, Origin(path, storage.sha256_bytes(data)))

    @classmethod
    def from_json(cls: type[A], content: Any, where: str, origin: Origin | None = None) -> A:
        """Validate parsed JSON against the record's fields."""
        what = f"{where}: not a {cls.FILE} from `entropy-ft {cls.PRODUCER}`"
        if not isinstance(content, dict):
            raise UserError(f"{what} (expected a JSON object)")
        version = content.get("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise UserError(f"{where}: schema_version {version!r} is newer than this entropy-ft reads "
                            f"({SCHEMA_VERSION})")
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in _BOOKKEEPING:
                continue
            if f.name not in content:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise UserError(f"{what} (missing key {f.name!r})")
                continue
            value = content[f.name]
            if not _fits(value, hints[f.name]):
                raise UserError(f"{what} (key {f.name!r} is {type(value).__name__}, expected {_name(hints[f.name])})")
            values[f.name] = value
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in content.items() if k not in known}
        return cls(**values, extra=extra, origin=origin, present=frozenset(content))


def _plain(value: Any) -> Any:
    """JSON-ready: tuples as lists, nested records as dicts."""
    if isinstance(value, Artifact):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _fits(value: Any, hint: Any) -> bool:
    """A loose runtime check of a JSON value against a field's annotation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    base = origin or hint
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base in (list, tuple):
        return isinstance(value, list)
    return isinstance(value, base)


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# ---------------------------------------------------------------- the records


@dataclass(frozen=True, kw_only=True)
class DatasetManifest(Artifact, file="manifest.json", producer="ingest"):
    """``manifest.json`` of a Dataset: classes, sizes, shards and what ingestion found."""

    classes: list[str]
    image_size: int
    image_encoding: str
    preprocessing: dict | None = None
    counts: dict | None = None
    totals: dict | None = None
    shards: list[dict]
    duplicates: dict = field(default_factory=lambda: {"groups": [], "summary": {}})
    quarantine: list[dict] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)
    splits: dict = field(default_factory=dict)
    patients: dict | None = None  # images with a (hashed) patient key, distinct keys, where the salt came from
    dicom: dict | None = None  # DICOM images and the windowing each got (counts; never a header value)
    labels: dict | None = None  # the --labels file: rows matched and not (by line number), unlabelled files


@dataclass(frozen=True, kw_only=True)
class Profile(Artifact, file="profile.json", producer="profile"):
    """``profile.json``: the activation entropy of every backbone conv layer, in forward order."""

    arch: str
    weights: str | None = None
    weights_sha256: str | None = None
    num_classes: int
    classes: list[str] | None = None
    dataset: str | None = None
    dataset_manifest_sha256: str | None = None
    split: str | None = None
    num_images: int | None = None
    image_size: int | None = None
    seed: int | None = None
    estimator: str | None = None
    bins: int | None = None
    tap: str | None = None
    layers: list[dict]  # {name, params, entropy, entropy_std, normalized_entropy}
    bootstrap: dict | None = None  # resamples, seed, unit, batches, batch_size, entropies, rules (None: not resampled)

    def entropies(self) -> dict[str, float]:
        """Layer name -> entropy in bits, in forward order; malformed rows are a UserError."""
        try:
            return {str(row["name"]): float(row["entropy"]) for row in self.layers}
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{self.origin.uri if self.origin else self.FILE}: malformed layer row ({exc})") from None

    def resampled_entropies(self) -> list[dict[str, float]] | None:
        """One layer name -> entropy mapping per bootstrap resample (layers in the file's order);
        None for a profile without a bootstrap; a malformed ``bootstrap`` is a UserError."""
        if not self.bootstrap:
            return None
        try:
            per_layer = {str(name): [float(h) for h in hs] for name, hs in self.bootstrap["entropies"].items()}
            return [{name: hs[i] for name, hs in per_layer.items()} for i in range(int(self.bootstrap["resamples"]))]
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise UserError(f"{self.origin.uri if self.origin else self.FILE}: malformed bootstrap ({exc!r})") from None


@dataclass(frozen=True, kw_only=True)
class Selection(Artifact, file="selection.json", producer="select"):
    """``selection.json``: the conv layers to unfreeze and the exact parameter accounting."""

    arch: str
    weights: str
    weights_sha256: str | None = None
    num_classes: int | None = None
    classes: list[str] | None = None
    strategy: str
    rule: str | None = None
    stability: dict | None = None  # entropy with a bootstrapped profile: threshold, frequency, spreads, distinct_sets
    seed: int = 0
    budget_params: int | None = None
    layers: list[str]
    trainable_modules: list[str] | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    full_params: int | None = None
    reduction_vs_full: float | None = None
    profile: str | None = None
    profile_sha256: str | None = None
    tap: str | None = None
    estimator: str | None = None


@dataclass(frozen=True, kw_only=True)
class ModelMeta(Artifact, file="model.json", producer="finetune"):
    """``model.json`` of a Model dir: what rebuilds the fine-tuned model and feeds it."""

    arch: str
    classes: list[str]
    preprocessing: dict  # image_size, mean, std, channels, input, ingest
    selection: dict | None = None  # the selection.json it was trained with
    training: dict | None = None  # config, history, best epoch, seconds
    trainable_params: int | None = None
    total_params: int | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    data_manifest_sha256: str | None = None

    calibration: dict | None = None  # temperature fitted on val, ECE before/after, abstention threshold

    @property
    def image_size(self) -> int:
        return int(self.preprocessing["image_size"])

    @property
    def temperature(self) -> float:
        """What the logits are divided by before the softmax (1 for a model without calibration)."""
        return float((self.calibration or {}).get("temperature", 1.0))

    @property
    def abstain_below(self) -> float | None:
        """The top probability below which the served model answers ``uncertain`` (None: always answers)."""
        return (self.calibration or {}).get("abstain_below")


@dataclass(frozen=True, kw_only=True)
class TrainingHistory(Artifact, file="history.json", producer="finetune"):
    """``history.json`` of a Model dir: per-epoch metrics and the epoch that was kept."""

    history: list[dict]
    best_epoch: int


@dataclass(frozen=True, kw_only=True)
class Evaluation(Artifact, file="eval.json", producer="evaluate"):
    """``eval.json``: test metrics at sigma 0 on top, one row per noise sigma under ``noise``."""

    arch: str | None = None
    model: str | None = None
    dataset: str | None = None
    dataset_manifest_sha256: str | None = None
    model_data_manifest_sha256: str | None = None
    split: str | None = None
    num_images: int | None = None
    classes: list[str] | None = None
    seed: int | None = None
    strategy: str | None = None
    trainable_params: int | None = None
    reduction_vs_full: float | None = None
    accuracy: float
    macro_f1: float
    balanced_accuracy: float | None = None
    per_class_recall: dict | None = None
    confusion_matrix: list[list[int]] | None = None
    ci: dict | None = None  # metric -> [low, high], 95%
    per_class: dict | None = None  # class -> {sensitivity, specificity, ppv, npv}: {value, ci, n}
    calibration: dict | None = None  # temperature, ECE with and without it, reliability bins, coverage curve
    noise: list[dict]  # {sigma, accuracy, macro_f1, balanced_accuracy, per_class_recall, confusion_matrix}
    gradcam: dict | None = None  # per_class, seed, layer, images: the test images the Grad-CAM figure shows
    external: dict | None = None  # --data: source, class mapping, unknown and missing classes, duplicates, unseen
    synthetic: str | None = None  # the phantoms' source (synthetic:N) when the data is not scans


@dataclass(frozen=True, kw_only=True)
class Comparison(Artifact, file="comparison.json", producer="compare"):
    """``comparison.json``: one row per evaluated strategy (the ablation's table)."""

    rows: list[dict]
    evaluations: list[str] | None = None
