"""Packing documents into fixed-length sequences with per-document attention and labels.

A document becomes one token stream: text tokens, and for each image ``IMAGE_START``,
``image_tokens`` x ``IMAGE_ID``, ``IMAGE_END``; the stream ends with ``EOD``. A sequence is
filled from the documents of ONE source, in order, until ``seq_len`` tokens:

* **text is split anywhere**: when a document does not fit in the space left, the part that fits
  goes in and the rest is carried to the start of the next sequence of the same source (as a new
  segment: new document id, positions from 0);
* **an image is never split**: if the next image of the document does not fit in the space left,
  or the sequence already holds ``max_images`` images, the sequence is closed with padding and the
  document continues, from that image, in the next sequence;
* **image-caption pairs are atomic**: a pair that does not fit is not started (padding closes the
  sequence) unless the sequence is empty, where a pair longer than ``seq_len`` is truncated and
  its rest dropped (a caption cut from its image teaches nothing about the image);
* an image that can never fit (``image_tokens + 2 > seq_len`` or ``max_images == 0``) is dropped
  and counted as ``image_does_not_fit``.

Every segment (a document, or the part of one in this sequence) gets its own ``doc_ids`` value,
positions restarting at 0; padding is one more segment. ``labels[t] = input_ids[t + 1]`` inside a
segment; ``IGNORE_INDEX`` where the target is an ``IMAGE_ID`` placeholder or the ``IMAGE_END``
that always follows them, on a segment's last token (no loss across a boundary), and on padding.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from mm1model.data.images import resize
from mm1model.data.readers import Document
from mm1model.tokens import BUNDLED_SPECIAL_IDS, IGNORE_INDEX, SpecialIds


@dataclasses.dataclass
class TokenizedDoc:
    """A document as one token stream (image placeholders expanded) plus its image tensors."""

    ids: np.ndarray  # (L,) int64, ends with EOD
    spans: list[tuple[int, int]]  # [start, end) of each image block, IMAGE_START..IMAGE_END
    images: list[torch.Tensor]  # (3, h, w) uint8 each, max(h, w) = S, in stream order
    atomic: bool  # never split across sequences (image-caption pairs)


def tokenize_document(doc: Document, tokenizer, image_tokens: int, image_size: int,
                      atomic: bool = False) -> TokenizedDoc:
    """Encode text parts, expand each image to its placeholder block, append ``EOD`` (the ids of
    ``tokenizer.special``, a :class:`mm1model.data.tokenizer.CorpusTokenizer`'s)."""
    special = tokenizer.special
    pieces, spans, images, length = [], [], [], 0
    for i, part in enumerate(doc.parts):
        if isinstance(part, str):
            # Consecutive text parts are paragraphs: keep a line break between them.
            text = part if i + 1 == len(doc.parts) or not isinstance(doc.parts[i + 1], str) \
                else part + "\n"
            ids = np.asarray(tokenizer.encode(text).ids, dtype=np.int64)
        else:
            ids = np.full(image_tokens + 2, special.image, dtype=np.int64)
            ids[0], ids[-1] = special.image_start, special.image_end
            spans.append((length, length + len(ids)))
            images.append(resize(part, image_size))
        pieces.append(ids)
        length += len(ids)
    pieces.append(np.asarray([special.eod], dtype=np.int64))
    return TokenizedDoc(np.concatenate(pieces), spans, images, atomic)


def cut(doc: TokenizedDoc, offset: int, space: int, images_left: int) -> tuple[int, bool]:
    """End of the part of ``doc`` from ``offset`` that fits; and whether an image stopped it.

    The part is ``doc.ids[offset:end]``: at most ``space`` tokens, never ending inside an image
    block, holding at most ``images_left`` images.
    """
    end = min(offset + space, len(doc.ids))
    seen = 0
    for start, stop in doc.spans:
        if stop <= offset:
            continue
        if start >= end:
            break
        if stop > end or seen == images_left:
            return start, True
        seen += 1
    return end, False


class SequenceBuilder:
    """Accumulates segments of one packed sequence; :meth:`finish` pads and builds the labels."""

    def __init__(self, seq_len: int, special: SpecialIds = BUNDLED_SPECIAL_IDS):
        self.seq_len, self.special = seq_len, special
        self.segments: list[np.ndarray] = []
        self.images: list[torch.Tensor] = []
        self.length = 0

    @property
    def space(self) -> int:
        return self.seq_len - self.length

    def add(self, doc: TokenizedDoc, start: int, end: int) -> None:
        self.segments.append(doc.ids[start:end])
        self.images.extend(img for (s, e), img in zip(doc.spans, doc.images)
                           if s >= start and e <= end)
        self.length += end - start

    def finish(self) -> dict:
        """Numpy ``input_ids, labels, doc_ids, position_ids`` (T,), the images, the pad count."""
        ids, labels, doc_ids, positions = [], [], [], []
        segments = list(self.segments)
        pad = self.seq_len - self.length
        for doc_id, segment in enumerate(segments):
            target = np.empty_like(segment)
            target[:-1] = segment[1:]
            target[-1] = IGNORE_INDEX  # no loss across a boundary
            # The image block's inside is given, not predicted: IMAGE_START is a target (where
            # an image appears is information), its placeholders and IMAGE_END are not.
            target[(target == self.special.image) | (target == self.special.image_end)] = IGNORE_INDEX
            ids.append(segment)
            labels.append(target)
            doc_ids.append(np.full(len(segment), doc_id, dtype=np.int64))
            positions.append(np.arange(len(segment), dtype=np.int64))
        if pad:
            ids.append(np.full(pad, self.special.pad, dtype=np.int64))
            labels.append(np.full(pad, IGNORE_INDEX, dtype=np.int64))
            doc_ids.append(np.full(pad, len(segments), dtype=np.int64))
            positions.append(np.arange(pad, dtype=np.int64))
        return {"input_ids": np.concatenate(ids), "labels": np.concatenate(labels),
                "doc_ids": np.concatenate(doc_ids), "position_ids": np.concatenate(positions),
                "images": self.images, "padding": pad}
