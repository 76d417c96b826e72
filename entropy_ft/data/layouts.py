"""How a source is organised, and what label and split each of its images gets.

Three layouts, detected from the member paths (or forced with ``--layout``):

* ``kaggle``: ``Training/`` and ``Testing/`` with the class folders ``glioma``, ``meningioma``,
  ``notumor``, ``pituitary`` (the "Brain Tumor MRI Dataset" archive);
* ``brisc2025``: ``classification_task/{train,test}/<class>/brisc2025_<split>_<index>_<code>_<plane>_t1.jpg``;
  the code in the file name must agree with the folder, and ``segmentation_task/`` is not for
  classification, so it is ignored (counted, not quarantined);
* ``imagefolder``: class folders, optionally under ``train``/``test`` folders (any case, also
  ``Training``/``Testing``; a ``val``/``validation`` folder counts as training data, because
  validation is always carved from training). Without a test folder, the test split is carved.

With ``ingest --labels`` the layout is ``labels``: classes come from the label file, folders
give only the split (``train``/``test`` folders as for imagefolder), and an image may sit anywhere.

Images are files with an image extension, ``.dcm``, or no extension at all (or a numeric one),
because DICOM exports name files ``IM000001`` or by their UID; decoding then tells DICOM from
anything else (:func:`entropy_ft.data.preprocess.decode_file`). Extension-less files shape the
layout only in a source that has no other images, so a stray ``LICENSE`` does not move its root.

The layout starts at the deepest folder shared by every image, so an archive that wraps
everything in one top folder works the same as one that does not. Class names are mapped to
one canonical set (``no_tumor``, ``no`` and ``notumor`` are one class) so that datasets merge;
in a binary source, whose class folders are just ``yes`` and ``no``, ``yes`` is ``tumor``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from entropy_ft.data import quarantine as q
from entropy_ft.data.dicom import EXTENSION as DICOM_EXTENSION
from entropy_ft.data.dicom import named_like_dicom
from entropy_ft.data.sources import Member
from entropy_ft.errors import UserError

LAYOUTS = ("auto", "kaggle", "brisc2025", "imagefolder")
LABELS = "labels"  # the layout when classes come from ``--labels``, not folders
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm", ".pbm", ".pnm"}
)
KAGGLE_CLASSES = frozenset({"glioma", "meningioma", "notumor", "pituitary"})
TRAIN_DIRS = frozenset({"train", "training", "val", "valid", "validation"})
TEST_DIRS = frozenset({"test", "testing"})
BRISC_TASK = "classification_task"
BRISC_NAME = re.compile(r"brisc2025_(?:train|test)_\d{5}_(gl|me|pi|nt|no)_(?:ax|co|sa)_t1\.", re.IGNORECASE)
BRISC_CODES = {"gl": "glioma", "me": "meningioma", "pi": "pituitary", "nt": "notumor", "no": "notumor"}

# normalised folder name (lower case, letters and digits only) -> canonical class
CLASS_ALIASES = {
    **{k: "glioma" for k in ("glioma", "gliomatumor", "gliomatumour")},
    **{k: "meningioma" for k in ("meningioma", "meningiomatumor", "meningiomatumour")},
    **{k: "pituitary" for k in ("pituitary", "pituitarytumor", "pituitarytumour")},
    **{k: "notumor" for k in ("notumor", "notumour", "no", "normal", "healthy")},
}
# Only in a binary source, whose class folders are exactly yes/ and no/ (tumour or not): there ``no`` is
# ``notumor`` as everywhere, so ``yes`` is ``tumor``. Elsewhere a ``yes`` folder keeps its name.
BINARY_FOLDERS = frozenset({"yes", "no"})
BINARY_ALIASES = {"yes": "tumor"}


@dataclass(frozen=True)
class Candidate:
    """An image file the layout gives a class (and maybe a split) to."""

    path: str
    class_name: str
    split: str | None  # "train" or "test"; None when the source has no test folder and test is carved
    class_dir: str  # the folder the label comes from


@dataclass
class Layout:
    name: str
    candidates: list[Candidate] = field(default_factory=list)
    quarantine: list[q.Quarantined] = field(default_factory=list)
    ignored: int = 0  # files outside the classification part of the layout (BRISC2025 segmentation_task)
    class_dirs: dict[str, str] = field(default_factory=dict)  # every class folder, empty ones too -> class
    aliases: dict[str, str] = field(default_factory=dict)  # folder name -> canonical class, where they differ


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def parse_class_map(entries: Iterable[str]) -> dict[str, str]:
    """``--class-map FROM=TO[,FROM=TO...]`` (repeatable) -> {normalised FROM: TO}."""
    mapping: dict[str, str] = {}
    for entry in entries:
        for pair in filter(None, (p.strip() for p in entry.split(","))):
            src, sep, dst = pair.partition("=")
            if not sep or not _key(src) or not dst.strip():
                raise UserError(f"--class-map {pair!r}: expected FROM=TO, as in --class-map yes=tumor")
            mapping[_key(src)] = dst.strip()
    return mapping


def canonical_class(folder: str, class_map: Mapping[str, str], binary: bool = False) -> str:
    """The class a folder name stands for: --class-map first, then the built-in aliases (with ``binary``, those
    of a yes/no source too), else the name itself."""
    key = _key(folder)
    if key in class_map:
        return class_map[key]
    if binary and key in BINARY_ALIASES:
        return BINARY_ALIASES[key]
    return CLASS_ALIASES.get(key) or re.sub(r"[^a-z0-9]+", "_", folder.lower()).strip("_") or folder


def is_image_name(path: str) -> bool:
    """An image extension or ``.dcm``: a file that is an image by its name."""
    ext = posixpath.splitext(path)[1].lower()
    return ext in IMAGE_EXTENSIONS or ext == DICOM_EXTENSION


def is_hidden(path: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.split("/"))


def _common_dir(paths: list[str]) -> list[str]:
    """Components of the deepest folder that contains every path."""
    split = [p.split("/")[:-1] for p in paths]
    common: list[str] = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return common


def detect(image_paths: list[str]) -> str:
    """The layout these image paths follow."""
    if any(BRISC_TASK in (c.lower() for c in p.split("/")[:-1]) for p in image_paths):
        return "brisc2025"
    depth = len(_common_dir(image_paths))
    tops = {p.split("/")[depth].lower() for p in image_paths if len(p.split("/")) > depth + 2}
    folders = {p.split("/")[depth + 1] for p in image_paths if len(p.split("/")) > depth + 2}
    if {"training", "testing"} <= tops and folders <= KAGGLE_CLASSES:
        return "kaggle"
    return "imagefolder"


_OUTSIDE: tuple[str | None, list[str]] = ("outside", [])  # inside the layout's scope but not in a class folder


class _Mapper:
    """Turns one member path into a Candidate or a quarantine entry, for one source and layout."""

    def __init__(self, uri: str, name: str, layout: str, image_paths: list[str], class_map: Mapping[str, str]) -> None:
        self.uri, self.name, self.layout, self.class_map = uri, name, layout, class_map
        self.result = Layout(layout)
        self.binary = False
        if layout == "brisc2025":
            self.root: list[str] = []
            self.split_mode, self.has_test = True, True
            return
        self.root = _common_dir(image_paths)
        depth = len(self.root)
        tops = {p.split("/")[depth].lower() for p in image_paths if len(p.split("/")) > depth + 1}
        self.split_mode = bool(tops & (TRAIN_DIRS | TEST_DIRS))
        self.has_test = bool(tops & TEST_DIRS)
        if layout == "kaggle" and not (self.split_mode and {"training", "testing"} <= tops):
            found = ", ".join(sorted(tops)) or "no folders"
            raise UserError(
                f"{uri}: --layout kaggle expects Training/ and Testing/ folders of class folders; found {found}"
            )
        if layout == "imagefolder":
            levels = (self.class_level(p.split("/")[:-1]) for p in image_paths)
            self.binary = {_key(lv[1][-1]) for lv in levels if lv is not _OUTSIDE and lv[1]} == BINARY_FOLDERS

    def quarantine(self, path: str, kind: str, reason: str) -> None:
        self.result.quarantine.append(q.Quarantined(f"{self.name}/{path}", kind, reason))

    def class_for(self, folder_path: str) -> str:
        folder = posixpath.basename(folder_path)
        cls = canonical_class(folder, self.class_map, self.binary)
        self.result.class_dirs.setdefault(folder_path, cls)
        if cls != folder:
            self.result.aliases[folder] = cls
        return cls

    def class_level(self, parts: list[str]) -> tuple[str | None, list[str]] | None:
        """(split, class folder components) for the folders of a file; None when the layout ignores
        that part of the source, _OUTSIDE when the file is in scope but not in a class folder."""
        if self.layout == "brisc2025":
            lowered = [c.lower() for c in parts]
            if BRISC_TASK not in lowered:
                return None
            i = lowered.index(BRISC_TASK)
            if len(parts) < i + 3 or lowered[i + 1] not in ("train", "test"):
                return _OUTSIDE
            return lowered[i + 1], parts[: i + 3]
        if parts[: len(self.root)] != self.root:
            return _OUTSIDE
        rest = parts[len(self.root) :]
        if self.layout == LABELS:  # any folder; a train/test folder gives the split
            top = rest[0].lower() if rest else ""
            if top in TEST_DIRS | TRAIN_DIRS:
                return "test" if top in TEST_DIRS else ("train" if self.has_test else None), []
            return _OUTSIDE if self.split_mode else (None, [])
        if not self.split_mode:
            return (None, parts[: len(self.root) + 1]) if rest else _OUTSIDE
        if len(rest) < 2 or rest[0].lower() not in TRAIN_DIRS | TEST_DIRS:
            return _OUTSIDE
        split = "test" if rest[0].lower() in TEST_DIRS else ("train" if self.has_test else None)
        return split, parts[: len(self.root) + 2]

    def add_dir(self, path: str) -> None:
        """Remember class folders that may turn out empty."""
        if is_hidden(path):
            return
        parts = path.split("/")
        level = self.class_level(parts)
        if level is not None and level is not _OUTSIDE and level[1] == parts:
            self.class_for(path)

    def add_file(self, member: Member) -> None:
        path = member.path
        parts = path.split("/")
        if is_hidden(path):
            return self.quarantine(path, q.HIDDEN, "hidden file or folder")
        level = self.class_level(parts[:-1])
        if level is None:
            self.result.ignored += 1
            return None
        if member.problem:
            return self.quarantine(path, q.NOT_A_FILE, member.problem)
        if not (is_image_name(path) or named_like_dicom(path)):
            ext = posixpath.splitext(path)[1].lower()
            return self.quarantine(path, q.NOT_IMAGE, f"not an image file (extension {ext!r})")
        if level is _OUTSIDE:
            return self.quarantine(path, q.OUTSIDE_LAYOUT, f"not inside a class folder of the {self.layout} layout")
        split, folder = level
        if self.layout == LABELS:
            self.result.candidates.append(Candidate(path, "", split, ""))  # the class comes from the label file
            return None
        class_dir = "/".join(folder)
        cls = self.class_for(class_dir)
        if self.layout == "brisc2025" and (m := BRISC_NAME.match(parts[-1])):
            named = canonical_class(BRISC_CODES[m.group(1).lower()], self.class_map)
            if named != cls:
                reason = f"label conflict: file name says {named}, folder says {cls}"
                return self.quarantine(path, q.LABEL_CONFLICT, reason)
        self.result.candidates.append(Candidate(path, cls, split, class_dir))
        return None


def resolve(uri: str, name: str, members: list[Member], layout: str, class_map: Mapping[str, str]) -> Layout:
    """Label every member of one source (``layout`` LABELS: give only splits); a source with no images or no
    recognisable layout is a UserError."""
    files = [m for m in members if not m.is_dir]
    if not files:
        raise UserError(f"{uri}: empty source (no files)")
    visible = [m.path for m in files if not is_hidden(m.path) and not m.problem]
    images = [p for p in visible if is_image_name(p)] or [p for p in visible if named_like_dicom(p)]
    if not images:
        raise UserError(f"{uri}: no image files (of {len(files)} files, none is a visible .jpg/.png/.dcm/... image "
                        "or a file without an extension)")
    chosen = detect(images) if layout == "auto" else layout
    if chosen == "brisc2025" and not any(BRISC_TASK in (c.lower() for c in p.split("/")) for p in images):
        raise UserError(
            f"{uri}: --layout brisc2025 expects classification_task/{{train,test}}/<class>/ folders; none found"
        )
    mapper = _Mapper(uri, name, chosen, images, class_map)
    folders = {m.path for m in members if m.is_dir}
    folders |= {"/".join(m.path.split("/")[:k]) for m in files for k in range(1, m.path.count("/") + 1)}
    for folder in sorted(folders):  # archives need not list folders; a class folder may hold no image at all
        mapper.add_dir(folder)
    for m in files:
        mapper.add_file(m)
    result = mapper.result
    if not result.candidates:
        raise UserError(
            f"{uri}: no recognisable layout: expected class folders (optionally under train/ and test/), "
            f"Kaggle Training/ and Testing/, or BRISC2025 classification_task/; images found at e.g. {images[0]!r}"
        )
    return result
