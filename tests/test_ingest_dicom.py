"""`entropy-ft ingest` on hospital-style sources: DICOM mixed with JPEG, labels from a CSV file,
patient keys that are hashed and never written raw."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import stat
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
from dicomfiles import (
    SYNTAX_VARIANTS,
    instance_uid,
    mr,
    pilot_cohort,
    shipped,
    unsupported_syntax,
    without_pixels,
)
from imagefiles import imagefolder, make_tar, phantom_file, write_tree
from pydicom.uid import RLELossless

from entropy_ft import cli
from entropy_ft.data.format import load_manifest, read_split
from entropy_ft.data.patients import NO_SALT_FILE_ENV, SALT_ENV, salt_file
from entropy_ft.steps import ingest

SIZE = 32
SALT = "test-salt"
PATIENT = "HOSP-0042"  # a PatientID no artifact may contain


def run(sources, out, **kw) -> dict:
    kw.setdefault("workers", 1)
    return ingest.run(ingest.Config(sources=tuple(str(s) for s in sources), out=str(out), image_size=SIZE, **kw))


def hashed(key: str) -> str:
    return hmac.new(SALT.encode(), key.encode(), hashlib.sha256).hexdigest()


def all_rows(out) -> dict[str, dict]:
    """source -> row (class_name, patient, split) over every split."""
    rows = {}
    for split in ("train", "val", "test"):
        for r in read_split(out, split, ["source", "class_name", "patient"]).to_pylist():
            rows[r["source"]] = {**r, "split": split}
    return rows


def artifact_text(out) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())


def test_mixed_dicom_and_jpeg_folder(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(SALT_ENV, SALT)
    files = imagefolder(6, fmt="JPEG")
    files.update({f"glioma/syntax/{name}": shipped(name) for name in SYNTAX_VARIANTS})  # one slice, six encodings
    files.update({
        "glioma/series7/IM000001": mr(11, patient=PATIENT),  # extension-less, DICM preamble
        "meningioma/mono1.dcm": mr(12, patient=PATIENT, PhotometricInterpretation="MONOCHROME1"),
        "pituitary/volume.dcm": mr(20, patient="HOSP-0043", frames=3, syntax=RLELossless),
        "notumor/colour.dcm": shipped("SC_rgb_jpeg_dcmtk.dcm"),
        "glioma/truncated.dcm": shipped("MR_truncated.dcm"),
        "glioma/mpeg2.dcm": unsupported_syntax(),
        "meningioma/report.dcm": without_pixels(),
        "notumor/LICENSE": b"not an image, no extension\n",
    })
    out = tmp_path / "ds"
    with caplog.at_level(logging.INFO):
        summary = run([write_tree(tmp_path / "export", files)], out)

    manifest = load_manifest(out)
    expected = {"glioma/truncated.dcm": "dicom-truncated", "glioma/mpeg2.dcm": "dicom-unsupported-syntax",
                "meningioma/report.dcm": "dicom-no-pixel-data", "notumor/LICENSE": "not-image"}
    assert {e["file"]: e["kind"] for e in manifest.quarantine} == {f"export/{k}": v for k, v in expected.items()}
    assert summary["quarantine"] == {"not-image": 1, "dicom-truncated": 1, "dicom-unsupported-syntax": 1,
                                     "dicom-no-pixel-data": 1}
    rows = all_rows(out)
    assert len(rows) == summary["images"] == 24 + 6 + 1 + 1 + 3 + 1
    assert {f"export/pituitary/volume.dcm#frame={k}" for k in (1, 2, 3)} <= set(rows)
    assert rows["export/glioma/series7/IM000001"]["class_name"] == "glioma"
    assert rows["export/meningioma/mono1.dcm"]["patient"] == hashed(PATIENT)
    assert rows["export/pituitary/volume.dcm#frame=2"]["patient"] == hashed("HOSP-0043")
    assert rows["export/glioma/gl_00000.jpeg"]["patient"] is None
    assert manifest.dicom == {"images": 6 + 1 + 1 + 3 + 1, "windowing": {"colour": 1, "window": 11}}
    # every DICOM image has a PatientID: the six encodings (one patient), ours (two), the colour file's
    assert {k: manifest.patients[k] for k in ("images_with_key", "distinct", "salt")} == {
        "images_with_key": 12, "distinct": 4, "salt": SALT_ENV}
    assert sum(manifest.patients["per_split"].values()) == 4 and manifest.patients["in_several_splits"] == 0

    # the six encodings of one slice decode to the same pixels: one exact-duplicate group
    [group] = [g for g in manifest.duplicates["groups"] if g["kind"] == "exact"]
    assert sorted(m["source"] for m in group["members"]) == sorted(f"export/glioma/syntax/{n}" for n in SYNTAX_VARIANTS)

    # no header value anywhere: not in the shards, the manifest, the summary or the log
    written = artifact_text(out) + json.dumps(summary).encode() + caplog.text.encode()
    for secret in (PATIENT, "4MR1", instance_uid(11), SALT):  # 4MR1: MR_small's own PatientID
        assert secret.encode() not in written, secret
    assert "patient keys" not in caplog.text  # the salt was given: no warning


def test_dicom_in_a_tar_without_a_lasting_salt_warns_and_keys_still_group(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(SALT_ENV, raising=False)
    monkeypatch.setenv(NO_SALT_FILE_ENV, "1")  # as in a pod without the Secret
    files = {**imagefolder(5, fmt="JPEG"), "glioma/a.dcm": mr(1, patient=PATIENT),
             "glioma/b.dcm": mr(2, patient=PATIENT)}
    src = make_tar(tmp_path / "export.tar.gz", files)
    with caplog.at_level(logging.WARNING):
        run([src], tmp_path / "ds")
    rows = all_rows(tmp_path / "ds")
    a, b = rows["export.tar.gz/glioma/a.dcm"]["patient"], rows["export.tar.gz/glioma/b.dcm"]["patient"]
    assert a == b and a not in (None, hashed(PATIENT))  # same patient, same key; the salt was random
    [warning] = [r.getMessage() for r in caplog.records if "random salt" in r.getMessage()]  # once, plainly
    assert "patient splits will differ from the next run's" in warning
    assert load_manifest(tmp_path / "ds").patients["salt"] == "random, this run only"


def test_a_salt_file_made_once_mode_600_gives_the_same_patient_splits_run_after_run(tmp_path, monkeypatch,
                                                                                    caplog):
    monkeypatch.delenv(SALT_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    src = write_tree(tmp_path / "pilot", pilot_cohort())
    with caplog.at_level(logging.INFO):
        run([src], tmp_path / "one")
    salt = salt_file()
    assert salt == tmp_path / "config" / "entropy-ft" / "patient-salt"
    assert stat.S_IMODE(salt.stat().st_mode) == 0o600 and "created the patient salt" in caplog.text
    value = salt.read_text().strip()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run([src], tmp_path / "two")
    assert salt.read_text().strip() == value and "created the patient salt" not in caplog.text
    assert "random salt" not in caplog.text

    one, two = all_rows(tmp_path / "one"), all_rows(tmp_path / "two")
    assert {s: r["split"] for s, r in one.items()} == {s: r["split"] for s, r in two.items()}
    assert {s: r["patient"] for s, r in one.items()} == {s: r["patient"] for s, r in two.items()}
    manifest = load_manifest(tmp_path / "one")
    assert manifest.patients["salt"] == "salt file" and manifest.patients["in_several_splits"] == 0
    assert manifest.duplicates["groups"] == [] and manifest.patients["distinct"] == 24
    for split in ("train", "val", "test"):  # stratified: both classes in every split
        assert {r["class_name"] for r in one.values() if r["split"] == split} == {"glioma", "notumor"}
    for out in ("one", "two"):
        assert value.encode() not in artifact_text(tmp_path / out) + caplog.text.encode()

    salt.chmod(0o644)  # a salt others can read is a salt others can test guessed IDs with
    with caplog.at_level(logging.WARNING):
        run([src], tmp_path / "three")
    assert "can be read by others (mode 644): chmod 600 it" in caplog.text


def test_ingests_started_together_agree_on_one_salt(tmp_path, monkeypatch):
    """Each makes the file if it is missing, by linking a whole temporary file into place: whoever links
    first wins, and every other process reads that one salt (no half-written file, no second salt)."""
    monkeypatch.delenv(SALT_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    code = ("import sys, time; from entropy_ft.data.patients import load_salt; "
            "time.sleep(max(0, float(sys.argv[1]) - time.time())); s = load_salt(); print(s.origin, s.value.decode())")
    start = str(time.time() + 2)
    procs = [subprocess.Popen([sys.executable, "-c", code, start], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    answers = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert answers == {f"salt file {salt_file().read_text().strip()}"}
    assert [p.name for p in salt_file().parent.iterdir()] == ["patient-salt"]  # no temporary file left


@pytest.mark.parametrize("salt", ["salt-0", "salt-24"])  # salt-24: the two notumor patients draw val and test
def test_a_class_too_small_to_split_exits_2_at_ingest_naming_it(tmp_path, monkeypatch, capsys, salt):
    monkeypatch.setenv(SALT_ENV, salt)
    files = pilot_cohort(patients_per_class=12)
    files = {k: v for k, v in files.items() if k.startswith("glioma/") or k.split("/")[1] in ("PILOT-001", "PILOT-003")}
    src = write_tree(tmp_path / "pilot", files)
    out = tmp_path / "ds"
    assert cli.main(["ingest", str(src), "--out", str(out), "--image-size", str(SIZE), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "class notumor cannot be split: its 2 units (a unit is a patient" in err
    assert "train, val and test need 3 or more; add notumor data" in err and not out.exists()


def labelled_export(tmp_path):
    """A flat export (no class folders): DICOM files, some extension-less, and JPEGs."""
    files = {}
    for k in range(8):
        name = f"scans/s{k // 4}/IM{k:04d}" if k % 2 else f"scans/img{k}.dcm"
        files[name] = mr(k + 1, patient=f"HOSP-{k // 2}")
    for k in range(6):
        files[f"photos/p{k}.jpg"] = phantom_file(k, "notumor" if k % 2 else "glioma", "JPEG")
    files["scans/orphan.dcm"] = mr(30)  # no row names it
    return write_tree(tmp_path / "export", files)


def test_labels_csv_by_path_and_by_sop_instance_uid(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(SALT_ENV, SALT)
    src = labelled_export(tmp_path)
    lines = ["path,sop_instance_uid,label,patient"]
    for k in range(8):  # DICOM: even ones by path, odd ones (extension-less) by their SOPInstanceUID
        cls = "glioma" if k < 4 else "meningioma"
        lines.append(f"scans/img{k}.dcm,,{cls}," if k % 2 == 0 else f",{instance_uid(k + 1)},{cls},")
    for k in range(6):
        lines.append(f"photos/p{k}.jpg,,{'no' if k % 2 else 'glioma'},FAM-{k}")  # 'no' is notumor, as a folder
    lines.append("scans/gone.dcm,,glioma,")  # line 16: names no file
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.INFO):
        # 14 images of 3 classes in a few patients: too few to split (this test is about labels), scored only
        summary = run([src], tmp_path / "ds", labels=str(tmp_path / "labels.csv"), external=True)

    manifest = load_manifest(tmp_path / "ds")
    rows = all_rows(tmp_path / "ds")
    assert manifest.classes == ["glioma", "meningioma", "notumor"]
    assert manifest.sources[0]["layout"] == "labels"
    assert rows["export/scans/s0/IM0001"]["class_name"] == "glioma"  # matched by SOPInstanceUID
    assert rows["export/scans/img6.dcm"]["class_name"] == "meningioma"  # matched by path
    assert Counter(r["class_name"] for r in rows.values()) == {"glioma": 7, "meningioma": 4, "notumor": 3}
    assert rows["export/scans/img2.dcm"]["patient"] == hashed("HOSP-1")  # DICOM PatientID
    assert rows["export/photos/p3.jpg"]["patient"] == hashed("FAM-3")  # the file's patient column
    assert manifest.labels == {"file": str(tmp_path / "labels.csv"), "rows": 15, "matched_rows": 14,
                               "unmatched_rows": 1, "unmatched_lines": [16],
                               "files_matched_by": {"path": 10, "sop_instance_uid": 4}, "unlabelled_files": 1}
    [orphan] = manifest.quarantine
    assert orphan["file"] == "export/scans/orphan.dcm" and orphan["kind"] == "unlabelled"
    assert summary["labels"]["unlabelled_files"] == 1 and summary["quarantine"] == {"unlabelled": 1}
    assert "1 rows name no file of the sources (lines 16)" in caplog.text
    assert instance_uid(1).encode() not in artifact_text(tmp_path / "ds") + caplog.text.encode()


def test_labels_csv_problems_exit_2_naming_file_and_column(tmp_path, capsys):
    src = labelled_export(tmp_path)
    out = str(tmp_path / "ds")

    def error(*argv: str) -> str:
        assert cli.main(["ingest", str(src), "--out", out, "--image-size", str(SIZE), "--workers", "1", *argv]) == 2
        return capsys.readouterr().err

    bad = tmp_path / "bad.csv"
    bad.write_text("path,diagnosis\nscans/img0.dcm,glioma\n")
    assert f"--labels {bad}: unknown column 'diagnosis'" in error("--labels", str(bad))
    bad.write_text("path,patient\nscans/img0.dcm,P1\n")
    assert f"--labels {bad}: no 'label' column" in error("--labels", str(bad))
    bad.write_text("label\nglioma\n")
    assert "needs a 'path' or a 'sop_instance_uid' column" in error("--labels", str(bad))
    assert f"--labels {tmp_path / 'missing.csv'}" in error("--labels", str(tmp_path / "missing.csv"))
    assert "--layout kaggle does not apply" in error("--labels", str(bad), "--layout", "kaggle")
    bad.write_text("path,label\nelsewhere/a.dcm,glioma\nelsewhere/b.dcm,notumor\n")  # another export's file
    assert f"--labels {bad}: none of its 2 rows names a file of {src}" in error("--labels", str(bad))
    assert not (tmp_path / "ds").exists()


def test_served_model_predicts_a_dicom_request_as_it_does_the_ingested_pixels(tmp_path):
    """DICOM bytes sent to the served model get the probabilities the same model gives the pixels ingest
    stored for that file (the tensors are identical, so the prediction is too)."""
    import torch

    from entropy_ft.artifacts import ModelMeta
    from entropy_ft.data.loader import ParquetImages, to_model_input
    from entropy_ft.model.factory import build_model
    from entropy_ft.tracking.serving import model_pixels, predict_proba

    dicom_files = {"glioma/a.dcm": mr(1), "meningioma/IM0002": mr(2, PhotometricInterpretation="MONOCHROME1"),
                   "notumor/colour.dcm": shipped("SC_rgb_jpeg_dcmtk.dcm")}
    src = write_tree(tmp_path / "src", {**imagefolder(4, fmt="JPEG"), **dicom_files})
    run([src], tmp_path / "ds")
    manifest = load_manifest(tmp_path / "ds")
    meta = ModelMeta(arch="resnet18", classes=manifest.classes,
                     preprocessing={"image_size": SIZE, "ingest": manifest.preprocessing})
    torch.manual_seed(0)
    model, _ = build_model("resnet18", len(manifest.classes), "none")
    model.eval()
    found = 0
    for split in ("train", "val", "test"):
        loaded = ParquetImages(tmp_path / "ds", split, image_size=SIZE)
        for i, source in enumerate(read_split(tmp_path / "ds", split, ["source"]).column("source").to_pylist()):
            data = dicom_files.get(source.split("/", 1)[1])
            if data is None:
                continue
            found += 1
            stored = loaded.pixels(i)
            assert torch.equal(model_pixels(data, meta.preprocessing, SIZE), stored), source
            with torch.inference_mode():
                expected = torch.softmax(model(to_model_input(stored[None], torch.device("cpu"), channels_last=False)),
                                         dim=1).double().numpy()
            served = predict_proba(model, meta, [data])
            assert served.argmax() == expected.argmax() and np.allclose(served, expected, atol=1e-6), source
    assert found == len(dicom_files)
    with pytest.raises(ValueError, match="3 frames; send one frame per row"):
        model_pixels(mr(40, frames=3), meta.preprocessing, SIZE)


def test_extensionless_dicom_from_an_s3_prefix_with_labels_from_s3(s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv(SALT_ENV, SALT)
    s3_endpoint.make_bucket("pacs")
    client = s3_endpoint.client()
    for k in range(10):
        client.put_object(Bucket="pacs", Key=f"export/study{k % 2}/IM{k:04d}", Body=mr(k + 1, patient=f"HOSP-{k}"))
    client.put_object(Bucket="pacs", Key="export/notes.txt", Body=b"exported by the PACS\n")
    csv = "sop_instance_uid,label\n" + "".join(f"{instance_uid(k + 1)},{'glioma' if k < 5 else 'notumor'}\n"
                                               for k in range(10))
    client.put_object(Bucket="pacs", Key="labels.csv", Body=csv.encode())

    summary = ingest.run(ingest.Config(sources=("s3://pacs/export",), out=str(tmp_path / "ds"), image_size=SIZE,
                                       labels="s3://pacs/labels.csv", workers=1))
    assert summary["images"] == 10 and summary["quarantine"] == {"not-image": 1}
    assert summary["labels"]["files_matched_by"] == {"path": 0, "sop_instance_uid": 10}
    rows = all_rows(tmp_path / "ds")
    assert Counter(r["class_name"] for r in rows.values()) == {"glioma": 5, "notumor": 5}
    assert rows["export/study1/IM0003"] == {**rows["export/study1/IM0003"], "class_name": "glioma",
                                           "patient": hashed("HOSP-3")}


def test_a_patient_is_never_in_two_splits(tmp_path, monkeypatch):
    """Twenty patients with three slices each (and a three-frame file): splits are drawn per patient."""
    monkeypatch.setenv(SALT_ENV, SALT)
    files = {}
    for p in range(20):
        cls = ("glioma", "meningioma", "notumor", "pituitary")[p % 4]
        for k in range(3):
            files[f"{cls}/pat{p}-slice{k}.dcm"] = mr(3 * p + k, patient=f"HOSP-{p:03d}")  # distinct pixels below 64
    files["glioma/pat0-cine.dcm"] = mr(60, patient="HOSP-000", frames=3)
    run([write_tree(tmp_path / "export", files)], tmp_path / "ds", test_fraction=0.2, val_fraction=0.2)
    splits_of: dict[str, set[str]] = {}
    for row in all_rows(tmp_path / "ds").values():
        splits_of.setdefault(row["patient"], set()).add(row["split"])
    assert len(splits_of) == 20 and all(len(s) == 1 for s in splits_of.values())
    assert len({s for found in splits_of.values() for s in found}) > 1  # yet the patients did spread out
    patients = load_manifest(tmp_path / "ds").patients
    assert sum(patients["per_split"].values()) == 20 and patients["in_several_splits"] == 0
