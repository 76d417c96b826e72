"""The servable model: an MLflow pyfunc that takes encoded image files and returns class probabilities.

Input
    A pandas DataFrame with one column ``image``: the bytes of an image file (JPEG, PNG or
    anything Pillow reads, or a single-frame DICOM file), one row per image, exactly as stored on disk. Over REST
    (``mlflow models serve``) the same column carries base64 strings, which MLflow decodes
    because the signature declares the column ``binary``::

        {"dataframe_split": {"columns": ["image"], "data": [["/9j/4AAQSkZJRg..."]]}}

Output
    A DataFrame with one row per image: ``predicted_class`` (the class name, or ``uncertain`` when
    the model was trained with ``--abstain-below P`` and its top probability is below P), then one float
    column per class, named by the class, with its calibrated probability (rows sum to 1).

Every image goes through the same steps as training data: the ingest preprocessing of the
Dataset the model was trained on (recorded in model.json), replication of grayscale to three
channels, a resize to the model's input size, and :func:`entropy_ft.data.loader.to_model_input`.

The logged model imports :mod:`entropy_ft` (pip requirement ``entropy-ft``), so it serves in
any environment where this project is installed: ``mlflow models serve -m models:/NAME@champion
--env-manager local``. Weights and model.json travel inside the MLflow model as an artifact.
"""

from __future__ import annotations

import io
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from entropy_ft.artifacts import ModelMeta

PREDICTED = "predicted_class"
UNCERTAIN = "uncertain"  # the answer below the model's abstention threshold
IMAGE_COLUMN = "image"
BATCH = 64


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around a Model dir (``weights.safetensors`` + ``model.json``)."""

    def load_context(self, context) -> None:
        from entropy_ft.model.model_dir import load_model_dir

        self.model, meta = load_model_dir(context.artifacts["model_dir"], "cpu")
        self.meta = meta
        self.classes = list(meta.classes)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        images = list(model_input[IMAGE_COLUMN])
        probs = predict_proba(self.model, self.meta, images)
        frame = pd.DataFrame(probs, columns=self.classes)
        frame.insert(0, PREDICTED, answers(probs, self.classes, self.meta.abstain_below))
        return frame


def answers(probs: np.ndarray, classes: list[str], abstain_below: float | None) -> list[str]:
    """The top class per row, or ``uncertain`` where the top probability is below ``abstain_below``."""
    if not len(probs):
        return []
    top = probs.argmax(axis=1)
    sure = probs.max(axis=1) >= (abstain_below or 0.0)
    return [classes[k] if ok else UNCERTAIN for k, ok in zip(top, sure)]


def predict_proba(model, meta: ModelMeta, images: list[bytes]) -> np.ndarray:
    """Calibrated probabilities (N x classes) for encoded images, in batches, on the CPU: the softmax of
    the logits divided by the temperature fitted on the validation split (1 for a model without one)."""
    import torch

    from entropy_ft.data.loader import to_model_input

    out = [np.empty((0, len(meta.classes)), dtype=np.float64)]
    with torch.inference_mode():
        for start in range(0, len(images), BATCH):
            chunk = images[start : start + BATCH]
            batch = torch.stack([model_pixels(data, meta.preprocessing, meta.image_size) for data in chunk])
            logits = model(to_model_input(batch, torch.device("cpu"), channels_last=False))
            out.append(torch.softmax(logits.float() / meta.temperature, dim=1).double().numpy())
    return np.concatenate(out)


def model_pixels(data: bytes, preprocessing: dict, size: int):
    """Encoded image -> uint8 3 x size x size tensor, exactly as training saw it: the ingest
    decode (DICOM windowing included) and pad-to-square at the Dataset's size, then the loader's
    resize to the model's. A multi-frame DICOM file is refused: a row is one image, and a volume
    would need one answer per frame."""
    import torch
    from torchvision.transforms.v2 import functional as F

    from entropy_ft.data.preprocess import BadImage, decode_file, fit_and_pad

    ingest_size = int((preprocessing.get("ingest") or {}).get("image_size") or size)
    try:
        frames, _ = decode_file(bytes(data))
    except BadImage as exc:
        raise ValueError(f"column {IMAGE_COLUMN!r}: {exc.reason}") from None
    if len(frames) != 1:
        raise ValueError(f"column {IMAGE_COLUMN!r}: a DICOM file of {len(frames)} frames; send one frame per row")
    pixels = fit_and_pad(frames[0], ingest_size)
    tensor = torch.tensor(pixels, dtype=torch.uint8)  # a copy: decoded arrays may be read-only
    tensor = tensor.unsqueeze(0).expand(3, -1, -1) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    if tensor.shape[1:] != (size, size):
        tensor = F.resize(tensor.contiguous(), [size, size], antialias=True)
    return tensor.contiguous()


def signature(classes: list[str]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", PREDICTED)] + [ColSpec("double", c) for c in classes]
    return ModelSignature(inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]), outputs=Schema(outputs))


def input_example(meta: dict):
    """One PNG phantom at the model's input size: small, and a real image the model can score."""
    import pandas as pd
    from PIL import Image

    from entropy_ft.data.synthetic import phantom

    size = int(meta["preprocessing"]["image_size"])
    buffer = io.BytesIO()
    Image.fromarray(phantom(0, 0, size, seed=0)).save(buffer, format="PNG")
    return pd.DataFrame({IMAGE_COLUMN: [buffer.getvalue()]})


def pip_requirements() -> list[str]:
    """The project and the libraries it needs at inference, pinned to what is installed here."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for package in ("entropy-ft", "torch", "torchvision", "numpy", "pillow", "safetensors", "pandas", "pydicom",
                    "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"):
        try:
            reqs.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            reqs.append(package)
    return reqs


# The model is logged "from code": MLflow stores this file and runs it at load time, instead of
# unpickling an object, so loading never executes pickled bytes and survives refactors here.
MODEL_CODE = """from entropy_ft.tracking.serving import ImageClassifier
import mlflow.models

mlflow.models.set_model(ImageClassifier())
"""


def log_pyfunc(model_dir: Path, meta: dict, name: str = "model"):
    """Log the Model dir as a pyfunc model under the active run; returns MLflow's ModelInfo."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="entropy-ft-pyfunc-") as tmp:
        code = Path(tmp, "image_classifier.py")
        code.write_text(MODEL_CODE)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(code),
            artifacts={"model_dir": str(model_dir)},
            signature=signature(list(meta["classes"])),
            input_example=input_example(meta),
            pip_requirements=pip_requirements(),
        )
