"""S3 as source (a prefix of files, and one archive object) and as destination, on a real moto server."""

from __future__ import annotations

import hashlib

from imagefiles import imagefolder, make_zip

from entropy_ft import storage
from entropy_ft.data.format import load_manifest, read_split
from entropy_ft.steps import ingest


def keys(client, bucket: str, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def test_s3_prefix_and_archive_sources_to_s3_destination(s3_endpoint, tmp_path):
    s3_endpoint.make_bucket("mri-in")
    s3_endpoint.make_bucket("mri-out")
    client = s3_endpoint.client()
    files = {**imagefolder(4, split="train"), **imagefolder(1, start=80, split="test"), "train/glioma/.DS_Store": b"x"}
    for rel, data in files.items():
        client.put_object(Bucket="mri-in", Key=f"export/{rel}", Body=data)
    archive = make_zip(tmp_path / "more.zip", imagefolder(6, start=300))
    client.upload_file(str(archive), "mri-in", "archives/more.zip")

    out = "s3://mri-out/datasets/mixed"
    summary = ingest.run(ingest.Config(sources=("s3://mri-in/export", "s3://mri-in/archives/more.zip"), out=out,
                                       image_size=32, workers=1))
    assert summary["images"] == 4 * 5 + 4 * 6 and summary["quarantined"] == 1

    with storage.local_copy(out) as local:
        manifest = load_manifest(local)
        assert [(s["name"], s["layout"]) for s in manifest.sources] == [
            ("export", "imagefolder"), ("more.zip", "imagefolder")]
        assert manifest.quarantine[0]["file"] == "export/train/glioma/.DS_Store"
        for shard in manifest.shards:
            assert hashlib.sha256((local / shard["path"]).read_bytes()).hexdigest() == shard["sha256"]
        sources = {s for split in ("train", "val", "test")
                   for s in read_split(local, split, ["source"]).column("source").to_pylist()}
        assert {s.split("/", 1)[0] for s in sources} == {"export", "more.zip"}
        assert "export/train/pituitary/pi_03000.png" in sources

    # re-ingest into the same prefix: the new dataset replaces the old one, stale shards included
    client.put_object(Bucket="mri-out", Key="datasets/mixed/train/part-00009.parquet", Body=b"stale")
    ingest.run(ingest.Config(sources=("s3://mri-in/archives/more.zip",), out=out, image_size=32, workers=1))
    after = keys(client, "mri-out", "datasets/mixed/")
    with storage.local_copy(out) as local:
        manifest = load_manifest(local)
    assert after == {"datasets/mixed/manifest.json"} | {f"datasets/mixed/{s['path']}" for s in manifest.shards}
    assert sum(manifest.totals.values()) == 24
