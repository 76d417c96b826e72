"""DICOM files made at test time from the test files pydicom ships (no patient data is committed).

``MR_small.dcm`` (64 x 64 MR slice, with a window) comes in several transfer syntaxes with the
same pixels; the rest is derived from it: other pixels, MONOCHROME1, several frames, a missing
pixel element, a transfer syntax nothing decodes, a patient and an instance UID of our own.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless

# the same pixels in six transfer syntaxes
SYNTAX_VARIANTS = ("MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
                   "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm")
MPEG2 = UID("1.2.840.10008.1.2.4.100")  # a video transfer syntax no pixel decoder supports


def shipped_path(name: str) -> str:
    path = get_testdata_file(name, download=False)  # only files in the pydicom wheel: no network
    assert path, f"pydicom does not ship {name}"
    return str(path)


def shipped(name: str) -> bytes:
    with open(shipped_path(name), "rb") as fh:
        return fh.read()


def dataset(name: str = "MR_small.dcm") -> pydicom.Dataset:
    return pydicom.dcmread(shipped_path(name))


def to_bytes(ds: pydicom.Dataset, preamble: bool = True) -> bytes:
    buffer = io.BytesIO()
    if preamble:
        ds.save_as(buffer, enforce_file_format=True)
    else:  # a bare data set, as old archives store it: no 128-byte preamble, no DICM, no file meta
        ds.preamble = None
        del ds.file_meta
        ds.save_as(buffer, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def mr(index: int = 0, patient: str = "PAT-0001", sop: str | None = None, frames: int = 1,
       syntax: UID = ExplicitVRLittleEndian, **attributes) -> bytes:
    """An MR slice (``frames`` of them) with pixels of its own per ``index`` and frame, the given
    PatientID, SOPInstanceUID (default: derived from ``index``) and any other attributes."""
    ds = dataset()
    base = ds.pixel_array.astype(np.int16)
    stack = np.stack([np.roll(np.rot90(base, k=index + f), 7 * (index + f), axis=1) for f in range(frames)])
    ds.PixelData = (stack if frames > 1 else stack[0]).astype("<i2").tobytes()
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PatientID = patient
    ds.SOPInstanceUID = sop or instance_uid(index)
    for name, value in attributes.items():
        setattr(ds, name, value)
    if syntax == RLELossless:
        ds.compress(RLELossless)
    return to_bytes(ds)


def instance_uid(index: int) -> str:
    return f"1.2.826.0.1.3680043.10.1234.{index + 1}"


def without_pixels() -> bytes:
    """A DICOM object with no image, like a structured report."""
    ds = dataset()
    del ds.PixelData
    return to_bytes(ds)


def unsupported_syntax() -> bytes:
    """Encapsulated pixels that claim a transfer syntax no installed decoder reads."""
    ds = dataset("MR_small_RLE.dcm")
    ds.file_meta.TransferSyntaxUID = MPEG2
    return to_bytes(ds)


def pilot_cohort(patients_per_class: int = 12, slices: int = 3) -> dict[str, bytes]:
    """The issue's pilot study: glioma and notumor patients, a few slices each, every slice its own pixels
    (no duplicates: rotated, rolled in both axes and with its own speckle, so not even pHash pairs them)."""
    rng = np.random.default_rng(0)
    files = {}
    base = dataset().pixel_array.astype(np.int16)
    for k in range(2 * patients_per_class):
        cls = ("glioma", "notumor")[k % 2]
        for s in range(slices):
            i = k * slices + s
            pixels = np.roll(np.rot90(base, k=i), (7 * i, 11 * i), axis=(0, 1))
            pixels = pixels + rng.integers(0, 400, pixels.shape) * (rng.random(pixels.shape) < 0.3)
            ds = dataset()
            ds.PixelData = pixels.astype("<i2").tobytes()
            ds.PatientID, ds.SOPInstanceUID = f"PILOT-{k:03d}", instance_uid(1000 + i)
            files[f"{cls}/PILOT-{k:03d}/slice{s}.dcm"] = to_bytes(ds)
    return files
