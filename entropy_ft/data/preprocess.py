"""Decode one image file into the pixels every later step sees, plus the hashes that find duplicates.

A DICOM file (``DICM`` preamble, or a ``.dcm`` name) is decoded by :mod:`.dicom` into 8-bit grey
frames, one image per frame; every other file takes steps 1 to 4 below. From step 5 on, every
image is treated alike. The steps, in order (recorded in the manifest by :func:`describe`):

1. decode with Pillow, refusing images over ``max_pixels`` before any pixel is decoded (decompression bombs);
2. apply the EXIF orientation, so a rotated phone photo of a film is upright;
3. convert any mode to 8 bits: ``1``/``L``/``P``/``RGB``/``CMYK``/``YCbCr`` by Pillow; alpha (``LA``,
   ``RGBA``, ``P`` with transparency) is composited onto black, the MRI background; more than
   8 bits (``I;16``, ``I``, ``F``) is scaled from the image's own minimum..maximum to 0..255, because
   scanners export 12-bit data in 16-bit files and dividing by 65535 would leave it nearly black;
4. keep grayscale single-channel: an RGB image whose three channels are equal is grayscale (the
   Kaggle set stores 3,820 of its slices that way) and is stored as one channel; the loader
   replicates it to three at load time;
5. resize so the longer side is ``image_size`` (Pillow bicubic, antialiased), keeping the aspect
   ratio, and pad the shorter side with black, centred. Padding rather than cropping keeps the
   whole skull and any lesion near its edge in the image; a centre crop of a non-square slice
   can cut a meningioma off the convexity, which is the very thing the label is about.

Exact duplicates are found by the sha256 of the pixels after step 4 (before resizing): the
full-resolution pixels are the most faithful identity of an image, independent of
``--image-size``, and the same picture saved as PNG and as lossless JPEG or with other metadata
still matches, where file bytes would not. Near-duplicates use a 256-bit perceptual hash
(DCT pHash, ``imagehash.phash`` with ``hash_size=16``) of the final pixels, the image the model sees.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

import imagehash
import numpy as np
import PIL
import pydicom
from PIL import Image, ImageOps

from entropy_ft.data import dicom
from entropy_ft.data import quarantine as q
from entropy_ft.data.quarantine import BadImage

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
PHASH_SIZE = 16  # 16x16 = 256-bit hash; 8x8 cannot tell MRI slices apart (all dark ovals at that scale)
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")


@dataclass(frozen=True)
class Settings:
    image_size: int
    max_pixels: int = DEFAULT_MAX_PIXELS
    # keys the patient hashes of DICOM files; None: none computed. Never written (describe leaves it out)
    patient_salt: bytes | None = field(default=None, repr=False)


def decode_file(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None,
                salt: bytes | None = None) -> tuple[list[np.ndarray], dicom.DicomMeta | None]:
    """Canonical 8-bit pixels of any supported file: one image, or one per frame of a multi-frame DICOM
    file, and the DICOM metadata (None for other formats).

    The bytes decide first: a ``DICM`` preamble is DICOM whatever the name. Then ``name`` (the path in
    its source; None when unknown, as in serving): ``.dcm`` is read as DICOM without a preamble, and a
    file without an image extension (which layouts accept because DICOM exports name files that way)
    that is not DICOM is not an image.
    """
    if not data:
        raise BadImage(q.EMPTY, "empty file (0 bytes)")
    if dicom.has_preamble(data) or (name or "").lower().endswith(dicom.EXTENSION):
        return dicom.decode(data, max_pixels, salt)
    if name is not None and dicom.named_like_dicom(name):
        raise BadImage(q.NOT_IMAGE, "no image extension and no DICOM preamble (DICM at byte 128)")
    return [decode(data, max_pixels)], None


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Canonical 8-bit pixels of an image file: (H, W) grayscale or (H, W, 3) colour, upright."""
    if not data:
        raise BadImage(q.EMPTY, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise BadImage(q.BOMB, f"{width}x{height} pixels is over the {max_pixels}-pixel limit")
                im.load()
                ImageOps.exif_transpose(im, in_place=True)
                return _to_8bit(im)
    except Image.DecompressionBombError as exc:
        raise BadImage(q.BOMB, f"decompression bomb ({exc})") from exc
    except BadImage:
        raise
    except Image.UnidentifiedImageError as exc:
        raise BadImage(q.UNREADABLE, "not an image Pillow can read") from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, TypeError) as exc:
        raise BadImage(q.UNREADABLE, f"cannot decode ({str(exc)[:200] or type(exc).__name__})") from exc


def _to_8bit(im: Image.Image) -> np.ndarray:
    if im.mode in HIGH_BIT_MODES:
        arr = _stretch(np.asarray(im))
    elif im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("LA" if im.mode in ("LA", "La") else "RGBA"), dtype=np.uint16)
        arr = ((rgba[..., :-1] * rgba[..., -1:] + 127) // 255).astype(np.uint8)
        if arr.shape[2] == 1:
            arr = arr[..., 0]
    elif im.mode in ("L", "RGB"):
        arr = np.asarray(im)
    elif im.mode == "1":
        arr = np.asarray(im.convert("L"))
    else:  # P, CMYK, YCbCr, LAB, HSV, ...
        arr = np.asarray(im.convert("RGB"))
    if arr.ndim == 3 and (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])):
        arr = arr[..., 0]
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _stretch(arr: np.ndarray) -> np.ndarray:
    """High-bit-depth pixels mapped from their own min..max onto 0..255 (a constant image becomes 0)."""
    values = arr.astype(np.float64)
    if arr.ndim == 3:  # e.g. "I;16" decoded with an extra axis by some plugins
        values = values[..., 0]
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    scaled = (np.where(finite, values, lo) - lo) * (255.0 / (hi - lo))
    return np.rint(scaled).astype(np.uint8)


def fit_and_pad(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize so the longer side is ``size`` (aspect ratio kept), then pad with black to
    ``size`` x ``size``, centred."""
    h, w = pixels.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        pixels = np.asarray(Image.fromarray(pixels).resize((nw, nh), Image.Resampling.BICUBIC))
    if (nh, nw) == (size, size):
        return np.ascontiguousarray(pixels)
    out = np.zeros((size, size, *pixels.shape[2:]), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = pixels
    return out


def pixel_sha256(pixels: np.ndarray) -> str:
    """Identity of decoded pixels; the shape is part of it, so two sizes never collide."""
    header = "x".join(str(d) for d in pixels.shape).encode() + b":"
    return hashlib.sha256(header + np.ascontiguousarray(pixels).tobytes()).hexdigest()


def perceptual_hash(pixels: np.ndarray) -> bytes:
    """256-bit DCT pHash of the (grayscale view of the) image, as 32 bytes."""
    img = Image.fromarray(pixels)
    bits = imagehash.phash(img if img.mode == "L" else img.convert("L"), hash_size=PHASH_SIZE).hash
    return np.packbits(bits.ravel()).tobytes()


@dataclass(frozen=True)
class Processed:
    pixels: np.ndarray  # final uint8 pixels, image_size x image_size [x 3]
    file_sha256: str
    pixel_sha256: str
    phash: bytes


@dataclass(frozen=True)
class ProcessedFile:
    images: list[Processed]  # one, or one per frame of a multi-frame DICOM file, in frame order
    dicom: dicom.DicomMeta | None  # None for every format but DICOM


def process(data: bytes, settings: Settings, name: str | None = None) -> ProcessedFile:
    """One file to its final pixels and hashes (see :func:`decode_file` for ``name``); raises BadImage
    for anything that is not a usable image."""
    frames, meta = decode_file(data, settings.max_pixels, name, settings.patient_salt)
    file_sha256 = hashlib.sha256(data).hexdigest()
    images = []
    for canonical in frames:
        final = fit_and_pad(canonical, settings.image_size)
        images.append(Processed(final, file_sha256, pixel_sha256(canonical), perceptual_hash(final)))
    return ProcessedFile(images, meta)


def describe(settings: Settings, near_max_distance: int) -> dict:
    """The manifest's ``preprocessing`` section: enough to reproduce every pixel."""
    return {
        "kind": "pillow",
        "pillow_version": PIL.__version__,
        "image_size": settings.image_size,
        "max_pixels": settings.max_pixels,
        "exif_transpose": True,
        "bit_depth": "8; more than 8 bits scaled from the image's min..max to 0..255",
        "alpha": "composited onto black",
        "channels": "1 for grayscale (including RGB with three equal channels), else 3 (RGB); "
        "the loader replicates grayscale to 3 channels",
        "resize": "longer side to image_size, Pillow bicubic (antialiased), aspect ratio kept",
        "pad": "black, centred, to image_size x image_size (no crop: the whole skull stays in view)",
        "exact_duplicate_hash": "sha256 of the 8-bit pixels before resizing, shape included",
        "near_duplicate_hash": {"method": "imagehash.phash", "hash_size": PHASH_SIZE, "bits": PHASH_SIZE**2,
                                "on": "final pixels", "max_hamming_distance": near_max_distance},
        "dicom": {
            "pydicom_version": pydicom.__version__,
            "recognised_by": "DICM preamble at byte 128, or a .dcm name",
            "modality_lut": "Rescale Slope/Intercept or Modality LUT Sequence (pydicom apply_modality_lut)",
            "voi": "the file's VOI LUT, else its first Window Center/Width (pydicom apply_voi / apply_windowing), "
                   f"else the {dicom.PERCENTILES[0]}..{dicom.PERCENTILES[1]} percentile window of the frame; "
                   "that output range onto 0..255",
            "monochrome1": "inverted (bright = high signal)",
            "colour": "RGB, YBR and palette colour to grey by ITU-R 601 luma",
            "frames": "one image per frame, source '<path>#frame=N' (N from 1)",
            "max_pixels": "counts every frame",
        },
    }
