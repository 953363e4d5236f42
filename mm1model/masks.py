"""How packed documents are kept apart in the LM's attention.

MM1 packs several documents per sequence and masks attention so that no token sees another
document ("critical for maintaining strong few-shot performance" on image-text pairs, Appendix
B). ``doc_ids`` (B, T) name each position's document; :func:`document_mask` turns them into what
:class:`mm1model.model.Attention` takes: None (one document per row: the fused causal kernel),
per-document spans (one causal kernel call per document, on CPU from
:data:`PER_DOCUMENT_MIN_LEN` tokens), or the dense boolean mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

def doc_attention_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Boolean SDPA mask (B, 1, T, T), True = may attend: causal and within the same document,
    so packed examples never see each other (MM1 found this critical for image-text pairs)."""
    t = doc_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()  # (T, T)
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    return (same_doc & causal)[:, None]  # (B, 1, T, T)


# Below this length the dense mask's single kernel call beats one call per document on CPU
# (1M size, real packed rows: dense 6% faster at 128-256 tokens; per document 15% / 36% / 82%
# faster at 512 / 1024 / 2048, `python -m mm1model.bench --compare`).
PER_DOCUMENT_MIN_LEN = 512

Spans = list[list[tuple[int, int]]]  # per row, the [start, end) token ranges of its documents


def document_spans(doc_ids: torch.Tensor) -> Spans | None:
    """Per row, the [start, end) runs of equal document id; None when a row has the same id in
    two separate runs (then "same document" is not a run, and only the dense mask says it)."""
    b, t = doc_ids.shape
    starts = doc_ids[:, 1:] != doc_ids[:, :-1]  # (B, T-1): a new document begins at t+1
    ordered = doc_ids.sort(dim=1).values
    runs = (starts.sum(dim=1) + 1).tolist()
    distinct = ((ordered[:, 1:] != ordered[:, :-1]).sum(dim=1) + 1).tolist()
    if runs != distinct:
        return None
    bounds: list[list[int]] = [[0] for _ in range(b)]
    for row, col in torch.nonzero(starts).tolist():
        bounds[row].append(col + 1)
    return [list(zip(row, row[1:] + [t])) for row in bounds]


def document_mask(doc_ids: torch.Tensor, spans_ok: bool = True) -> torch.Tensor | Spans | None:
    """How :class:`Attention` keeps packed documents apart: None when every row is one document
    (the fused causal kernel), per-document spans on CPU from PER_DOCUMENT_MIN_LEN tokens (one
    causal kernel call per document skips the masked-out blocks the dense mask still computes),
    else the dense boolean mask (on GPU: no host sync, and SDPA's masked kernels are fast).
    ``spans_ok=False`` (compiled blocks, which would recompile for every new list of spans)
    keeps the tensor forms only."""
    if doc_ids.device.type != "cpu" or not spans_ok:
        return doc_attention_mask(doc_ids)
    spans = document_spans(doc_ids)
    if spans is not None and all(len(row) == 1 for row in spans):
        return None
    if spans is not None and doc_ids.shape[1] >= PER_DOCUMENT_MIN_LEN:
        return spans
    return doc_attention_mask(doc_ids)


def attend_spans(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spans: Spans, scale: float | None,
                 gqa: bool) -> torch.Tensor:
    """Causal SDPA within each document span of each row: (B, H, T, hd) -> (B, H, T, hd). Equal to
    SDPA with the dense document mask (up to float rounding) when documents are runs."""
    rows = []
    for b, row in enumerate(spans):
        parts = [F.scaled_dot_product_attention(q[b:b + 1, :, s:e], k[b:b + 1, :, s:e], v[b:b + 1, :, s:e],
                                                is_causal=True, scale=scale, enable_gqa=gqa) for s, e in row]
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))  # (1, H, T, hd)
    return torch.cat(rows)


