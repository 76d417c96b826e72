"""Training checkpoints: one file, written atomically, on a local path or S3.

A checkpoint holds everything a resumed run needs to continue exactly where the killed one
stopped: model, optimizer, scheduler and grad-scaler state, the position (epoch and batches
done in it), the running sums of the epoch, the torch RNG state at that position, early-
stopping state, the best-on-validation weights and the per-epoch history. Random draws of
the data pipeline are a function of (seed, epoch, position) (see
:mod:`entropy_ft.data.resumable`), so no loader or worker RNG state needs saving.

``fingerprint`` is the training recipe (data, selection, hyper-parameters); resuming under a
different one is refused rather than silently mixing two runs.
"""

from __future__ import annotations

import hashlib
import io
import os

import torch

from entropy_ft import storage
from entropy_ft.errors import UserError
from entropy_ft.logs import log

CHECKPOINT_FILE = "last.pt"


def checkpoint_dir_for(out: str) -> str:
    """Where a run that writes its Model dir to ``out`` checkpoints, unless told otherwise.

    On a cluster, ``ENTROPY_FT_CHECKPOINT_ROOT`` (durable storage, set by the pipeline's settings
    ConfigMap) plus a key hashed from ``out``: KFP keeps a task's output URI across retries of the
    same task and makes it unique per run and ParallelFor branch, so a retried (preempted) pod
    finds its own checkpoint and resumes. Elsewhere ``<out>/checkpoint``.
    """
    root = os.environ.get("ENTROPY_FT_CHECKPOINT_ROOT", "").strip()
    if not root:
        return storage.join(out, "checkpoint")
    return f"{root.rstrip('/')}/{hashlib.sha256(out.encode()).hexdigest()[:20]}"


def checkpoint_uri(directory: str) -> str:
    return storage.join(directory, CHECKPOINT_FILE)


def save_checkpoint(directory: str, state: dict) -> None:
    """Serialise ``state`` (tensors, numbers, strings, lists, dicts) and write it in one atomic step."""
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_bytes(checkpoint_uri(directory), buf.getvalue())


def load_checkpoint(directory: str, fingerprint: dict) -> dict | None:
    """The checkpoint in ``directory``, or None when there is none; refused if made by another recipe."""
    uri = checkpoint_uri(directory)
    if not storage.exists(uri):
        return None
    data = storage.read_bytes(uri)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file; torch raises many kinds
        raise UserError(f"{uri}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from exc
    saved = state.get("fingerprint", {})
    differences = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
    if differences:
        detail = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in list(differences.items())[:4])
        raise UserError(
            f"{uri}: checkpoint was made by a different run ({detail}); drop --resume or use another --checkpoint-dir"
        )
    log.info("resuming from %s (epoch %d, %d batches into it)", uri, state["epoch"] + 1, state["batches_done"])
    return state
