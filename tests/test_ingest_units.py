"""Ingestion's pure parts: decoding any mode to 8 bits, pad-not-crop, hashes, duplicate pairs, drop plan."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from imagefiles import encode, huge_png, phantom
from PIL import Image

from entropy_ft.data import dedup, quarantine
from entropy_ft.data.layouts import canonical_class, parse_class_map
from entropy_ft.data.preprocess import BadImage, decode, fit_and_pad, perceptual_hash, pixel_sha256
from entropy_ft.errors import UserError


def hamming(a: bytes, b: bytes) -> int:
    return int(np.unpackbits(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())


def test_grayscale_stays_one_channel_also_when_stored_as_rgb():
    gray = phantom(1, "glioma")
    assert decode(encode(gray)).shape == gray.shape
    as_rgb = encode(np.stack([gray] * 3, axis=2))
    assert np.array_equal(decode(as_rgb), gray)
    colour = np.stack([gray, gray, 255 - gray], axis=2)
    assert decode(encode(colour)).shape == (*gray.shape, 3)


def test_sixteen_bit_is_scaled_from_its_own_range():
    twelve_bit = np.linspace(0, 4095, 40 * 30).reshape(30, 40).astype(np.uint16)
    data = encode(twelve_bit)
    assert Image.open(__import__("io").BytesIO(data)).mode.startswith("I")
    out = decode(data)
    assert out.dtype == np.uint8 and out.shape == (30, 40)
    assert out.min() == 0 and out.max() == 255  # not 4095/65535*255 = 16: the slice stays visible
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # order of intensities kept


def test_alpha_is_composited_on_black_and_cmyk_palette_bilevel_become_8_bit():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:10, :, 3] = 255  # top half opaque, bottom half transparent
    out = decode(encode(rgba))
    assert out.ndim == 2 and out[:10].min() == 200 and out[10:].max() == 0

    cmyk = decode(encode(Image.new("CMYK", (24, 16), (0, 255, 255, 0)), "JPEG"))  # red ink
    assert cmyk.shape == (16, 24, 3) and cmyk[8, 12, 0] > 200 and cmyk[8, 12, 1] < 60

    palette = Image.fromarray(phantom(2, "notumor")).convert("P")
    assert decode(encode(palette)).shape == (48, 48)
    bilevel = decode(encode(Image.fromarray(phantom(3, "notumor") > 128)))
    assert set(np.unique(bilevel)) <= {0, 255}


def test_exif_orientation_is_applied():
    stored = np.zeros((20, 40), np.uint8)
    stored[:6, :6] = 255  # bright block top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    out = decode(encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.shape == (40, 20)
    assert out[:6, -6:].mean() > 200 and out[:6, :6].mean() < 50  # the block is now top-right


def test_resize_pads_and_keeps_the_whole_image():
    wide = np.full((30, 60), 100, np.uint8)
    for y, x in ((0, 0), (0, 59), (29, 0), (29, 59)):  # markers in the four corners
        wide[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = 255
    out = fit_and_pad(wide, 32)
    assert out.shape == (32, 32)
    content = np.flatnonzero(out.max(axis=1) > 0)
    assert (content.min(), content.max()) == (8, 23)  # 16 rows of image, 8 black rows above and below
    assert out[:8].max() == 0 and out[24:].max() == 0
    for corner in (out[8:11, :3], out[8:11, -3:], out[21:24, :3], out[21:24, -3:]):
        assert corner.max() > 200  # nothing was cropped away
    colour = fit_and_pad(np.zeros((10, 5, 3), np.uint8) + 50, 16)
    assert colour.shape == (16, 16, 3)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", quarantine.EMPTY),
        (b"this is a text file, not a JPEG\n" * 4, quarantine.UNREADABLE),
        (encode(phantom(4, "glioma"), "JPEG")[:300], quarantine.UNREADABLE),  # truncated
    ],
    ids=["zero-byte", "text", "truncated-jpeg"],
)
def test_bad_files_raise_with_a_quarantine_kind(data, kind):
    with pytest.raises(BadImage) as err:
        decode(data)
    assert err.value.kind == kind


def test_huge_dimensions_are_refused_before_decoding():
    data = huge_png(12_000, 12_000)  # 144 Mpx: a real, valid PNG of ~20 kB
    started = time.monotonic()
    with pytest.raises(BadImage) as err:
        decode(data)
    assert err.value.kind == quarantine.BOMB and "12000x12000" in err.value.reason
    assert time.monotonic() - started < 1.0  # refused from the header, never decoded
    with pytest.raises(BadImage):
        decode(encode(phantom(5, "glioma")), max_pixels=48 * 48 - 1)


def test_pixel_hash_follows_pixels_not_file_bytes_and_phash_tolerates_brightness():
    img = phantom(6, "meningioma")
    a, b = encode(img, compress_level=1), encode(img, compress_level=9)
    assert hashlib.sha256(a).digest() != hashlib.sha256(b).digest()
    assert pixel_sha256(decode(a)) == pixel_sha256(decode(b))
    assert pixel_sha256(img) != pixel_sha256(img.reshape(24, 96))  # same bytes, other shape
    brighter = np.clip(img.astype(int) * 1.1 + 5, 0, 255).astype(np.uint8)
    other = phantom(7, "meningioma")
    h = perceptual_hash(fit_and_pad(img, 32))
    assert hamming(h, perceptual_hash(fit_and_pad(brighter, 32))) <= dedup.NEAR_MAX_DISTANCE
    assert hamming(h, perceptual_hash(fit_and_pad(other, 32))) > dedup.NEAR_MAX_DISTANCE


def test_near_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    for i in range(0, 60, 2):  # plant pairs 0..15 bits apart
        bits = np.unpackbits(hashes[i])
        flip = rng.choice(256, size=i // 4, replace=False)
        bits[flip] ^= 1
        hashes[i + 1] = np.packbits(bits)
    dist = np.unpackbits(hashes[:, None] ^ hashes[None], axis=2).sum(axis=2)
    expected = {(i, j) for i, j in zip(*np.nonzero(np.triu(dist <= 12, 1)))}
    found = {tuple(p) for p in dedup.near_pairs(hashes, 12).tolist()}
    assert found == expected and len(expected) == 26  # pairs with 0..12 flipped bits


def test_groups_join_exact_and_near_copies():
    shas = ["a", "b", "a", "c", "d"]
    hashes = np.zeros((5, 32), np.uint8)
    hashes[1, 0] = 0b111  # 3 bits from item 0: near
    hashes[3] = 255  # far from everyone
    hashes[4] = 255
    hashes[4, :2] = 0  # 16 bits from item 3: not near
    groups, comp = dedup.find_groups(shas, hashes)
    assert [(g.kind, g.members) for g in groups] == [("exact", [0, 2]), ("near", [0, 1, 2])]
    assert comp[0] == comp[1] == comp[2] and len({comp[0], comp[3], comp[4]}) == 3


def test_drop_plan_keeps_train_copy_dedupes_splits_and_removes_label_conflicts():
    split = ["train", "test", "val", "train", "test", "test", "train", "train"]
    cls = ["a", "a", "a", "a", "b", "b", "a", "b"]
    names = [f"f{i}" for i in range(8)]
    comps = [[0, 1, 2, 3], [4, 5], [6, 7]]
    removed = dedup.drop_plan(comps, split, cls, names)
    assert set(removed) == {1, 2, 3, 5, 6, 7}
    assert "within train" in removed[3] and "f0" in removed[1]
    assert "within test" in removed[5]
    assert removed[6].startswith("label conflict") and removed[7].startswith("label conflict")


def test_class_names_are_canonical_and_class_map_applies_first():
    assert {canonical_class(n, {}) for n in ("notumor", "no_tumor", "No Tumor", "no")} == {"notumor"}
    assert canonical_class("glioma_tumor", {}) == "glioma"
    assert canonical_class("Yes", {}) == "yes"
    mapping = parse_class_map(["yes=tumor,Normal=healthy-brain"])
    assert canonical_class("YES", mapping) == "tumor" and canonical_class("normal", mapping) == "healthy-brain"
    with pytest.raises(UserError, match="--class-map"):
        parse_class_map(["yes"])


def test_default_workers_respect_a_cgroup_cpu_limit(monkeypatch):
    import os

    from entropy_ft import device

    cores = len(os.sched_getaffinity(0))
    files = {"/sys/fs/cgroup/cpu.max": "50000 100000"}  # a pod limited to half a CPU
    monkeypatch.setattr(device, "_read", files.get)
    assert device.default_workers() == 1
    files["/sys/fs/cgroup/cpu.max"] = "max 100000"
    assert device.default_workers() == cores
    files.clear()
    files.update({"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "100000", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"})
    assert device.default_workers() == 1


def test_decoding_streams_with_bounded_work_in_flight(tmp_path):
    """Memory does not grow with the dataset: the reader is never more than 2 batches per worker
    ahead of what has been decoded and spilled to disk."""
    from entropy_ft.data import decode_pool
    from entropy_ft.data.preprocess import Settings

    data = encode(phantom(0, "glioma", size=16))
    spilled = []

    class CountingSpill(decode_pool.Spill):
        def append(self, blob: bytes) -> int:
            spilled.append(len(blob))
            return super().append(blob)

    ahead = []

    def reads(n):
        for i in range(n):
            ahead.append(i - len(spilled))
            yield decode_pool.Read(i, data, None, f"{i}.png")

    spill = CountingSpill(tmp_path / "spill")
    results = decode_pool.decode_all(reads(600), 600, Settings(16), workers=2, spill=spill)
    assert len(results) == len(spilled) == 600
    assert max(ahead) <= (2 * 2 + 1) * decode_pool.BATCH_IMAGES
    assert np.array_equal(spill.pixels(results[599].images[0]), phantom(0, "glioma", size=16))
    spill.close()
