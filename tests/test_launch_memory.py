"""The plan's memory estimate against the peak memory of a real training step on CPU.

How the peak is measured, and why this way: ``tracemalloc`` does not see torch's allocations,
and ``torch.profiler(profile_memory=True)`` on CPU records only per-operator totals (it reported
no usable allocation events in a probe here), so neither gives a peak. The kernel does: a fresh
process resets its resident-set high-water mark by writing ``5`` to ``/proc/self/clear_refs``
(Linux >= 4.0), runs one steady-state step (the second, so AdamW's moments already exist, as in
every later step) and reads ``VmHWM`` from ``/proc/self/status``. The baseline is the resident
size once torch, the trainer and the batch are loaded but before the model is built, so the
measured peak holds the weights, gradients, optimizer state and activations the plan counts.
``MALLOC_MMAP_THRESHOLD_`` pins glibc's mmap threshold: otherwise glibc raises it after the
first large free and keeps later freed tensors in its heap, and the resident size would stop
following the live tensors. What remains beyond the plan's terms is about 60 MB of runtime
workspace (allocator arenas, OpenMP/oneDNN buffers; measured with a 100K model on 16 tokens),
about 7% of this case.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# 3M: 6 layers of width 192, micro-batch 8 x 512 tokens, 8 images per sequence in 4 documents.
SIZE, MICRO, SEQ_LEN, IMAGES, DOCS = "3M", 8, 512, 8, 4


def _status(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure(size: str, micro: int, seq_len: int, images: int, docs: int) -> dict:
    """Peak bytes of the second training step over the pre-model baseline (run in a fresh process)."""
    import torch

    import mm1model.parallelize  # noqa: F401  (imports belong to the baseline, not the step)
    import torch.distributed.checkpoint.state_dict  # noqa: F401
    from mm1model.tokens import IGNORE_INDEX, IMAGE_ID
    from mm1model.train import (TrainConfig, build_model, build_optimizer, clip_gradients, forward_backward,
                                model_config)
    from mm1model.train_config import OptimizerConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = TrainConfig(size=size, optimizer=OptimizerConfig(lr=1e-3, weight_decay=0.0), batch_size=micro, device="cpu")
    mcfg = model_config(config)
    k = mcfg.tokens_per_image
    ids = torch.randint(5, mcfg.lm.vocab_size, (micro, seq_len))
    for i in range(images):  # image runs of k placeholders, a text token or two between them
        ids[:, 1 + i * (k + 2): 1 + i * (k + 2) + k] = IMAGE_ID
    following = ids.roll(-1, 1)
    labels = following.masked_fill(following == IMAGE_ID, IGNORE_INDEX)
    doc_len = seq_len // docs
    doc_ids = (torch.arange(seq_len) // doc_len).clamp(max=docs - 1).expand(micro, seq_len).contiguous()
    position_ids = (torch.arange(seq_len).expand(micro, seq_len) - doc_ids * doc_len).contiguous()
    side = mcfg.vit.image_size
    batch = {"input_ids": ids, "labels": labels, "doc_ids": doc_ids, "position_ids": position_ids,
             "images": [torch.randn(3, side, side) for _ in range(micro * images)]}
    base = _status("VmRSS")
    model, _ = build_model(config, torch.device("cpu"))
    optimizer = build_optimizer(model, config)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward_backward(model, iter([batch]), 1, torch.device("cpu"))
        clip_gradients(model, 1.0)
        optimizer.step()

    step()
    optimizer.zero_grad(set_to_none=True)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    step()
    return {"peak_bytes": _status("VmHWM") - base}


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_cpu_memory_estimate_within_25_percent_of_measured_peak():
    from mm1model.train import TrainConfig, model_config
    from scaling.plan import memory_estimate

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, SIZE, str(MICRO), str(SEQ_LEN), str(IMAGES), str(DOCS)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    cfg = model_config(TrainConfig(size=SIZE))
    estimate = memory_estimate(cfg, micro_batch_size=MICRO, seq_len=SEQ_LEN, images_per_sequence=IMAGES,
                               world_size=1, bf16=False)
    ratio = estimate.total / measured
    # measured 622 MB against an estimate of 565 MB on the project's machine
    assert 0.75 <= ratio <= 1.25, f"estimate {estimate.total / 1e6:.0f} MB, measured {measured / 1e6:.0f} MB"
    assert estimate.activations > 0.8 * estimate.total  # the activations are what this checks


if __name__ == "__main__":
    size, *numbers = sys.argv[1:]
    print(json.dumps(measure(size, *map(int, numbers))))
