"""The LM head and its cross-entropy in one pass, a chunk of rows at a time.

``F.cross_entropy(F.linear(h, W), labels)`` materialises the (rows, vocab) logits, then a
log-softmax of the same size in the forward, and reads both again in the backward. Here each
chunk of rows computes its logits, turns them in place into the gradient of the loss with
respect to the logits (softmax minus one-hot, scaled), and immediately folds that into the
gradients of ``h`` and ``W``; the backward only scales them. A chunk's logits stay in cache
(128 rows x 4096 vocabulary = 2 MB on CPU), the full logits never exist, and rows whose label is
ignored (image tokens, padding) never reach the head at all. Measured on this machine's CPU
(``python -m mm1model.bench --compare``): the LM training step 4-9% faster, the cross-entropy's
share of it from 6% to about 2%. Same mathematics as :func:`lm_loss`, the plain reference kept below: the
tests hold loss and gradients to float rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mm1model.tokens import IGNORE_INDEX

# Logit elements per chunk: 2 MB of float32 keeps a chunk in a CPU core's cache; on a GPU the
# chunk only bounds memory (512 MB), and larger GEMMs run closer to peak.
_CHUNK_ELEMENTS = {"cpu": 2 ** 19, "cuda": 2 ** 27}


def chunk_rows(vocab_size: int, device_type: str) -> int:
    """Rows of the head computed at once for a ``vocab_size`` head on ``device_type`` ("cpu", "cuda")."""
    return max(1, _CHUNK_ELEMENTS.get(device_type, 2 ** 19) // vocab_size)


class _LinearCrossEntropy(torch.autograd.Function):
    """(loss, ce, z) of ``h @ W.T`` against ``target`` (every row labelled); see the module."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, z_coef: float,
                rows: int, grads: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = h.device.type
        # The matmuls run in autocast's dtype when it is on (bf16 on GPU), as the head would;
        # the softmax and the loss in float32, as lm_loss does.
        compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        n = h.shape[0]
        count = max(n, 1)
        ce_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        z_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        w = weight.to(compute)
        with torch.autocast(device, enabled=False):
            for start in range(0, n, rows):
                h_chunk, t_chunk = h[start:start + rows].to(compute), target[start:start + rows]
                logits = (h_chunk @ w.t()).float()  # (c, V)
                lse = torch.logsumexp(logits, dim=-1)  # (c,)
                ce_sum += (lse - logits.gather(1, t_chunk[:, None]).squeeze(1)).sum()
                if z_coef:
                    z_sum += lse.square().sum()
                if not grads:  # under no_grad (a loss-only forward): one matmul, not three
                    continue
                # d(ce + z)/d logits = softmax x (1 + 2 z lse) - one_hot, per row, over count rows
                grad = logits.sub_(lse[:, None]).exp_()  # in place: the softmax
                grad.mul_(((1.0 + 2.0 * z_coef * lse) / count)[:, None] if z_coef else 1.0 / count)
                grad.scatter_add_(1, t_chunk[:, None], grad.new_full((len(t_chunk), 1), -1.0 / count))
                grad_h[start:start + rows] = (grad.to(compute) @ w).to(h.dtype)
                # out= rather than addmm_: the same kernel, and FlopCounterMode counts it
                torch.addmm(grad_w, grad.t(), h_chunk.float(), out=grad_w)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        ce, z = ce_sum / count, z_coef * z_sum / count
        ctx.mark_non_differentiable(ce, z)
        return ce + z, ce, z

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _ce: torch.Tensor, _z: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss.to(grad_h.dtype), grad_w * grad_loss.to(grad_w.dtype), None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         z_coef: float = 0.0, rows: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ce, z) of the head ``weight`` (V, C) on ``hidden`` (..., C) against ``labels``
    (...): the mean cross-entropy over labels != IGNORE_INDEX (nats, float32) plus ``z_coef`` x
    the mean squared logsumexp over the same rows, as :func:`lm_loss` computes
    them from logits. Only ``loss`` carries gradients. ``rows``: rows per chunk (default
    :func:`chunk_rows`)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    target = labels.reshape(-1)
    keep = target != IGNORE_INDEX
    # Selecting the labelled rows is an autograd op: their gradient is scattered back, and the
    # ignored rows get zero, as they would from the full cross-entropy.
    flat, target = flat[keep], target[keep]
    rows = rows or chunk_rows(weight.shape[0], hidden.device.type)
    grads = torch.is_grad_enabled() and (flat.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(flat, weight, target, float(z_coef), rows, grads)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor,
            z_coef: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ce, z): mean cross-entropy over labels != IGNORE_INDEX (nats, float32) plus
    ``z_coef`` * mean logsumexp(logits)^2 over the same positions. With no labelled position
    both terms are 0 (kept in the graph so backward still runs)."""
    flat = logits.reshape(-1, logits.shape[-1]).float()  # (B*T, V)
    target = labels.reshape(-1)
    keep = target != IGNORE_INDEX
    count = keep.sum().clamp(min=1)
    ce = F.cross_entropy(flat, target, ignore_index=IGNORE_INDEX, reduction="sum") / count
    if z_coef:
        lse = torch.logsumexp(flat, dim=-1)  # (B*T,)
        z = z_coef * (lse.square() * keep).sum() / count
    else:
        z = flat.new_zeros(())
    return ce + z, ce, z


@torch.no_grad()
def row_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``labels`` (B, T): the summed cross-entropy (nats, float32) over positions whose
    label is not IGNORE_INDEX, and their count, from ``hidden`` (B, T, C) and the head ``weight``
    (V, C), a chunk of positions at a time: evaluation never holds (B, T, V) logits (5 GB per
    micro-batch of 4 x 4096 at 30B's vocabulary). No z-loss: validation reports cross-entropy."""
    b, t = labels.shape
    flat, target = hidden.reshape(b * t, -1), labels.reshape(-1)
    keep = target != IGNORE_INDEX
    ce = torch.zeros(b * t, dtype=torch.float32, device=hidden.device)
    index = keep.nonzero().squeeze(1)
    rows = rows or chunk_rows(weight.shape[0], hidden.device.type)
    device = hidden.device.type
    compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    w = weight.to(compute)
    with torch.autocast(device, enabled=False):
        for start in range(0, len(index), rows):
            at = index[start:start + rows]
            logits = (flat[at].to(compute) @ w.t()).float()  # (c, V)
            ce[at] = torch.logsumexp(logits, dim=-1) - logits.gather(1, target[at, None]).squeeze(1)
    return ce.view(b, t).sum(dim=1), keep.view(b, t).sum(dim=1)

