"""No PHI leaves ingest: a DICOM header value appears in no artifact, manifest, log line, MLflow record or report.

Headers carry names, IDs, birth dates, accession numbers, institutions, dates and UIDs. The pipeline
may keep only a salted hash of the patient key, so this test writes marker values into those fields
of pydicom's own MR test file (and into a ``--labels`` file's UID and patient columns), runs the
whole training pipeline on them as ``entropy-ft run`` does, against a real MLflow server whose
artifacts go to a moto S3 bucket, and scans every byte it left behind: the run's output root
(artifacts, KFP outputs, cache), the server's SQLite store, log and bucket objects, and everything
printed or logged. Parquet shards are scanned decoded (their pages are compressed), zip and gzip
members unpacked. A marker found anywhere fails the test, naming the file and the marker.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from dicomfiles import MPEG2, dataset, mr, to_bytes
from imagefiles import write_tree
from mlflow_server import running_server

from entropy_ft import cli
from entropy_ft.data.patients import SALT_ENV

TOKEN = "ZQPHI"  # in every text marker: names, IDs, accession numbers, institutions, descriptions
UID_ROOT = "1.2.826.0.1.3680043.10.999"  # every marker UID is under it
SALT = "salt-7f3e1c-never-written"
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
# per class: (split folder, slices) for each patient; each patient's slices stay on one side
PATIENTS = (("train", 2), ("train", 1), ("train", 1), ("train", 1), ("train", 1), ("train", 1),
            ("test", 2), ("test", 2))


def birth_date(p: int) -> str:
    return f"19{p:02d}0417"


def study_date(p: int, day: int) -> str:  # years before any run's timestamp, so no run name can match
    return f"19{50 + p:02d}08{day:02d}"


DATE_FIELDS = {"StudyDate": 23, "SeriesDate": 24, "AcquisitionDate": 25, "ContentDate": 26,
               "InstanceCreationDate": 27}


def headers(p: int, n: int) -> dict[str, str]:
    """Patient ``p``'s file ``n``: a marker in every identifying field."""
    return {
        "PatientName": f"Zqphi^Name{p:02d}^Given", "PatientID": f"{TOKEN}-PID-{p:02d}",
        "IssuerOfPatientID": f"{TOKEN} issuer {p}", "PatientBirthDate": birth_date(p),
        "PatientAddress": f"{TOKEN} Street {p}", "PatientTelephoneNumbers": f"{TOKEN}TEL{p:02d}",
        "AccessionNumber": f"{TOKEN}ACC{n:04d}", "StudyID": f"{TOKEN}ST{p:02d}",
        "InstitutionName": f"{TOKEN} Hospital {p}", "InstitutionAddress": f"{TOKEN} Road {p}",
        "ReferringPhysicianName": f"Zqphi^Referrer{p:02d}", "NameOfPhysiciansReadingStudy": f"Zqphi^Reader{p:02d}",
        "OperatorsName": f"Zqphi^Operator{p:02d}", "PerformingPhysicianName": f"Zqphi^Performer{p:02d}",
        "StationName": f"{TOKEN}STN{p:02d}", "DeviceSerialNumber": f"{TOKEN}-SN-{p}",
        "StudyDescription": f"{TOKEN} study of patient {p}", "SeriesDescription": f"{TOKEN} series {n}",
        "ImageComments": f"{TOKEN} comment on file {n}",
        "StudyInstanceUID": f"{UID_ROOT}.1.{p}", "SeriesInstanceUID": f"{UID_ROOT}.2.{p}",
        "FrameOfReferenceUID": f"{UID_ROOT}.4.{p}", "InstanceCreatorUID": f"{UID_ROOT}.5",
        **{name: study_date(p, day) for name, day in DATE_FIELDS.items()},
    }


def sop(n: int) -> str:
    return f"{UID_ROOT}.3.{n}"


def marked(ds: pydicom.Dataset, p: int, n: int) -> pydicom.Dataset:
    for name, value in headers(p, n).items():
        setattr(ds, name, value)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop(n)
    ds.file_meta.SourceApplicationEntityTitle = f"{TOKEN}AE{p:02d}"
    return ds


def marked_mr(index: int, p: int, n: int) -> bytes:
    """An MR slice with pixels of its own (``index`` below 64) and markers in its header."""
    return to_bytes(marked(pydicom.dcmread(io.BytesIO(mr(index)), force=True), p, n))


@dataclass(frozen=True)
class Export:
    folder: Path
    labels: Path
    dates: tuple[str, ...]  # every date marker, as DICOM writes it (YYYYMMDD)
    files: dict[str, bytes]
    images: int  # files that become images


def hospital_export(tmp_path: Path) -> Export:
    """Train and test folders of studies (``<split>/<class>/pNN/IMnnnn``, no extensions, as a PACS exports),
    classes from a labels file (half the rows by path, half by SOPInstanceUID; some patients keyed by the
    file's patient column), and files that are quarantined: no pixels, an unsupported syntax, truncated, no row."""
    files: dict[str, bytes] = {}
    rows = ["path,sop_instance_uid,label,patient"]
    p = n = 0
    for cls in CLASSES:
        for split, slices in PATIENTS:
            csv_patient = f"{TOKEN}-CSV-{p:02d}" if p % 3 == 0 else ""
            for _ in range(slices):
                path = f"{split}/{cls}/p{p:02d}/IM{n:04d}"
                files[path] = marked_mr(n, p, n)
                rows.append(f"{path},,{cls},{csv_patient}" if n % 2 else f",{sop(n)},{cls},{csv_patient}")
                n += 1
            p += 1
    images = n
    files[f"train/glioma/p{p:02d}/IM{n:04d}"] = marked_mr(n, p, n)  # no row names it: unlabelled
    no_pixels = marked(dataset(), p, n + 1)
    del no_pixels.PixelData
    files[f"train/glioma/p{p:02d}/IM{n + 1:04d}"] = to_bytes(no_pixels)
    unsupported = marked(dataset("MR_small_RLE.dcm"), p, n + 2)
    unsupported.file_meta.TransferSyntaxUID = MPEG2
    files[f"train/glioma/p{p:02d}/IM{n + 2:04d}"] = to_bytes(unsupported)
    files[f"train/glioma/p{p:02d}/IM{n + 3:04d}"] = marked_mr(n + 3, p, n + 3)[:-300]  # cut inside its pixels
    rows += [f",{sop(k)},glioma,{TOKEN}-CSV-{p:02d}" for k in range(n + 1, n + 4)]  # rows naming no image
    folder = write_tree(tmp_path / "export", files)
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    dates = tuple(sorted({birth_date(k) for k in range(p + 1)}
                         | {study_date(k, day) for k in range(p + 1) for day in DATE_FIELDS.values()}))
    return Export(folder, labels, dates, files, images)


# ---------------------------------------------------------------- the scanner


class Scanner:
    """Finds the markers in bytes: the text token and the UID root (as bytes, case-insensitive, also
    UTF-16), every date as DICOM writes it and as ISO 8601 (between non-digits), and the salt."""

    def __init__(self, dates: tuple[str, ...]) -> None:
        texts = [TOKEN.lower(), UID_ROOT, SALT.lower()]
        self.needles = [(text, enc) for text in texts for enc in (text.encode(), text.encode("utf-16-le"))]
        forms = [form for d in dates for form in (d, f"{d[:4]}-{d[4:6]}-{d[6:]}")]
        self.dates = re.compile(rb"(?<![0-9])(" + b"|".join(f.encode() for f in forms) + rb")(?![0-9])")

    def hits(self, data: bytes) -> list[str]:
        """One line per marker found: the marker and what surrounds it."""
        low, found = data.lower(), []
        for text, needle in self.needles:
            if (at := low.find(needle)) >= 0:
                found.append(f"{text!r} in {data[max(0, at - 40):at + len(needle) + 40]!r}")
        if match := self.dates.search(data):
            found.append(f"date {match.group(1).decode()} in {data[max(0, match.start() - 40):match.end() + 40]!r}")
        return found


def views(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    """The bytes of one file and what they hold decoded: a Parquet shard's values and metadata, zip and
    gzip members (recursively), since compression hides a marker from a byte scan."""
    yield name, data
    if data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        values = [v if isinstance(v, bytes) else str(v).encode() for col in table.columns for v in col.to_pylist()]
        yield f"{name} (decoded)", b"\n".join(values)
        yield f"{name} (metadata)", repr(table.schema.metadata).encode()
    elif data[:2] == b"\x1f\x8b":
        yield from views(f"{name} (gunzipped)", gzip.decompress(data))
    elif data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.namelist():
                yield f"{name}!{member}", member.encode()
                yield from views(f"{name}!{member}", archive.read(member))


def scan(scanner: Scanner, name: str, data: bytes) -> list[str]:
    return [f"{view}: {hit}" for view, blob in views(name, data) for hit in scanner.hits(blob)]


def scan_folder(scanner: Scanner, folder: Path) -> tuple[list[str], int]:
    """Hits in every file under ``folder`` (and in every file and folder name), and how many files were read."""
    hits, count = [], 0
    for path in sorted(folder.rglob("*")):
        hits += [f"{path} (its name): {hit}" for hit in scanner.hits(str(path.relative_to(folder)).encode())]
        if path.is_file():
            count += 1
            hits += scan(scanner, str(path), path.read_bytes())
    return hits, count


def test_the_scanner_finds_every_marker_in_the_export(tmp_path):
    """The markers are really in the headers (pydicom kept every value), and the scanner sees each kind,
    also inside a compressed shard: a test that can fail."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    export = hospital_export(tmp_path)
    scanner = Scanner(export.dates)
    for path, data in export.files.items():
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        for name in [*headers(0, 0), "SOPInstanceUID"]:
            value = str(ds.get(name, ""))
            assert TOKEN.lower() in value.lower() or value.startswith(UID_ROOT) or value in export.dates, (path, name)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID, path
        assert ds.file_meta.SourceApplicationEntityTitle.startswith(TOKEN), path
        for text in (TOKEN.lower(), UID_ROOT):
            assert any(repr(text) in hit for hit in scanner.hits(data)), (path, text)
        assert scanner.dates.search(data), path
    assert len(export.files) == export.images + 4 and export.images == 4 * sum(n for _, n in PATIENTS)
    assert len(scanner.hits(b'{"birth": "1900-04-17", "pid": "zqphi-pid-00"}')) == 2
    assert scanner.hits("ZQPHI".encode("utf-16-le")) and scanner.hits(SALT.upper().encode())
    assert not scanner.hits(b"seconds 1119000417.5 run-2026-08-23 1.2.826.0.1.3680043.10.9")  # no false alarms
    shard = io.BytesIO()
    pq.write_table(pa.table({"source": [f"export/{TOKEN}/a"] * 50}), shard, compression="zstd")
    assert any("(decoded)" in hit for hit in scan(scanner, "shard", shard.getvalue()))


# ---------------------------------------------------------------- the pipeline


@pytest.mark.slow
def test_no_header_value_leaves_the_training_pipeline(tmp_path, s3_endpoint, monkeypatch, capfd, caplog):
    export = hospital_export(tmp_path)
    scanner = Scanner(export.dates)
    monkeypatch.setenv(SALT_ENV, SALT)
    monkeypatch.setenv("ENTROPY_FT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    server_root = tmp_path / "mlflow-server"
    server_root.mkdir()
    with running_server(s3_endpoint, server_root, "phi-artifacts") as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        with caplog.at_level(logging.DEBUG):
            code = cli.main(["run", "--root", str(tmp_path / "out"), "--data", str(export.folder),
                             "--labels", str(export.labels), "--image-size", "32", "--arch", "squeezenet1_1",
                             "--weights", "none", "--profile-images", "16", "--bins", "32", "--epochs", "1",
                             "--batch-size", "16", "--noise", "0,0.2", "--model-name", "phi-test"])
        printed = capfd.readouterr()
        assert code == 0, printed.err[-4000:]
        summary = json.loads(printed.out.strip().splitlines()[-1])
        bucket = server.bucket
        client = s3_endpoint.client()
        objects = {obj["Key"]: client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                   for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=server.prefix)
                   for obj in page.get("Contents", [])}

    # the run really read the export: every image, the label file both ways, patient keys, quarantine
    manifest = json.loads((Path(summary["outputs"]["dataset"]) / "manifest.json").read_text())
    assert sum(manifest["totals"].values()) == export.images and manifest["classes"] == list(CLASSES)
    half = export.images // 2
    assert manifest["labels"]["files_matched_by"] == {"path": half, "sop_instance_uid": half}
    assert manifest["labels"]["unmatched_rows"] == 3
    assert manifest["patients"]["distinct"] == 4 * len(PATIENTS) and manifest["patients"]["salt"] == SALT_ENV
    assert sorted(e["kind"] for e in manifest["quarantine"]) == [
        "dicom-no-pixel-data", "dicom-truncated", "dicom-unsupported-syntax", "unlabelled"]
    assert any(key.endswith("weights.safetensors") for key in objects), sorted(objects)  # the model went to S3
    db = (server_root / "mlflow.db").read_bytes()
    assert b"squeezenet1_1" in db and b"phi-test" in db  # params and the registered model are in the store

    hits, files = scan_folder(scanner, tmp_path / "out")
    assert files > 20  # artifacts of six tasks, KFP outputs and the cache
    server_hits, _ = scan_folder(scanner, server_root)  # SQLite store (and any journal), server log
    hits += server_hits
    for key, data in objects.items():
        hits += [f"s3://{bucket}/{key}: {hit}" for hit in scanner.hits(key.encode()) + scan(scanner, key, data)]
    for name, text in (("stdout", printed.out), ("stderr", printed.err), ("log records", caplog.text)):
        hits += [f"{name}: {hit}" for hit in scanner.hits(text.encode())]
    assert not hits, "header values (or the salt) leaked:\n" + "\n".join(hits[:30])
