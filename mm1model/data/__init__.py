"""Training data for MM1-style pre-training: three real sources, the mixture, packed sequences.

* :func:`prepare_corpus` builds the bundled corpus (webdataset captions, OBELICS-style
  interleaved documents, JSONL text, a byte-level BPE tokenizer, a manifest), idempotently.
* :class:`PackedStream` packs the ``DataConfig.mixture`` of sources into sequences with
  per-document ``doc_ids`` / ``position_ids`` and labels; :func:`validation_batches` gives the
  fixed held-out set.

A :data:`Batch` is a dict: ``input_ids, labels, doc_ids, position_ids`` (B, T) long tensors,
``images`` a list of (3, h, w) uint8 pixel tensors with ``max(h, w) = S`` in placeholder order
(row-major over (b, t); :func:`~mm1model.data.images.normalise_images` makes the model's
normalised (3, S, S) floats of them, on the device), and
``source`` (B,) long (0 caption, 1 interleaved, 2 text; each sequence draws from one source).
"""
from mm1model.data.corpus import default_corpus_dir, prepare_corpus, read_manifest
from mm1model.data.mixture import SOURCES, MixtureConfig
from mm1model.data.stream import Batch, DataConfig, PackedStream, split_of, validation_batches
from mm1model.data.tokenizer import load_tokenizer

__all__ = ["SOURCES", "Batch", "DataConfig", "MixtureConfig", "PackedStream", "default_corpus_dir",
           "load_tokenizer", "prepare_corpus", "read_manifest", "split_of", "validation_batches"]
