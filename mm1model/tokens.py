"""Special token ids shared by the tokenizer, the packer and the model.

The bundled tokenizer is trained with these as its first special tokens, so their ids are fixed
and the model can find image placeholders without loading the tokenizer.

A pretrained checkpoint's tokenizer (``init.lm``, :mod:`mm1model.pretrained`) has its own ids
0..4 (Llama's ``<unk>``, ``<s>``, ``</s>``, ...), so there the specials are :func:`checkpoint_special_ids`:
the image placeholder and image start / end are appended after the checkpoint's embedding rows
(they collide with nothing), the end of document is the checkpoint's eos.
"""
from __future__ import annotations

from dataclasses import dataclass

PAD_ID = 0  # padding at the end of a packed sequence (no loss, own attention block)
EOD_ID = 1  # end of document
IMAGE_ID = 2  # one placeholder per image token; the connector's outputs replace these in order
IMAGE_START_ID = 3  # precedes an image's placeholders
IMAGE_END_ID = 4  # follows an image's placeholders
SPECIAL_TOKENS = ("<pad>", "<eod>", "<image>", "<img_start>", "<img_end>")

# Vocabulary of the bundled byte-level BPE (specials included). The CPU sizes use it as their
# vocabulary; larger sizes declare their own and leave the extra rows unused on this corpus.
CORPUS_VOCAB_SIZE = 4096

IGNORE_INDEX = -100  # label value for positions that take no loss

# The tokens a pretrained checkpoint's vocabulary grows by, in this order (ids V, V+1, V+2).
ADDED_IMAGE_TOKENS = ("<image>", "<img_start>", "<img_end>")


@dataclass(frozen=True)
class SpecialIds:
    """The ids the packer writes and the model reads: ``pad`` (padding; no loss, its own
    attention segment, so any id works), ``eod`` (end of document), ``image`` (one placeholder
    per image token), ``image_start`` / ``image_end`` (around an image's placeholders)."""

    pad: int = PAD_ID
    eod: int = EOD_ID
    image: int = IMAGE_ID
    image_start: int = IMAGE_START_ID
    image_end: int = IMAGE_END_ID


BUNDLED_SPECIAL_IDS = SpecialIds()


def checkpoint_special_ids(embedding_rows: int, eos_id: int, pad_id: int | None = None) -> SpecialIds:
    """The special ids for a pretrained LM with ``embedding_rows`` rows (its config's
    ``vocab_size``, which may exceed its tokenizer's vocabulary): image, image start and image
    end are the new rows ``embedding_rows``, ``+1``, ``+2``; end of document is the checkpoint's
    ``eos_id``; padding is its ``pad_id``, or eos when it has none."""
    return SpecialIds(pad=eos_id if pad_id is None else pad_id, eod=eos_id, image=embedding_rows,
                      image_start=embedding_rows + 1, image_end=embedding_rows + 2)
