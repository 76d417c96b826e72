"""DICOM files to 8-bit grey frames, the way a radiologist's viewer would first show them.

pydicom parses the file and its plugins (pylibjpeg: JPEG, JPEG-LS, JPEG 2000, RLE) decode the
pixel data; this module only decides how stored values become 0..255:

1. the Modality LUT (Rescale Slope and Intercept, or a Modality LUT Sequence) turns stored
   values into scanner units;
2. the file's own VOI LUT, else its first Window Center/Width, picks the range of interest, as
   the modality chose it for viewing; a file with neither gets a percentile window
   (0.5 to 99.5 % of that frame's values), which ignores a few hot pixels and the empty
   background. Which of the three was used is returned, counted in the manifest;
3. MONOCHROME1 (bright = low values) is inverted so that every image has bright = high signal;
4. colour (RGB, YBR, palette) becomes grey by ITU-R 601 luma, as Pillow's ``L`` conversion does.

A multi-frame file gives one image per frame. Nothing read from the header leaves :func:`decode`
except the frames, the windowing method, a salted hash of the PatientID and the SOPInstanceUID
(which ingestion matches against a ``--labels`` file and never writes). Quarantine reasons are
fixed phrases and standard DICOM terms, never a value from the file, because headers carry
personal data.
"""

from __future__ import annotations

import io
import posixpath
import warnings
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    get_decoder,
    iter_pixels,
)
from pydicom.pixels.utils import get_nr_frames
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from entropy_ft.data import quarantine as q
from entropy_ft.data.patients import patient_key
from entropy_ft.data.quarantine import BadImage

MAGIC_OFFSET = 128  # the Part 10 preamble is 128 bytes, then "DICM"
MAGIC = b"DICM"
EXTENSION = ".dcm"
PERCENTILES = (0.5, 99.5)
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, Pillow's RGB -> L
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
UNDEFINED_LENGTH = 0xFFFFFFFF
VOI_LUT, WINDOW, PERCENTILE, COLOUR = "voi-lut", "window", "percentile", "colour"


@dataclass(frozen=True)
class DicomMeta:
    """What a DICOM file says besides its pixels, reduced to what ingestion may use and record."""

    windowing: str  # VOI_LUT, WINDOW, PERCENTILE or COLOUR
    patient: str | None = field(default=None, repr=False)  # salted hash of PatientID; None without salt or ID
    sop_instance_uid: str | None = field(default=None, repr=False)  # matched against --labels, never written


def has_preamble(data: bytes) -> bool:
    """Whether the bytes are a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    return data[MAGIC_OFFSET : MAGIC_OFFSET + len(MAGIC)] == MAGIC


def named_like_dicom(path: str) -> bool:
    """``.dcm``, no extension, or a numeric one: how DICOM exports name files (``IM000001``, or the
    SOPInstanceUID ``1.2.840.113619.2.55.3.1``). Only the bytes tell whether such a file is DICOM."""
    ext = posixpath.splitext(path)[1].lower()
    return ext in ("", EXTENSION) or ext[1:].isdigit()


def decode(data: bytes, max_pixels: int, salt: bytes | None = None) -> tuple[list[np.ndarray], DicomMeta]:
    """Frames of 8-bit grey pixels, (rows, columns) uint8 one per frame, of a DICOM file (with or
    without the Part 10 preamble), and what else ingestion may know of it.

    ``salt`` keys the patient hash; None leaves it out (serving has no use for it). Raises
    :class:`BadImage` for a truncated file, missing pixel data, an unsupported transfer syntax,
    more than ``max_pixels`` pixels over all frames, or anything else pydicom cannot read.
    """
    ds = _read(data)
    if not any(tag in ds for tag in PIXEL_TAGS):
        raise BadImage(q.DICOM_NO_PIXELS, "DICOM file without pixel data (a report, a DICOMDIR, or cut "
                                            "off before its pixels)")
    syntax = _transfer_syntax(ds)
    try:
        rows, columns, frames = int(ds.Rows), int(ds.Columns), get_nr_frames(ds, warn=False)
    except (AttributeError, TypeError, ValueError) as exc:
        raise BadImage(q.UNREADABLE, "DICOM image without usable Rows/Columns/Number of Frames") from exc
    if rows * columns * frames > max_pixels:  # the header's numbers stay out of the reason, like every header value
        raise BadImage(q.BOMB, f"DICOM frames with more pixels in all than the {max_pixels}-pixel limit")
    how = _windowing(ds)
    voi_max = _voi_lut_max(ds) if how == VOI_LUT else 0.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about header oddities it has already worked around
            frames_8bit = [_grey(frame, ds, how, voi_max) for frame in iter_pixels(ds)]
    except Exception as exc:  # decoder plugins raise many kinds; reasons carry the kind, never the message
        kind = q.DICOM_TRUNCATED if isinstance(exc, EOFError) else q.UNREADABLE
        raise BadImage(kind, f"cannot decode the {_syntax_name(syntax)} pixel data ({type(exc).__name__})") from exc
    patient = patient_key(ds.get("PatientID"), salt) if salt is not None else None
    sop = str(ds.get("SOPInstanceUID") or "").strip() or None
    return frames_8bit, DicomMeta(how, patient, sop)


def _read(data: bytes) -> pydicom.Dataset:
    """The parsed dataset; a file cut inside an element is a truncation, which pydicom reads without complaint."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble(data))
            raw = [ds.get_item(tag) for tag in ds.keys()]
    except InvalidDicomError as exc:
        raise BadImage(q.UNREADABLE, "not a DICOM file") from exc
    except EOFError as exc:
        raise BadImage(q.DICOM_TRUNCATED, "DICOM file ends inside its header") from exc
    except Exception as exc:  # pydicom raises many kinds for malformed headers
        raise BadImage(q.UNREADABLE, f"not a readable DICOM file ({type(exc).__name__})") from exc
    for elem in raw:
        if (isinstance(elem, RawDataElement) and elem.length != UNDEFINED_LENGTH
                and isinstance(elem.value, bytes) and len(elem.value) < elem.length):
            if not has_preamble(data):  # without the preamble, any bytes "parse" until a length overshoots
                raise BadImage(q.UNREADABLE, "not a DICOM file (no DICM preamble, and no data set parses)")
            raise BadImage(q.DICOM_TRUNCATED, "DICOM file ends inside an element (truncated)")
    if not len(ds):  # pydicom drops every element when the file ends inside an undefined-length one
        if has_preamble(data):
            raise BadImage(q.DICOM_TRUNCATED, "DICOM file ends before its data set is complete (truncated)")
        raise BadImage(q.UNREADABLE, "not a DICOM file (no data elements)")
    return ds


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    """The file's transfer syntax, checked against the installed decoders; inferred for a file without
    file meta (no preamble), from how pydicom found it encoded."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        implicit, little = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    syntax = UID(syntax)
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise BadImage(q.DICOM_UNSUPPORTED, f"transfer syntax {_syntax_name(syntax)} has no installed decoder")
    return syntax


def _syntax_name(syntax: UID) -> str:
    """The standard name of a transfer syntax; a private one is not named (its UID root can identify a site)."""
    return syntax.name if syntax.name != str(syntax) else "(private transfer syntax)"


def _windowing(ds: pydicom.Dataset) -> str:
    """How :func:`_grey` maps the frames of this file to 0..255. A window the file gets wrong (width
    below 1, an unknown VOI LUT Function, malformed values) falls back to the percentile window."""
    if ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        return COLOUR
    if ds.get("VOILUTSequence"):
        return VOI_LUT
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            _window_range(ds)
            return WINDOW
        except (ValueError, TypeError, IndexError, AttributeError):
            return PERCENTILE
    return PERCENTILE


def _voi_lut_max(ds: pydicom.Dataset) -> float:
    """The first VOI LUT's output maximum, 2^bits - 1. pydicom 3.0 looks an 8-bit LUT up with uint8
    indices, which wrap for inputs over 255, so such a LUT is declared 16-bit in this (parsed, private)
    dataset: the same entries, held in a wider type."""
    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    if bits == 8:
        item.LUTDescriptor = [entries, first, 16]
    return float(2**bits - 1)


def _window_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """The output range of the file's first window: where -inf and +inf land (pydicom derives it from
    Bits Stored, Pixel Representation and the rescale)."""
    with np.errstate(over="ignore"):
        lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds, 0)
    return float(lo), float(hi)


def _grey(frame: np.ndarray, ds: pydicom.Dataset, how: str, voi_max: float) -> np.ndarray:
    """One decoded frame to (rows, columns) uint8, windowed ``how`` (``voi_max``: the VOI LUT's output maximum)."""
    if how == COLOUR:
        return _luma(frame, ds)
    values = apply_modality_lut(frame, ds)
    if how == VOI_LUT:
        out, lo, hi = apply_voi(np.rint(values).astype(np.int64), ds, 0), 0.0, voi_max
    elif how == WINDOW:
        out, (lo, hi) = apply_windowing(values, ds, 0), _window_range(ds)
    else:
        out, (lo, hi) = values, (float(v) for v in np.percentile(values, PERCENTILES))
        if not hi > lo:  # almost every pixel has one value: stretch whatever else there is
            lo, hi = float(np.min(values)), float(np.max(values))
    grey = _to_byte(out, lo, hi)
    return 255 - grey if ds.PhotometricInterpretation == "MONOCHROME1" else grey


def _to_byte(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """lo..hi onto 0..255, clipped; an empty range (a constant frame) is black."""
    if not hi > lo:
        return np.zeros(values.shape, np.uint8)
    scaled = (np.asarray(values, np.float64) - lo) * (255.0 / (hi - lo))
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def _luma(frame: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """A colour frame (pydicom has already turned YBR into RGB) to grey, full scale = the stored bit depth."""
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
        full = float(np.iinfo(frame.dtype).max)
    else:
        full = float(2 ** int(ds.get("BitsStored") or 8) - 1)
    if frame.ndim != 3:  # a single-sample image labelled as colour: treat the samples as grey
        return _to_byte(frame, 0.0, full)
    return _to_byte(frame.astype(np.float64) @ LUMA, 0.0, full)
