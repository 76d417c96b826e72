"""`entropy-ft ingest` on generated sources.

Layouts, quarantine, duplicates policy, zip-slip, determinism, exit codes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from imagefiles import encode, huge_png, imagefolder, make_tar, make_zip, phantom, phantom_file, write_tree
from PIL import Image

from entropy_ft import cli
from entropy_ft.data.format import load_manifest, read_split
from entropy_ft.errors import UserError
from entropy_ft.steps import ingest

SIZE = 32


def run(sources, out, **kw) -> dict:
    kw.setdefault("workers", 1)
    return ingest.run(ingest.Config(sources=tuple(str(s) for s in sources), out=str(out), image_size=SIZE, **kw))


def rows(out: Path) -> dict[str, dict[str, tuple[str, str]]]:
    """split -> {source: (class_name, split)} from the shards."""
    result = {}
    for split in ("train", "val", "test"):
        t = read_split(out, split, ["source", "class_name"]).to_pydict()
        result[split] = dict(zip(t["source"], t["class_name"]))
    return result


def file_listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_bad_files_are_quarantined_and_odd_modes_ingested(tmp_path):
    gray = phantom(900, "glioma")
    files = imagefolder(6)  # no test folder: test is carved
    files.update({
        "glioma/truncated.jpg": encode(gray, "JPEG")[:250],
        "glioma/zero.jpg": b"",
        "glioma/notes.jpg": b"not an image at all\n",
        "glioma/sixteen.png": encode((phantom(901, "glioma").astype(np.uint16) * 16)),
        "meningioma/cmyk.jpg": encode(cyan_cmyk(phantom(902, "meningioma")), "JPEG"),
        "pituitary/rgba.png": encode(Image.fromarray(phantom(903, "pituitary")).convert("RGBA")),
        "notumor/huge.png": huge_png(12_000, 12_000),
        "notumor/.ipynb_checkpoints/no_00000-checkpoint.png": phantom_file(904, "notumor"),
        "__MACOSX/glioma/._gl_00000.png": b"\x00\x05\x16\x07",
        "glioma/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "README.txt": b"hospital export\n",
        "stray.png": phantom_file(905, "glioma"),
    })
    src = write_tree(tmp_path / "export", files)
    out = tmp_path / "ds"
    summary = run([src], out)

    manifest = load_manifest(out)
    reasons = {e["file"].split("/", 1)[1]: e["kind"] for e in manifest.quarantine}
    assert reasons == {
        "glioma/truncated.jpg": "unreadable",
        "glioma/zero.jpg": "empty",
        "glioma/notes.jpg": "unreadable",
        "notumor/huge.png": "decompression-bomb",
        "notumor/.ipynb_checkpoints/no_00000-checkpoint.png": "hidden",
        "__MACOSX/glioma/._gl_00000.png": "hidden",
        "glioma/.DS_Store": "hidden",
        "README.txt": "not-image",
        "stray.png": "outside-layout",
    }
    assert summary["quarantined"] == 9 and summary["quarantine"]["hidden"] == 3
    written = {src: cls for split in rows(out).values() for src, cls in split.items()}
    assert len(written) == 4 * 6 + 3 == summary["images"]
    for name, cls in (("sixteen.png", "glioma"), ("cmyk.jpg", "meningioma"), ("rgba.png", "pituitary")):
        assert written[f"export/{cls}/{name}"] == cls
    assert manifest.sources[0]["layout"] == "imagefolder"
    assert manifest.splits["test_carved_from"] == ["export"]
    assert manifest.splits["rule"] == "content-hash-v2"
    assert all(n > 0 for n in manifest.counts["train"].values())  # at 7 images a class, val and test may lack one
    assert manifest.totals["val"] > 0 and manifest.totals["test"] > 0
    shapes = {}
    for split in ("train", "val", "test"):
        t = read_split(out, split, ["source", "height", "width", "channels"]).to_pylist()
        shapes.update({r["source"]: (r["height"], r["width"], r["channels"]) for r in t})
    assert shapes["export/meningioma/cmyk.jpg"] == (SIZE, SIZE, 3)  # colour stays colour
    assert shapes["export/pituitary/rgba.png"] == (SIZE, SIZE, 1)  # gray RGBA becomes one channel
    assert set(shapes.values()) <= {(SIZE, SIZE, 1), (SIZE, SIZE, 3)}


def cyan_cmyk(gray: np.ndarray) -> Image.Image:
    zero = Image.new("L", (gray.shape[1], gray.shape[0]))
    return Image.merge("CMYK", (Image.fromarray(gray), zero, zero, zero))


def test_brisc_layout_with_label_conflict_and_segmentation_ignored(tmp_path):
    codes = {"glioma": "gl", "meningioma": "me", "pituitary": "pi", "no_tumor": "nt"}
    files = {}
    for split, n in (("train", 5), ("test", 2)):
        for k, (folder, code) in enumerate(codes.items()):
            for i in range(n):
                idx = k * 100 + i + (50 if split == "test" else 0)
                cls = "notumor" if folder == "no_tumor" else folder
                name = f"brisc2025_{split}_{idx:05d}_{code}_ax_t1.jpg"
                files[f"brisc2025/classification_task/{split}/{folder}/{name}"] = phantom_file(idx, cls, "JPEG")
    wrong = "brisc2025/classification_task/train/glioma/brisc2025_train_00999_me_co_t1.jpg"
    files[wrong] = phantom_file(999, "meningioma", "JPEG")
    seg = "brisc2025/segmentation_task/train"
    files[f"{seg}/images/brisc2025_train_00001_gl_ax_t1.jpg"] = phantom_file(1, "glioma", "JPEG")
    files[f"{seg}/masks/brisc2025_train_00001_gl_ax_t1.png"] = encode(np.zeros((48, 48), np.uint8))
    src = make_zip(tmp_path / "brisc2025.zip", files)
    out = tmp_path / "ds"
    summary = run([src], out)

    manifest = load_manifest(out)
    assert manifest.sources[0]["layout"] == "brisc2025"
    assert manifest.classes == ["glioma", "meningioma", "notumor", "pituitary"]
    assert manifest.sources[0]["class_aliases"] == {"no_tumor": "notumor"}
    assert summary["ignored"] == 2
    [conflict] = manifest.quarantine
    assert conflict["file"] == f"brisc2025.zip/{wrong}" and conflict["kind"] == "label-conflict"
    assert "file name says meningioma, folder says glioma" in conflict["reason"]
    assert manifest.counts["test"] == {c: 2 for c in manifest.classes}  # the source's test split stays test
    assert {c: manifest.counts["train"][c] + manifest.counts["val"][c] for c in manifest.classes} == {
        c: 5 for c in manifest.classes}


def test_kaggle_layout_in_a_tar_and_forced_layouts(tmp_path):
    files = {**imagefolder(4, split="Training"), **imagefolder(2, start=500, split="Testing")}
    src = make_tar(tmp_path / "kaggle.tar.gz", {f"wrapped/{k}": v for k, v in files.items()})
    out = tmp_path / "ds"
    run([src], out)
    assert load_manifest(out).sources[0]["layout"] == "kaggle"
    assert load_manifest(out).totals["test"] == 8

    folder = write_tree(tmp_path / "plain", imagefolder(4))
    with pytest.raises(UserError, match="--layout kaggle expects Training/ and Testing/"):
        run([folder], tmp_path / "x", layout="kaggle")
    with pytest.raises(UserError, match="--layout brisc2025"):
        run([folder], tmp_path / "x", layout="brisc2025")
    assert not (tmp_path / "x").exists()


def duplicates_source(tmp_path: Path) -> Path:
    """Train/test folders with: an exact copy across splits (re-encoded, other bytes), a near copy across
    splits (brighter), an exact copy within train, and one image under two labels."""
    files = {**imagefolder(8, split="train"), **imagefolder(3, start=500, split="test")}
    a, b, c, d = (phantom(i, "glioma") for i in (0, 1, 2, 3))
    files["test/glioma/exact_of_0.png"] = encode(a, compress_level=1)
    files["test/glioma/near_of_1.png"] = encode(np.clip(b.astype(int) * 1.1 + 5, 0, 255).astype(np.uint8))
    files["train/glioma/x_copy_of_2.png"] = encode(c, compress_level=1)
    files["train/meningioma/relabelled_3.png"] = encode(d)
    return write_tree(tmp_path / "dups", files)


def test_duplicates_report_drop_and_fail(tmp_path):
    src = duplicates_source(tmp_path)
    out = tmp_path / "report"
    summary = run([src], out)
    d = load_manifest(out).duplicates
    assert d["policy"] == "report" and summary["images"] == 4 * 11 + 4 and not d["removed"]
    s = d["summary"]
    assert (s["exact_groups"], s["exact_extra_copies"], s["near_groups"]) == (3, 3, 1)
    assert (s["cross_split_exact_groups"], s["cross_split_near_groups"], s["label_conflict_groups"]) == (1, 1, 1)
    by_members = {tuple(sorted(m["source"].split("/", 1)[1] for m in g["members"])): g for g in d["groups"]}
    assert by_members[("test/glioma/exact_of_0.png", "train/glioma/gl_00000.png")]["cross_split"]
    assert by_members[("test/glioma/near_of_1.png", "train/glioma/gl_00001.png")]["kind"] == "near"
    within = by_members[("train/glioma/gl_00002.png", "train/glioma/x_copy_of_2.png")]
    assert len({m["split"] for m in within["members"]}) == 1  # val carving keeps copies together
    assert by_members[("train/glioma/gl_00003.png", "train/meningioma/relabelled_3.png")]["label_conflict"]

    out = tmp_path / "drop"
    run([src], out, duplicates="drop")
    d = load_manifest(out).duplicates
    removed = {r["source"].split("/", 1)[1] for r in d["removed"]}
    assert removed == {"test/glioma/exact_of_0.png", "test/glioma/near_of_1.png", "train/glioma/x_copy_of_2.png",
                       "train/glioma/gl_00003.png", "train/meningioma/relabelled_3.png"}
    kept = {s.split("/", 1)[1] for split in rows(out).values() for s in split}
    assert not removed & kept and {"train/glioma/gl_00000.png", "train/glioma/gl_00001.png"} <= kept
    assert d["summary"]["removed"] == 5

    out = tmp_path / "fail"
    out.mkdir()
    (out / "keep.txt").write_text("earlier output")
    with pytest.raises(UserError, match="--duplicates fail: 2 groups of duplicate images cross splits"):
        run([src], out, duplicates="fail")
    assert file_listing(out) == {"keep.txt"}  # nothing written, earlier output untouched


def test_reingest_is_byte_identical_and_does_not_depend_on_workers(tmp_path):
    src = make_zip(tmp_path / "src.zip", {**imagefolder(6, split="train"), **imagefolder(2, start=700, split="test")})
    out = tmp_path / "ds"
    run([src], out, workers=2)
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.parquet")}
    first_manifest = (out / "manifest.json").read_bytes()
    run([src], out, workers=1)  # same --out: replaced cleanly
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.parquet")} == first
    assert (out / "manifest.json").read_bytes() == first_manifest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")]  # no staging left behind
    other = tmp_path / "seed1"
    run([src], other, seed=1)
    assert load_manifest(other).counts["test"] == load_manifest(out).counts["test"]  # the test folder is fixed
    assert rows(other)["val"] != rows(out)["val"]  # another seed draws other val images from the same pool


def test_sources_merge_with_a_source_column_and_cross_source_duplicates(tmp_path):
    a = make_zip(tmp_path / "hospital-a.zip", imagefolder(5, split="train") | imagefolder(2, start=300, split="test"))
    b_files = imagefolder(5, start=600)
    b_files["no_tumor/copy_from_a.png"] = phantom_file(2000, "notumor")  # a's notumor/no_02000 under another name
    b = write_tree(tmp_path / "hospital-b", b_files)
    out = tmp_path / "ds"
    run([a, b], out)
    manifest = load_manifest(out)
    assert [s["name"] for s in manifest.sources] == ["hospital-a.zip", "hospital-b"]
    assert manifest.classes == ["glioma", "meningioma", "notumor", "pituitary"]
    sources = {s.split("/", 1)[0] for split in rows(out).values() for s in split}
    assert sources == {"hospital-a.zip", "hospital-b"}
    [group] = [g for g in manifest.duplicates["groups"] if g["kind"] == "exact"]
    assert {m["source"] for m in group["members"]} == {"hospital-a.zip/train/notumor/no_02000.png",
                                                       "hospital-b/no_tumor/copy_from_a.png"}
    assert manifest.splits["test_carved_from"] == ["hospital-b"]


@pytest.mark.parametrize("member", ["../evil.png", "/tmp/entropy-ft-evil.png", "ok/../../evil.png"])
def test_zip_slip_members_reject_the_archive_before_anything_is_written(tmp_path, member):
    files = imagefolder(3)
    files[member] = phantom_file(1, "glioma")
    (tmp_path / "src").mkdir()
    src = make_zip(tmp_path / "src" / "evil.zip", files)
    before = file_listing(tmp_path)
    with pytest.raises(UserError, match="zip-slip"):
        run([src], tmp_path / "work" / "ds")
    assert file_listing(tmp_path) == before  # no --out, no staging folder, nothing extracted
    assert not Path("/tmp/entropy-ft-evil.png").exists()


def test_tar_link_pointing_outside_is_rejected(tmp_path):
    src = make_tar(tmp_path / "links.tar.gz", imagefolder(3), links={"glioma/escape.png": "../../etc/passwd"})
    with pytest.raises(UserError, match="points outside"):
        run([src], tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_folder_symlink_outside_is_quarantined(tmp_path):
    src = write_tree(tmp_path / "src", imagefolder(3))
    (tmp_path / "secret.png").write_bytes(phantom_file(5, "glioma"))
    (src / "glioma" / "link.png").symlink_to(tmp_path / "secret.png")
    run([src], tmp_path / "ds")
    [entry] = load_manifest(tmp_path / "ds").quarantine
    assert entry["file"] == "src/glioma/link.png" and "outside the source" in entry["reason"]


def cli_error(capsys, *argv: str) -> str:
    assert cli.main(["ingest", *argv, "--image-size", str(SIZE), "--workers", "1"]) == 2
    return capsys.readouterr().err


def test_bad_sources_exit_2_naming_the_path(tmp_path, capsys):
    out = str(tmp_path / "ds")
    empty_class = write_tree(tmp_path / "empty-class", imagefolder(3))
    (empty_class / "pituitary_new").mkdir()
    assert "class folder 'pituitary_new' has no usable images" in cli_error(capsys, str(empty_class), "--out", out)

    broken_class = write_tree(tmp_path / "broken-class", {**imagefolder(3), "meningioma/x/bad.jpg": b"",
                                                          "yes/a.jpg": b"", "yes/b.png": b"junk"})
    err = cli_error(capsys, str(broken_class), "--out", out)
    assert f"{broken_class}: class folder 'yes' has no usable images" in err

    docs = make_zip(tmp_path / "with-docs.zip", {**imagefolder(3), "docs/readme.txt": b"how we exported"})
    assert f"{docs}: class folder 'docs' has no usable images" in cli_error(capsys, str(docs), "--out", out)

    flat = write_tree(tmp_path / "flat", {f"img{i}.png": phantom_file(i, "glioma") for i in range(4)})
    assert f"{flat}: no recognisable layout" in cli_error(capsys, str(flat), "--out", out)

    (tmp_path / "nothing").mkdir()
    assert f"{tmp_path / 'nothing'}: empty source" in cli_error(capsys, str(tmp_path / "nothing"), "--out", out)
    empty_zip = make_zip(tmp_path / "empty.zip", {})
    assert f"{empty_zip}: empty source" in cli_error(capsys, str(empty_zip), "--out", out)
    whole = make_zip(tmp_path / "whole.zip", imagefolder(3)).read_bytes()
    for name in ("half.zip", "half.bin"):  # a broken download, and the same bytes under a name that says nothing
        (tmp_path / name).write_bytes(whole[: len(whole) // 2])
        assert f"{tmp_path / name}: corrupt zip archive (truncated" in cli_error(capsys, str(tmp_path / name),
                                                                                 "--out", out)
    (tmp_path / "notes.bin").write_bytes(b"not an archive")
    assert "notes.bin: not a folder, .zip or .tar archive" in cli_error(capsys, str(tmp_path / "notes.bin"),
                                                                        "--out", out)
    texts = write_tree(tmp_path / "texts", {"a/readme.txt": b"x"})
    assert f"{texts}: no image files" in cli_error(capsys, str(texts), "--out", out)
    assert f"{tmp_path / 'missing'}: no such file" in cli_error(capsys, str(tmp_path / "missing"), "--out", out)
    with pytest.raises(UserError, match="--duplicates maybe"):
        ingest.Config(sources=(str(flat),), out=out, duplicates="maybe")
    assert not Path(out).exists()


def test_a_binary_yes_no_source_means_tumor_and_notumor(tmp_path):
    """Folders yes/ and no/ and nothing else: a tumour-or-not dataset. ``no`` is notumor, so ``yes`` is tumor;
    a ``yes`` folder beside other class folders says nothing about tumours and keeps its name."""
    binary = {f"{folder}/{i}.png": phantom_file(k * 100 + i, cls)
              for k, (folder, cls) in enumerate([("yes", "glioma"), ("No", "notumor")]) for i in range(5)}
    run([write_tree(tmp_path / "binary", binary)], tmp_path / "ds")
    manifest = load_manifest(tmp_path / "ds")
    assert manifest.classes == ["notumor", "tumor"]
    written = {src: cls for split in rows(tmp_path / "ds").values() for src, cls in split.items()}
    assert {cls for src, cls in written.items() if src.startswith("binary/yes/")} == {"tumor"}
    assert manifest.sources[0]["class_aliases"] == {"No": "notumor", "yes": "tumor"}

    mixed = {**imagefolder(6), **{f"yes/{i}.png": phantom_file(700 + i, "glioma") for i in range(6)}}
    run([write_tree(tmp_path / "mixed", mixed)], tmp_path / "ds-mixed")
    assert load_manifest(tmp_path / "ds-mixed").classes == ["glioma", "meningioma", "notumor", "pituitary", "yes"]


def test_cli_prints_one_json_summary(tmp_path, capsys):
    src = write_tree(tmp_path / "src", {**imagefolder(4, split="train"), **imagefolder(1, start=50, split="test"),
                                         "train/glioma/.DS_Store": b"x"})
    assert cli.main(["ingest", str(src), "--out", str(tmp_path / "ds"), "--image-size", "32",
                     "--class-map", "notumor=healthy", "--workers", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["classes"] == ["glioma", "healthy", "meningioma", "pituitary"]
    assert summary["quarantined"] == 1 and summary["images"] == 20
    assert Counter(summary["totals"]) == Counter(load_manifest(tmp_path / "ds").totals)


def test_growing_data_keeps_old_splits_and_new_copies_follow_them(tmp_path):
    week1 = imagefolder(10)  # no test folder: test is assigned too
    run([write_tree(tmp_path / "week1", week1)], tmp_path / "ds1")
    before = {src.split("/", 1)[1]: split for split, found in rows(tmp_path / "ds1").items() for src in found}

    week2 = dict(week1) | imagefolder(10, start=500)
    run([write_tree(tmp_path / "week2-plain", week2)], tmp_path / "ds2-plain")
    plain = {src.split("/", 1)[1]: split for split, found in rows(tmp_path / "ds2-plain").items() for src in found}
    # new images of their own move an old one only out of a reserve, toward train, even without --extends
    reserved = {(r["class"], r["split"]) for r in load_manifest(tmp_path / "ds1").splits["reserved"]}
    moved = [p for p in before if plain[p] != before[p]]
    rank = {"train": 0, "val": 1, "test": 2}
    assert all((p.split("/")[0], before[p]) in reserved and rank[plain[p]] < rank[before[p]] for p in moved)

    for path in week1:  # a near copy of every old image (one pixel brighter: other pixel hash, same pHash)
        cls = path.split("/")[0]
        pixels = phantom(int(path.rsplit("_", 1)[1][:5]), cls).copy()
        pixels[0, 0] += 1
        week2[path.replace(".png", "_copy.png")] = encode(pixels)
    summary = run([write_tree(tmp_path / "week2", week2)], tmp_path / "ds2", extends=str(tmp_path / "ds1"))
    after = {src.split("/", 1)[1]: split for split, found in rows(tmp_path / "ds2").items() for src in found}
    assert {p: after[p] for p in before} == before
    assert all(after[p.replace(".png", "_copy.png")] == before[p] for p in before)
    extends = load_manifest(tmp_path / "ds2").splits["extends"]
    assert extends["kept"] == extends["images"] == len(week1) and extends["followed"] == len(week1)
    assert extends["missing"] == 0 and summary["images"] == 3 * len(week1)

    with pytest.raises(UserError, match=r"--extends .*seed 0 there, 1 here"):
        run([tmp_path / "week2"], tmp_path / "ds3", extends=str(tmp_path / "ds1"), seed=1)
    with pytest.raises(UserError, match="not a dataset"):
        run([tmp_path / "week2"], tmp_path / "ds3", extends=str(tmp_path / "week1"))
