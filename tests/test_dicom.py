"""DICOM decoding (entropy_ft.data.dicom): windowing, MONOCHROME1, colour, frames, quarantine kinds,
patient hashing; and the label file parser (entropy_ft.data.labels)."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest
from dicomfiles import (
    SYNTAX_VARIANTS,
    dataset,
    mr,
    shipped,
    to_bytes,
    unsupported_syntax,
    without_pixels,
)
from imagefiles import encode, phantom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless

from entropy_ft.data import dicom, labels, quarantine
from entropy_ft.data.preprocess import BadImage, Settings, decode_file, process
from entropy_ft.errors import UserError

LIMIT = 10**8


def grey(data: bytes, **kw) -> tuple[list[np.ndarray], dicom.DicomMeta]:
    return dicom.decode(data, LIMIT, **kw)


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR) onto 0..255, written out independently of the code under test."""
    y = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    return np.rint(y * 255).astype(np.uint8)


def test_every_transfer_syntax_gives_the_same_windowed_pixels():
    stored = dataset().pixel_array.astype(np.float64)
    expected = linear_window(stored, 600, 1600)  # MR_small's own Window Center/Width
    for name in SYNTAX_VARIANTS:
        [frame], meta = grey(shipped(name))
        assert meta.windowing == dicom.WINDOW, name
        assert frame.dtype == np.uint8 and np.array_equal(frame, expected), name


def test_rescale_comes_before_the_window():
    """Slope 2 and intercept -100 with the window moved to match give the same image: the window
    applies to modality values, not stored ones."""
    [plain], _ = grey(mr(1))
    [rescaled], _ = grey(mr(1, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=1100, WindowWidth=3199))
    assert np.abs(plain.astype(int) - rescaled.astype(int)).max() <= 1
    assert not np.array_equal(plain, grey(mr(1, RescaleSlope=2, RescaleIntercept=-100))[0][0])


def test_voi_lut_wins_over_the_window():
    ds = dataset()
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.add_new(0x00283006, "US", [min(v // 8, 255) for v in range(4096)])  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    [frame], meta = grey(to_bytes(ds))
    assert meta.windowing == dicom.VOI_LUT
    assert np.array_equal(frame, np.minimum(ds.pixel_array // 8, 255).astype(np.uint8))


def test_percentile_window_without_voi_and_monochrome1_inverted():
    ds = dataset()
    del ds.WindowCenter, ds.WindowWidth
    [frame], meta = grey(to_bytes(ds))
    assert meta.windowing == dicom.PERCENTILE
    values = ds.pixel_array.astype(np.float64)
    lo, hi = np.percentile(values, [0.5, 99.5])
    assert np.array_equal(frame, np.rint(np.clip((values - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8))
    assert 0 < (frame == 255).mean() < 0.02  # the top 0.5 % saturate, not more

    [normal], _ = grey(mr(2))
    [inverted], _ = grey(mr(2, PhotometricInterpretation="MONOCHROME1"))
    assert np.array_equal(inverted, 255 - normal)


def test_a_broken_window_falls_back_to_percentiles():
    _, meta = grey(mr(3, WindowWidth=0))  # LINEAR needs a width of at least 1
    assert meta.windowing == dicom.PERCENTILE


def test_colour_becomes_grey_by_luma():
    frames, meta = grey(shipped("SC_rgb_rle_2frame.dcm"))
    rgb = dataset("SC_rgb_rle_2frame.dcm").pixel_array.astype(np.float64)  # (2, rows, cols, 3)
    assert meta.windowing == dicom.COLOUR and len(frames) == 2
    for frame, expected in zip(frames, rgb @ [0.299, 0.587, 0.114]):
        assert frame.ndim == 2 and np.abs(frame.astype(int) - np.rint(expected)).max() <= 1
    [ybr], _ = grey(shipped("SC_ybr_full_422_uncompressed.dcm"))
    assert ybr.ndim == 2 and ybr.std() > 10  # a picture, not a flat field


def test_multi_frame_gives_one_image_per_frame_and_pipeline_treats_each_alike():
    data = mr(40, frames=3, syntax=RLELossless)
    frames, _ = grey(data)
    assert len(frames) == 3
    for f in range(3):  # frame f has the pixels a single-frame file of index 40 + f has
        assert np.array_equal(frames[f], grey(mr(40 + f))[0][0])
    processed = process(data, Settings(32), "scan/volume.dcm")
    assert [p.pixels.shape for p in processed.images] == [(32, 32)] * 3
    assert len({p.pixel_sha256 for p in processed.images}) == 3
    assert len({p.file_sha256 for p in processed.images}) == 1


def test_bad_dicom_files_get_their_own_quarantine_kind():
    rle = shipped("MR_small_RLE.dcm")
    cases = {
        "MR_truncated.dcm": (shipped("MR_truncated.dcm"), quarantine.DICOM_TRUNCATED),
        "cut in the header": (shipped("MR_small.dcm")[:700], quarantine.DICOM_TRUNCATED),
        "cut in encapsulated pixels": (rle[: len(rle) - 2000], quarantine.DICOM_TRUNCATED),
        "mpeg2": (unsupported_syntax(), quarantine.DICOM_UNSUPPORTED),
        "report": (without_pixels(), quarantine.DICOM_NO_PIXELS),
        "structured report": (shipped("test-SR.dcm"), quarantine.DICOM_NO_PIXELS),
    }
    for label, (data, kind) in cases.items():
        with pytest.raises(BadImage) as caught:
            grey(data)
        assert caught.value.kind == kind, label
        assert "4MR1" not in caught.value.reason  # MR_small's PatientID: no header value in a reason
    with pytest.raises(BadImage, match="pixel limit") as caught:
        dicom.decode(mr(4, frames=3), 3 * 64 * 64 - 1)
    assert caught.value.kind == quarantine.BOMB


def test_dicom_is_found_by_preamble_or_dcm_name_and_nothing_else():
    data = mr(5)
    assert len(decode_file(data, name="series/IM000001")[0]) == 1  # extension-less, DICM preamble
    assert len(decode_file(data, name="series/1.2.840.113619.2.55.3.1")[0]) == 1  # named by its UID
    assert len(decode_file(data)[0]) == 1  # serving: no name, the bytes decide
    bare = to_bytes(dataset(), preamble=False)
    assert not dicom.has_preamble(bare)
    assert np.array_equal(decode_file(bare, name="a.dcm")[0][0], grey(shipped("MR_small.dcm"))[0][0])
    with pytest.raises(BadImage) as caught:
        decode_file(bare, name="IM000002")  # extension-less and no preamble: not read as DICOM
    assert caught.value.kind == quarantine.NOT_IMAGE
    with pytest.raises(BadImage) as caught:
        decode_file(b"LICENSE text" * 20, name="LICENSE")
    assert caught.value.kind == quarantine.NOT_IMAGE
    with pytest.raises(BadImage) as caught:
        decode_file(b"not dicom at all" * 20, name="x.dcm")
    assert caught.value.kind == quarantine.UNREADABLE
    png = encode(phantom(1, "glioma"))
    assert decode_file(png, name="x.png")[1] is None  # other formats carry no DICOM metadata


def test_patient_key_is_a_salted_hash_and_the_id_never_leaves_decode():
    data = mr(6, patient="HOSP-123456")
    _, meta = grey(data, salt=b"s3cret")
    assert meta.patient == hmac.new(b"s3cret", b"HOSP-123456", hashlib.sha256).hexdigest()
    assert grey(data, salt=b"other")[1].patient != meta.patient
    assert grey(data)[1].patient is None  # no salt (serving): no key at all
    assert grey(mr(6, patient=""), salt=b"s3cret")[1].patient is None
    assert "HOSP-123456" not in repr(meta) and "s3cret" not in repr(Settings(32, patient_salt=b"s3cret"))


# ---------------------------------------------------------------- the label file


def test_label_file_matches_by_path_then_sop_instance_uid():
    text = ("path,sop_instance_uid,label,patient\n"
            "./scans\\a.dcm,,glioma,P1\n"
            ",1.2.3.4,meningioma,\n"
            "b.jpg,1.2.3.5,notumor,P2\n"
            "\n")
    table = labels.parse(text, "labels.csv")
    assert table.rows == 3
    row, by = table.match("scans/a.dcm", "1.2.3.4")
    assert (row.label, row.patient, row.line, by) == ("glioma", "P1", 2, labels.PATH)
    row, by = table.match("other/x.dcm", "1.2.3.4")
    assert (row.label, row.patient, by) == ("meningioma", None, labels.SOP)
    assert table.match("c.dcm", None) is None
    report = labels.report(table, {2}, {"path": 1}, unlabelled=4)
    assert report["unmatched_rows"] == 2 and report["unmatched_lines"] == [3, 4]
    assert report["unlabelled_files"] == 4 and report["files_matched_by"] == {"path": 1, "sop_instance_uid": 0}


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("path,diagnosis\na.dcm,glioma\n", "unknown column 'diagnosis'"),
    ("path,patient\na.dcm,P1\n", "no 'label' column"),
    ("label,patient\nglioma,P1\n", "needs a 'path' or a 'sop_instance_uid' column"),
    ("path,label,label\na,b,c\n", "column 'label' appears twice"),
    ("path,label\na.dcm,\n", "line 2: empty label"),
    ("path,label\na.dcm,glioma,extra\n", "line 2: 3 fields, the header has 2"),
    ("path,label\na.dcm,glioma\n./a.dcm,notumor\n", "line 3: the same path as line 2 with another label"),
])
def test_bad_label_files_name_the_file_and_the_problem(text, message):
    with pytest.raises(UserError, match="--labels l.csv") as caught:
        labels.parse(text, "l.csv")
    assert message in str(caught.value)
