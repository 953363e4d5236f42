"""Everything that depends on the kind of device a trainer process runs on, in one place.

A trainer process trains on one device (``mm1model.distributed.task_device``: ``cuda:LOCAL_RANK``
or the CPU). What changes with its kind:

* :func:`configure`: the process's device settings, once, before the model is built: the
  current CUDA device, and TF32 tensor cores for the fp32 matmuls and convolutions that remain
  under bf16 autocast (the fused loss accumulates the head's weight gradient in fp32, a
  (V, C) += (V, rows) x (rows, C) matmul per chunk).
* :func:`to_device`: a batch onto the device, asynchronously on CUDA (pinned host memory).
* :func:`autocast`: bf16 autocast on CUDA, none on CPU (the CPU runs fp32).
* :func:`synchronize`: wait for the device's queued work (for timing only).
* :func:`peak_flops` / :func:`device_peak_flops`: the MFU denominator, from the datasheet table
  :data:`mm1model.paper.GPU_PEAK_FLOPS_BY_DEVICE_NAME`, by exact device name.
* :func:`rng_state` / :func:`set_rng_state`: the CPU, numpy, Python and CUDA generators as JSON
  values (a checkpoint stores them as JSON, never as pickles).
"""
from __future__ import annotations

import contextlib
import random
from typing import Any

import numpy as np
import torch

from mm1model import paper


def enable_tf32() -> None:
    """Let cuBLAS fp32 matmuls and cuDNN fp32 convolutions use TF32 tensor cores (10-bit
    mantissa inputs, fp32 accumulation). Through the per-backend flags: unlike
    ``torch.set_float32_matmul_precision("high")`` they leave CPU (oneDNN) matmuls in full fp32,
    and unlike the newer ``fp32_precision`` attributes they keep torch's legacy getters (which
    inductor reads) answering instead of raising on a mix of the two APIs."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def configure(device: torch.device) -> None:
    """Set up this process for training on ``device``; call once, before building the model.
    On CUDA: make ``device`` the current device (NCCL, ``torch.cuda`` calls without a device and
    the CUDA RNG state all use it) and enable TF32 (:func:`enable_tf32`). Nothing on CPU."""
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)
    enable_tf32()


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A copy of ``batch`` with its tensors, and the tensors of its lists (``images``), on
    ``device``; other values as they are. The trainer's batches hold ``input_ids``, ``labels``,
    ``doc_ids``, ``position_ids``, ``source`` (tensors) and ``images`` (a list of tensors).

    On CUDA each host tensor is first copied to pinned (page-locked) memory, then sent with
    ``non_blocking=True``: from pageable memory the driver stages a "non-blocking" copy
    synchronously, so only a pinned source lets the copy run while the GPU still computes. The
    pinned buffer is safe to drop at once (torch's host allocator keeps it until the copy ends).
    Elsewhere a plain ``.to(device)`` (a no-op for CPU tensors on the CPU)."""
    if device.type == "cuda":
        def move(t: torch.Tensor) -> torch.Tensor:
            if t.device.type == "cpu" and not t.is_pinned():
                t = t.pin_memory()
            return t.to(device, non_blocking=True)
    else:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = move(value)
        elif isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
            out[key] = [move(v) for v in value]
        else:
            out[key] = value
    return out


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The forward's autocast context: bf16 on CUDA (matmuls and convolutions in bf16, softmax,
    norms and losses in fp32, as torch's autocast op lists decide), disabled elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has run everything queued on it (CUDA runs asynchronously: a timer
    read without this measures the launches, not the work). A no-op on CPU. For timing only: in
    the step it is a host sync."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the GPU that ``torch.cuda.get_device_name`` calls
    ``device_name`` (:data:`mm1model.paper.GPU_PEAK_FLOPS_BY_DEVICE_NAME`), None for a name not
    in the table: never a guess from part of the name (an "H100 PCIe" is not an H100 SXM)."""
    return paper.GPU_PEAK_FLOPS_BY_DEVICE_NAME.get(device_name)


def device_peak_flops(device: torch.device) -> float | None:
    """:func:`peak_flops` of a CUDA ``device`` by its reported name; None on CPU."""
    if device.type != "cuda":
        return None
    return peak_flops(torch.cuda.get_device_name(device))


def rng_state() -> dict[str, Any]:
    """The state of every generator the trainer draws from, as JSON values (ints, floats,
    strings and lists): ``torch`` (the CPU generator's bytes), ``numpy`` (the legacy global
    MT19937: kind, 624 keys, position, has_gauss, cached gaussian), ``python`` (``random``'s
    version, 625 words, gauss_next) and, once this process has used CUDA, ``cuda`` (the current
    device's generator bytes: one GPU per process, so never the other GPUs' states, which would
    create a context on each of them). :func:`set_rng_state` restores it."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, words, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(words), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from :func:`rng_state`'s dict (also after a JSON round trip).
    The ``cuda`` state goes to the current CUDA device: call :func:`configure` first."""
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, words, gauss_next = state["python"]
    random.setstate((version, tuple(words), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))
