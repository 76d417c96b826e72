"""Turn image sources into a Dataset artifact (Parquet shards + manifest.json).

SOURCE is a folder, a .zip, a .tar/.tar.gz, an s3://bucket/prefix (files or one archive), or
``synthetic:N`` (N brain-MRI-like phantoms, see :mod:`entropy_ft.data.synthetic`). Several
sources merge into one dataset. See docs/ingestion.md for layouts, preprocessing and the
duplicate policy.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from entropy_ft import storage
from entropy_ft.artifacts import DatasetManifest
from entropy_ft.data import dedup, labels, patients, quarantine, splits, synthetic
from entropy_ft.data.decode_pool import Decoded, DecodedFile, Failed, Read, Spill, decode_all
from entropy_ft.data.dedup import DUPLICATE_POLICIES
from entropy_ft.data.format import SPLITS, DatasetWriter, ImageRecord, load_manifest, read_split
from entropy_ft.data.layouts import LABELS, LAYOUTS, Candidate, Layout, canonical_class, parse_class_map, resolve
from entropy_ft.data.preprocess import DEFAULT_MAX_PIXELS, Settings, describe
from entropy_ft.data.sources import Source, open_source
from entropy_ft.device import default_workers
from entropy_ft.errors import UserError
from entropy_ft.logs import log, progress, progress_bar
from entropy_ft.options import IMAGE_SIZE, Options, at_least, fraction, option

# raw pixels per shard: writing a shard holds about 4 copies of it, so this bounds ingest memory to ~300 MB
SHARD_MAX_BYTES = 64 << 20


@dataclass(frozen=True, kw_only=True)
class Config(Options):
    sources: tuple[str, ...] = option(
        flag="SOURCE", nargs="+", check=lambda sources: None if sources else "give at least one source",
        help="folder, .zip, .tar[.gz], s3://bucket/prefix (files or one archive), or synthetic:N")
    out: str = option(help="output directory or s3:// prefix")
    layout: str = option("auto", choices=LAYOUTS, help="how the sources are organised")
    image_size: int = option(224, check=IMAGE_SIZE, help="square side in pixels after preprocessing")
    val_fraction: float = option(0.15, check=fraction(0, 0.9), help="share of training images held out for validation")
    test_fraction: float = option(0.15, check=fraction(0, 0.9),
                                  help="share carved as test from sources without a test folder")
    seed: int = option(0, help="seed of the split assignment (a different seed gives other splits)")
    extends: str | None = option(None, metavar="DATASET",
                                 help="an earlier dataset (folder or s3://) this data grew from: its images keep "
                                      "their splits, and new copies of them follow (checked: same rule, seed and "
                                      "fractions)")
    duplicates: str = option("report", choices=DUPLICATE_POLICIES,
                             help="report: warn; drop: remove from val/test what train has and dedupe splits; "
                                  "fail: exit 2 on any cross-split duplicate")
    class_map: tuple[str, ...] = option((), action="append", metavar="FROM=TO[,FROM=TO]",
                                        help="rename class folders (repeatable), after which notumor/no_tumor/no "
                                             "are one class anyway")
    workers: int = option(0, check=at_least(0), help="decoding processes (0: every core)")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, check=at_least(1, "pixel"),
                             help="images with more pixels are quarantined as decompression bombs")
    labels: str | None = option(None, metavar="FILE.csv",
                                help="classes from a CSV file (local or s3://) instead of folders: columns label, "
                                     "path and/or sop_instance_uid, optional patient")
    external: bool = option(False, cli=False, help="data only to score (evaluate --data), every split alike: a class "
                                                   "may have test images only")

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_class_map(self.class_map)
        if self.labels and self.layout != "auto":
            raise UserError(f"--labels {self.labels}: classes come from the label file, not folders, "
                            f"so --layout {self.layout} does not apply; leave --layout at auto")


def run(cfg: Config) -> dict:
    if any(s.startswith("synthetic:") for s in cfg.sources):
        if len(cfg.sources) != 1:
            raise UserError(f"{' '.join(cfg.sources)}: synthetic:N cannot be mixed with other sources")
        return run_synthetic(cfg)
    return run_sources(cfg)


# ---------------------------------------------------------------- synthetic phantoms


def parse_synthetic(source: str) -> int:
    """N from ``synthetic:N``."""
    try:
        n = int(source.split(":", 1)[1])
    except (IndexError, ValueError):
        raise UserError(f"{source}: expected synthetic:N with N a whole number") from None
    if n < 28:
        raise UserError(f"{source}: need at least 28 images so that every class has train, val and test images")
    return n


def run_synthetic(cfg: Config) -> dict:
    n = parse_synthetic(cfg.sources[0])
    preprocessing = {"kind": "synthetic", "image_size": cfg.image_size, "mode": "L"}
    with storage.output_dir(cfg.out) as tmp:
        writer = DatasetWriter(tmp, synthetic.CLASSES, cfg.image_size, preprocessing)
        gen = synthetic.generate(n, cfg.image_size, cfg.seed, val_fraction=cfg.val_fraction)
        for split, i, label, pixels, sha in progress(gen, desc="synthetic phantoms", total=n, unit="img"):
            writer.add(split, synthetic_record(i, label, pixels, sha))
        manifest = writer.close(sources=[{"uri": cfg.sources[0], "layout": "synthetic", "seed": cfg.seed}])
    log.info("wrote %d synthetic images to %s (%s)", n, cfg.out, manifest.totals)
    return {"out": cfg.out, "images": n, "totals": manifest.totals, "classes": manifest.classes, "quarantined": 0}


def synthetic_record(i: int, label: int, pixels, sha: str) -> ImageRecord:
    return ImageRecord(pixels, label, synthetic.CLASSES[label], sha, f"synthetic/{i:06d}", sha)


# ---------------------------------------------------------------- real sources


@dataclass(frozen=True)
class Item:
    """One candidate image: which source, where in it, and what the layout says about it."""

    source: int
    name: str  # "<source name>/<path>", the row's ``source`` column; "...#frame=N" for a frame of a multi-frame file
    candidate: Candidate
    patient: str | None = None  # salted hash of the patient key (--labels patient column, else DICOM PatientID)


def run_sources(cfg: Config) -> dict:
    started = time.monotonic()
    class_map = parse_class_map(cfg.class_map)
    salt = patients.load_salt()
    settings = Settings(cfg.image_size, cfg.max_pixels, salt.value)
    label_file = labels.read(cfg.labels) if cfg.labels else None
    with contextlib.ExitStack() as stack:
        # every source is listed and checked (zip-slip, layout) before anything is read or written
        sources = [stack.enter_context(open_source(uri)) for uri in cfg.sources]
        _make_names_unique(sources)
        layouts = [resolve(s.uri, s.name, s.members, LABELS if label_file else cfg.layout, class_map) for s in sources]
        for s, lay in zip(sources, layouts):
            log.info("%s: layout %s, %d files, %d images, %d quarantined, %d ignored",
                     s.uri, lay.name, sum(not m.is_dir for m in s.members), len(lay.candidates),
                     len(lay.quarantine), lay.ignored)
        items = [Item(k, f"{s.name}/{c.path}", c)
                 for k, (s, lay) in enumerate(zip(sources, layouts)) for c in lay.candidates]
        quarantined = [e for lay in layouts for e in lay.quarantine]
        workers = cfg.workers or default_workers()
        with storage.output_dir(cfg.out) as tmp:
            spill = Spill(tmp / ".spill")
            try:
                files = decode_all(_reads(sources, items), len(items), settings, workers, spill)
                items, results, found = _images(items, files, label_file, class_map, salt.value)
                found["patients"]["salt"] = salt.origin
                if found["patients"]["images_with_key"] and not salt.lasts:
                    log.warning("patient keys are hashed with a random salt (no %s, no salt file): this run's "
                                "patient splits will differ from the next run's, and an --extends dataset's "
                                "patients are not found", patients.SALT_ENV)
                quarantined += [quarantine.Quarantined(items[i].name, r.kind, r.reason)
                                for i, r in sorted(results.items()) if isinstance(r, Failed)]
                kept = [i for i in range(len(items)) if isinstance(results[i], Decoded)]
                if not kept:
                    raise UserError(_nothing_usable(cfg, quarantined, found.get("labels")))
                _check_class_folders(sources, layouts, items, kept)
                plan = _plan(cfg, items, kept, results)
                manifest = _write(tmp, cfg, settings, items, results, plan, spill, sources, layouts, quarantined,
                                  found)
            finally:
                spill.close()
    seconds = time.monotonic() - started
    files = sum(not m.is_dir for s in sources for m in s.members)
    summary = {
        "out": cfg.out,
        "images": sum(manifest.totals.values()),
        "totals": manifest.totals,
        "classes": manifest.classes,
        "quarantined": len(quarantined),
        "quarantine": quarantine.counts(quarantined),
        "ignored": sum(lay.ignored for lay in layouts),
        "duplicates": manifest.duplicates["summary"],
        **found,
        "seconds": round(seconds, 2),
        "files": files,
        "files_per_s": round(files / max(seconds, 1e-9), 1),
    }
    if quarantined:
        log.warning("quarantined %d files (%s): listed with reasons in manifest.json quarantine", len(quarantined),
                    ", ".join(f"{n} {kind}" for kind, n in summary["quarantine"].items()))
    log.info("wrote %d images to %s in %.1f s (%s)", summary["images"], cfg.out, seconds, manifest.totals)
    return summary


def _make_names_unique(sources: list[Source]) -> None:
    seen: Counter = Counter()
    for s in sources:
        seen[s.name] += 1
        if seen[s.name] > 1:
            s.name = f"{s.name}#{seen[s.name]}"


def _reads(sources: list[Source], items: list[Item]):
    """A :class:`Read` for every item, source by source."""
    for k, source in enumerate(sources):
        index = {it.candidate.path: i for i, it in enumerate(items) if it.source == k}
        for r in source.read(list(index)):
            yield Read(index[r.path], r.data, r.error, r.path)


def _images(items: list[Item], files: dict[int, DecodedFile | Failed], label_file: labels.LabelFile | None,
            class_map: dict[str, str], salt: bytes) -> tuple[list[Item], dict[int, Decoded | Failed], dict]:
    """One item per image, from one per file: a multi-frame file becomes one item per frame, each takes its
    class from ``--labels`` when given (a decoded file no row names is quarantined as unlabelled) and its
    patient hash; plus the manifest's dicom, labels and patients sections (counts only)."""
    out: list[Item] = []
    results: dict[int, Decoded | Failed] = {}
    windowing: Counter = Counter()
    matched_by: Counter = Counter()
    matched_lines: set[int] = set()
    unlabelled = 0
    for it, r in ((it, files[i]) for i, it in enumerate(items)):
        meta = r.dicom if isinstance(r, DecodedFile) else None
        if label_file is not None:
            match = label_file.match(it.candidate.path, meta.sop_instance_uid if meta else None)
            if match is not None:
                row, column = match
                matched_lines.add(row.line)
                matched_by[column] += isinstance(r, DecodedFile)
                cls = canonical_class(row.label, class_map)
                it = replace(it, candidate=replace(it.candidate, class_name=cls),
                             patient=patients.patient_key(row.patient, salt))
            elif isinstance(r, DecodedFile):
                unlabelled += 1
                r = Failed(quarantine.UNLABELLED, f"no row of {label_file.uri} names its path or SOPInstanceUID")
        if isinstance(r, Failed):
            results[len(out)] = r
            out.append(it)
            continue
        patient = it.patient or (meta.patient if meta else None)
        if meta is not None:
            windowing[meta.windowing] += len(r.images)
        for k, d in enumerate(r.images, 1):
            results[len(out)] = d
            out.append(replace(it, name=it.name if len(r.images) == 1 else f"{it.name}#frame={k}", patient=patient))
    keyed = [it.patient for i, it in enumerate(out) if it.patient and isinstance(results[i], Decoded)]
    found: dict = {"patients": {"images_with_key": len(keyed), "distinct": len(set(keyed))}}
    if windowing:
        found["dicom"] = {"images": sum(windowing.values()), "windowing": dict(sorted(windowing.items()))}
    if label_file is not None:
        found["labels"] = labels.report(label_file, matched_lines, matched_by, unlabelled)
        _log_labels(found["labels"])
    return out, results, found


def _log_labels(report: dict) -> None:
    log.info("--labels %s: %d rows; files labelled by path %d, by SOPInstanceUID %d",
             report["file"], report["rows"], *report["files_matched_by"].values())
    if report["unmatched_rows"]:
        log.warning("--labels %s: %d rows name no file of the sources (lines %s%s)", report["file"],
                    report["unmatched_rows"], ", ".join(map(str, report["unmatched_lines"])),
                    ", ..." if report["unmatched_rows"] > len(report["unmatched_lines"]) else "")
    if report["unlabelled_files"]:
        log.warning("--labels %s: %d images have no row; quarantined as %s", report["file"],
                    report["unlabelled_files"], quarantine.UNLABELLED)


def _nothing_usable(cfg: Config, quarantined: list[quarantine.Quarantined], labels_found: dict | None) -> str:
    """Why a run kept no image at all, for the one-line error: a label file for other files, or all quarantined."""
    if labels_found and not labels_found["matched_rows"]:
        return (f"--labels {cfg.labels}: none of its {labels_found['rows']} rows names a file of "
                f"{', '.join(cfg.sources)} (by path or sop_instance_uid); is it the label file of another export?")
    kinds = ", ".join(f"{n} {kind}" for kind, n in quarantine.counts(quarantined).items())
    return f"{', '.join(cfg.sources)}: no usable images ({kinds or 'no image files'}); nothing was written to {cfg.out}"


def _check_class_folders(sources: list[Source], layouts: list[Layout], items: list[Item], kept: list[int]) -> None:
    """Every class folder must keep at least one image: an empty class is a mistake in the source."""
    found = Counter((items[i].source, items[i].candidate.class_dir) for i in kept)
    for k, (s, lay) in enumerate(zip(sources, layouts)):
        for folder in sorted(lay.class_dirs):
            if not found[(k, folder)]:
                raise UserError(f"{s.uri}: class folder {folder!r} has no usable images "
                                "(empty, or every file quarantined)")


@dataclass
class Plan:
    """What the second pass writes: the kept items (indices into items) with split, label, and what was removed."""

    kept: list[int]
    split_of: list[str]  # per kept position
    classes: list[str]
    groups: list[dedup.Group]  # member positions index ``kept``
    removed: dict[int, str]  # kept position -> reason
    summary: dict
    extends: dict | None  # what --extends kept, for the manifest
    reserved: list[tuple[str, str]]  # (class, split) that the reserve filled


def _plan(cfg: Config, items: list[Item], kept: list[int], results: dict) -> Plan:
    """Splits (group-aware), duplicate groups, and the --duplicates policy; nothing is written yet."""
    class_of = [items[i].candidate.class_name for i in kept]
    names = [items[i].name for i in kept]
    pixel_shas = [results[i].pixel_sha256 for i in kept]
    phashes = np.frombuffer(b"".join(results[i].phash for i in kept), np.uint8).reshape(len(kept), -1)
    groups, comp = dedup.find_groups(pixel_shas, phashes)

    previous, extends = _previous_splits(cfg, any(items[i].candidate.split is None for i in kept))
    patient_of = [items[i].patient for i in kept]
    places = [place(n) for n in names]
    unit_of = splits.units(comp, patient_of)
    fixed = [items[i].candidate.split for i in kept]
    assignment = splits.assign(pixel_shas, fixed, unit_of,
                               seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                               previous=previous, places=places, patient_of=patient_of, class_of=class_of)
    split_of = assignment.split_of
    for name, split in assignment.reserved:
        log.info("class %s drew no %s unit: its unit with the smallest position is %s (the reserve)", name, split,
                 split)
    if extends is not None:
        here = list(zip(pixel_shas, places))
        moved = [names[j] for j, key in enumerate(here) if key in previous and previous[key] != split_of[j]]
        if moved:  # assign() keeps every recorded image; only a layout that now calls its folder test outranks it
            log.warning("--extends %s: %d old images changed split, e.g. %s", cfg.extends, len(moved), moved[0])
        extends.update(kept=assignment.kept_from_previous, followed=assignment.followed_previous,
                       missing=len(set(previous) - set(here)), moved=len(moved))
        log.info("--extends %s: %d of its %d images kept their split, %d new copies followed them, %d are gone",
                 cfg.extends, extends["kept"], extends["images"], extends["followed"], extends["missing"])

    classes = sorted(set(class_of))
    in_training = {class_of[j] for j, s in enumerate(split_of) if s in ("train", "val")}
    if (missing := [c for c in classes if c not in in_training]) and not cfg.external:
        raise UserError(f"{', '.join(cfg.sources)}: class {', '.join(missing)} has no training images, "
                        "only test images")

    if not cfg.external:
        _check_every_class_split(cfg, class_of, split_of, unit_of, fixed, any(patient_of))
    comps = dedup.component_members(comp)
    crossing = [m for m in comps if len({split_of[j] for j in m}) > 1]
    conflicts = [m for m in comps if len({class_of[j] for j in m}) > 1]
    if cfg.duplicates == "fail" and crossing:
        a, b = crossing[0][0], next(j for j in crossing[0] if split_of[j] != split_of[crossing[0][0]])
        raise UserError(
            f"--duplicates fail: {len(crossing)} groups of duplicate images cross splits, "
            f"e.g. {names[a]} ({split_of[a]}) "
            f"and {names[b]} ({split_of[b]}); nothing was written to {cfg.out} (use --duplicates report or drop)"
        )
    removed = dedup.drop_plan(comps, split_of, class_of, names) if cfg.duplicates == "drop" else {}
    exact = [g for g in groups if g.kind == "exact"]
    near = [g for g in groups if g.kind == "near"]
    summary = {
        "exact_groups": len(exact),
        "exact_extra_copies": sum(len(g.members) - 1 for g in exact),
        "near_groups": len(near),
        "cross_split_exact_groups": sum(len({split_of[j] for j in g.members}) > 1 for g in exact),
        "cross_split_near_groups": sum(len({split_of[j] for j in g.members}) > 1 for g in near),
        "label_conflict_groups": len(conflicts),
        "removed": len(removed),
    }
    _warn(cfg, summary, len(crossing))
    return Plan(kept, split_of, classes, groups, removed, summary, extends, assignment.reserved)


def _check_every_class_split(cfg: Config, class_of: list[str], split_of: list[str], unit_of: np.ndarray,
                             fixed: list[str | None], by_patient: bool) -> None:
    """Exit 2 before anything is written when a class has no train, val or test images: a model never trained,
    selected or tested on one class has never been checked on it, and finetune would fail much later."""
    for name in sorted(set(class_of)):
        mine = [j for j, c in enumerate(class_of) if c == name]
        lacking = [s for s in SPLITS if s not in {split_of[j] for j in mine}]
        if not lacking:
            continue
        units = len({int(unit_of[j]) for j in mine})
        what = "a unit is a patient, or an image without a patient key" if by_patient else \
            "a unit is an image with its copies"
        if "test" in lacking and all(fixed[j] is not None for j in mine):
            fix = f"its source has a test folder with no {name} images: add some there"
        elif units < 3:
            fix = f"train, val and test need 3 or more; add {name} data"
        else:
            fix = f"so few units can draw badly (docs/ingestion.md); add {name} data, or try another --seed"
        raise UserError(f"{', '.join(cfg.sources)}: class {name} cannot be split: its {units} units ({what}) "
                        f"give no {' and no '.join(lacking)} images; {fix}. Nothing was written to {cfg.out}")


def place(source: str) -> str:
    """Where an image is in its source: a row's ``source`` without the source's own name, which can change
    from week to week (``week1.zip/Training/glioma/x.jpg`` and ``kaggle.zip/Training/glioma/x.jpg`` are one
    image)."""
    return source.partition("/")[2] or source


def _previous_splits(cfg: Config, carves_test: bool) -> tuple[dict[tuple[str, str], str], dict | None]:
    """(pixel hash, place) -> split of the ``--extends`` dataset, after checking it used this run's rule and
    settings."""
    if not cfg.extends:
        return {}, None
    folder = DatasetManifest.folder_of(cfg.extends)
    with storage.local_copy(folder) as root:
        manifest = load_manifest(root)
        rule = manifest.splits.get("rule")
        theirs = {k: manifest.splits.get(k) for k in ("seed", "val_fraction")}
        ours = {"seed": cfg.seed, "val_fraction": cfg.val_fraction}
        if carves_test and manifest.splits.get("test_fraction") is not None:
            theirs["test_fraction"], ours["test_fraction"] = manifest.splits["test_fraction"], cfg.test_fraction
        if rule not in splits.EXTENDABLE:
            raise UserError(f"--extends {cfg.extends}: its splits were assigned by {rule or 'a seeded shuffle'}, "
                            f"not {' or '.join(splits.EXTENDABLE)}, so they cannot be kept; ingest it again with "
                            "this version first")
        if theirs != ours:
            differ = ", ".join(f"{k} {theirs[k]} there, {ours[k]} here" for k in ours if theirs[k] != ours[k])
            raise UserError(f"--extends {cfg.extends}: split settings differ ({differ}); use the same ones")
        previous = {}
        for split in SPLITS:
            table = read_split(root, split, ["pixel_sha256", "source"])
            for sha, source in zip(table.column("pixel_sha256").to_pylist(), table.column("source").to_pylist()):
                previous[(sha, place(source))] = split
    info = {"dataset": cfg.extends, "manifest_sha256": manifest.origin.sha256 if manifest.origin else None,
            "images": len(previous)}
    return previous, info


def _warn(cfg: Config, summary: dict, crossing: int) -> None:
    if summary["exact_groups"] or summary["near_groups"]:
        log.warning(
            "duplicates: %d exact groups (%d extra copies), %d near-duplicate groups; %d duplicate sets cross splits%s",
            summary["exact_groups"], summary["exact_extra_copies"], summary["near_groups"], crossing,
            f"; removed {summary['removed']} images" if cfg.duplicates == "drop"
            else " (leakage into val/test: --duplicates drop removes it)" if crossing else "",
        )
    if summary["label_conflict_groups"]:
        log.warning("label conflicts: %d groups of the same image under different labels (manifest.json duplicates)",
                    summary["label_conflict_groups"])


def _write(tmp, cfg: Config, settings: Settings, items: list[Item], results: dict, plan: Plan, spill: Spill,
           sources: list[Source], layouts: list[Layout], quarantined: list[quarantine.Quarantined],
           found: dict) -> dict:
    """Second pass: the kept rows in sorted order, split by split, then the manifest (with ``found``:
    the dicom, labels and patients sections)."""
    label = {c: k for k, c in enumerate(plan.classes)}
    writer = DatasetWriter(tmp, plan.classes, cfg.image_size, describe(settings, dedup.NEAR_MAX_DISTANCE),
                           shard_max_bytes=SHARD_MAX_BYTES)
    written = Counter()
    bar = progress_bar("write shards", total=len(plan.kept) - len(plan.removed), unit="img")
    for split in SPLITS:
        for j in range(len(plan.kept)):
            if plan.split_of[j] == split and j not in plan.removed:
                it, d = items[plan.kept[j]], results[plan.kept[j]]
                cls = it.candidate.class_name
                writer.add(split, ImageRecord(spill.pixels(d), label[cls], cls, d.file_sha256, it.name, d.pixel_sha256,
                                              it.patient))
                written[it.source] += 1
                bar.update()
        writer.flush(split)
    bar.close()

    carved_test = sorted({sources[items[i].source].name for i in plan.kept if items[i].candidate.split is None})
    found["patients"].update(_patients_per_split(items, plan))
    return writer.close(
        sources=[
            {"uri": s.uri, "name": s.name, "layout": lay.name, "files": sum(not m.is_dir for m in s.members),
             "images": written[k], "quarantined": len(lay.quarantine) + sum(
                 1 for i, r in results.items() if items[i].source == k and isinstance(r, Failed)),
             "ignored": lay.ignored, "class_aliases": dict(sorted(lay.aliases.items()))}
            for k, (s, lay) in enumerate(zip(sources, layouts))
        ],
        splits={"rule": splits.RULE, "seed": cfg.seed, "val_fraction": cfg.val_fraction,
                "test_fraction": cfg.test_fraction if carved_test else None, "test_carved_from": carved_test,
                "method": "by content: each unit (a duplicate group, joined with every image of the same "
                          "patient key) gets its split from the sha256 of the seed and its anchor's pixel hash; a "
                          "class that draws no val or test unit gets its smallest-position unit there (reserved); "
                          "adding units moves an old one only out of a reserve, toward train; a unit is never split "
                          "across train/val/test, except by a test folder or by --extends keeping each old copy "
                          "where it was (listed as cross_split duplicate groups)",
                "reserved": [{"class": name, "split": split} for name, split in plan.reserved],
                **({"extends": plan.extends} if plan.extends else {})},
        duplicates=_duplicates_section(cfg, items, results, plan),
        quarantine=[e.to_json() for e in sorted(quarantined)],
        **found,
    )


def _patients_per_split(items: list[Item], plan: Plan) -> dict:
    """Distinct patient keys per split, and how many patients are in more than one (a test folder that
    shares patients with the training folder; assignment itself never splits a patient)."""
    splits_of: dict[str, set[str]] = {}
    for j, i in enumerate(plan.kept):
        if items[i].patient and j not in plan.removed:
            splits_of.setdefault(items[i].patient, set()).add(plan.split_of[j])
    several = sum(len(s) > 1 for s in splits_of.values())
    if several:
        log.warning("%d patients have images in more than one split: the source's own test folder shares them "
                    "with its training folder", several)
    return {"per_split": {split: sum(split in s for s in splits_of.values()) for split in SPLITS},
            "in_several_splits": several}


def _duplicates_section(cfg: Config, items: list[Item], results: dict, plan: Plan) -> dict:
    """The manifest's duplicate report: every group with its members, and what ``drop`` removed."""

    def member(j: int) -> dict:
        it = items[plan.kept[j]]
        return {"source": it.name, "split": plan.split_of[j], "class_name": it.candidate.class_name}

    def group(g: dedup.Group) -> dict:
        exact = {"pixel_sha256": results[plan.kept[g.members[0]]].pixel_sha256} if g.kind == "exact" else {}
        return {
            "kind": g.kind,
            "cross_split": len({plan.split_of[j] for j in g.members}) > 1,
            "label_conflict": len({items[plan.kept[j]].candidate.class_name for j in g.members}) > 1,
            **exact,
            "members": [member(j) for j in g.members],
        }

    return {
        "policy": cfg.duplicates,
        "near_max_hamming_distance": dedup.NEAR_MAX_DISTANCE,
        "summary": plan.summary,
        "groups": [group(g) for g in plan.groups],
        "removed": [{**member(j), "reason": reason} for j, reason in sorted(plan.removed.items())],
    }
