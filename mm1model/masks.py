"""How packed documents are kept apart in the LM's attention.

MM1 packs several documents per sequence and masks attention so that no token sees another
document ("critical for maintaining strong few-shot performance" on image-text pairs, Appendix
B). ``doc_ids`` (B, T) name each position's document; :func:`document_mask` turns them into what
:class:`mm1model.model.Attention` takes, in one of four kinds (:data:`MASK_KINDS`) chosen by the
caller (``LM.mask_kind``, which :mod:`mm1model.parallelize` sets):

* ``flex``: a ``flex_attention`` BlockMask (causal and same document), the GPU path. Built from
  ``doc_ids`` on their device by tensor ops alone (no host sync); the fused kernel skips the
  blocks above the diagonal and across documents, which a dense mask makes SDPA compute (and
  rules out its flash kernel).
* ``spans``: what pays on CPU (measured): None when every row is one document (the fused causal
  kernel), per-document spans from :data:`PER_DOCUMENT_MIN_LEN` tokens (one causal kernel call
  per document), else the dense mask. Reads ``doc_ids`` on the host: free on CPU, a sync on GPU.
* ``dense``: the (B, 1, T, T) boolean mask, always (a compiled CPU block: one graph for every
  batch, where a new list of spans would recompile it).
* ``auto``: ``flex`` on CUDA, ``spans`` on CPU, ``dense`` elsewhere.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

MASK_KINDS = ("auto", "dense", "spans", "flex")


def doc_attention_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Boolean SDPA mask (B, 1, T, T), True = may attend: causal and within the same document,
    so packed examples never see each other (MM1 found this critical for image-text pairs)."""
    t = doc_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()  # (T, T)
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    return (same_doc & causal)[:, None]  # (B, 1, T, T)


def document_block_mask(doc_ids: torch.Tensor) -> BlockMask:
    """The rule of :func:`doc_attention_mask` as a ``flex_attention`` BlockMask over (B, 1, T, T)
    (one mask for every head), on ``doc_ids``' device, without a host sync."""
    b, t = doc_ids.shape

    def causal_same_document(batch, head, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (doc_ids[batch, q_idx] == doc_ids[batch, kv_idx])

    return create_block_mask(causal_same_document, b, None, t, t, device=doc_ids.device)


# Below this length the dense mask's single kernel call beats one call per document on CPU
# (1M size, real packed rows: dense 6% faster at 128-256 tokens; per document 15% / 36% / 82%
# faster at 512 / 1024 / 2048, `python -m mm1model.bench --compare`).
PER_DOCUMENT_MIN_LEN = 512

Spans = list[list[tuple[int, int]]]  # per row, the [start, end) token ranges of its documents
Mask = torch.Tensor | Spans | BlockMask | None  # what Attention takes (see document_mask)


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


def document_mask(doc_ids: torch.Tensor, kind: str = "auto") -> Mask:
    """How :class:`Attention` keeps packed documents apart, as ``kind`` (see the module):
    a BlockMask (``flex``), None / spans / the dense mask (``spans``), the dense mask (``dense``);
    ``auto`` picks ``flex`` on CUDA, ``spans`` on CPU, ``dense`` elsewhere."""
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind '{kind}'; valid kinds: {', '.join(MASK_KINDS)}")
    if kind == "auto":
        device = doc_ids.device.type
        kind = "flex" if device == "cuda" else "spans" if device == "cpu" else "dense"
    if kind == "flex":
        return document_block_mask(doc_ids)
    if kind == "dense":
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


@functools.cache
def compiled_flex_attention():
    """``flex_attention`` under torch.compile, built once per process (at the first call): run
    eagerly it materialises the full (T, T) scores (torch warns so), compiled it is one fused
    kernel that skips the masked-out blocks. Fixed shapes (``dynamic=False``): a run's (B, T) do
    not change. Inside a compiled block dynamo traces through it into the block's own graph."""
    return torch.compile(flex_attention, dynamic=False)


def attend_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, scale: float | None,
                gqa: bool) -> torch.Tensor:
    """``flex_attention`` with ``block_mask``: (B, H, T, hd) -> (B, H, T, hd), the same scale and
    GQA as SDPA. Compiled on CUDA; elsewhere the eager reference (torch's CPU flex kernel has no
    backward, and the eager one refuses CPU gradients too: CPU runs it under no_grad)."""
    attend = compiled_flex_attention() if q.device.type == "cuda" else flex_attention
    return attend(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
