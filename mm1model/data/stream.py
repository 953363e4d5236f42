"""The training stream: mixture sampling + packing over the three sources of a corpus.

:class:`PackedStream` yields packed sequences (see :mod:`mm1model.data.packing` for the packing
rules) and is exactly resumable: its state is the sequence counter plus, per source, the epoch,
the position in that epoch's order and the token offset into a partly packed document.

Order and sharding. Stream ``s`` of ``n`` (``s = rank * num_workers + worker``) reads, per
source and epoch, the positions ``s, s + n, s + 2n, ...`` of one sequence of the split's records,
so the streams of one epoch together see every record exactly once. That sequence is:

* for a source whose split holds at most ``DataConfig.shuffle_buffer`` records (every source of
  the bundled corpus at the default 10,000): a permutation of all of them seeded by (seed, source,
  epoch), exactly the order of earlier versions, so the bundled corpus's sequences, losses and
  pinned numbers are unchanged;
* for a larger source: its files (shards) in a permutation seeded by (seed, source, epoch), each
  file's records in file order, and the stream's own records then pass through a shuffle buffer of
  ``shuffle_buffer`` records (webdataset's scheme; :class:`ShuffledShards`). What changes: records
  of one shard stay near each other within an epoch (a record moves at most about ``buffer x n``
  positions from its place in the shard sequence), so shards should be written shuffled, as
  webdataset advises. What does not: every record once per epoch over all streams, a new order
  every epoch, determinism for a seed, exact resumption from (epoch, position) (a resume replays
  the epoch's index, never decoding), and the validation split. A stream holds the buffer and its
  part of one shard's index, never the whole corpus's (:meth:`PackedStream.index_bytes`), and
  start-up reads only as many files as it takes to find a source larger than the buffer (no
  pass over the corpus); every stream reads the index of every shard during an epoch (tar
  headers, Parquet ids, JSONL lines), decoding only its own records. Records that indexing
  skips (a truncated shard, a pair without its caption) are counted in ``skipped`` only in the
  files start-up read.

Train/validation split: a record is held out when a hash of its key falls in the first 5% of the
hash range, so the split depends on the corpus only (never on seed, rank or LR).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from mm1model import paper
from mm1model.config import ConfigError, to_dict
from mm1model.data.corpus import default_corpus_dir, read_manifest
from mm1model.data.mixture import SOURCES, MixtureConfig, MixtureSampler
from mm1model.data.packing import SequenceBuilder, TokenizedDoc, cut, tokenize_document
from mm1model.data.readers import CaptionShards, InterleavedDocs, RecordRef, TextDocs
from mm1model.data.sources import SourcesConfig
from mm1model.data.tokenizer import load_tokenizer

Batch = dict  # input_ids, labels, doc_ids, position_ids (B, T) long; images list; source (B,)

VAL_FRACTION = 0.05
VAL_SEED = 0  # the validation stream ignores the training seed: same set for every run
DEFAULT_IMAGE_TOKENS = paper.IMAGE_TOKENS  # MM1's connector output per image
DEFAULT_IMAGE_SIZE = 32  # the CPU sizes' ViT input; the trainer sets it from the model


class _DocumentCache:
    """Loaded documents of this process, least recently used out: (tokenized document or None
    for a bad record, the skip reasons its loading counted).

    Decoding and resizing images is most of the stream's time, and a sweep on the small corpus
    revisits every record each epoch. Shared by all streams of a process (data lanes, the
    validation stream); an entry is identical to what a reload would give, so the stream's
    output and its resumption do not depend on what is cached. Consumers must not modify the
    image tensors in place.
    """

    def __init__(self, limit_bytes: int):
        self.limit_bytes, self.bytes = limit_bytes, 0
        self.entries: OrderedDict[tuple, tuple[TokenizedDoc | None, Counter]] = OrderedDict()

    @staticmethod
    def size(entry: tuple[TokenizedDoc | None, Counter]) -> int:
        doc = entry[0]
        if doc is None:
            return 64
        return doc.ids.nbytes + sum(i.numel() * i.element_size() for i in doc.images)

    def get(self, key: tuple) -> tuple[TokenizedDoc | None, Counter] | None:
        doc = self.entries.get(key)
        if doc is not None:
            self.entries.move_to_end(key)
        return doc

    def put(self, key: tuple, entry: tuple[TokenizedDoc | None, Counter]) -> None:
        if key in self.entries:
            return
        self.entries[key] = entry
        self.bytes += self.size(entry)
        self.evict()

    def evict(self) -> None:
        """Drop the least recently used entries until the cache fits ``limit_bytes``."""
        while self.bytes > self.limit_bytes and self.entries:
            _, old = self.entries.popitem(last=False)
            self.bytes -= self.size(old)


# Per rank. 512 MB holds every document of the bundled corpus at the CPU sizes' 32 px (about
# 100 MB); loader workers share it (share_document_cache).
DOCUMENT_CACHE_BYTES = 512 * 2**20
_DOC_CACHE = _DocumentCache(limit_bytes=DOCUMENT_CACHE_BYTES)


def share_document_cache(parts: int) -> None:
    """Limit this process's document cache to ``DOCUMENT_CACHE_BYTES / parts``: each of a rank's
    ``parts`` loader workers calls it, so together they hold the rank's budget, not ``parts``
    times it (what a worker inherited from the training process counts, least recent out)."""
    _DOC_CACHE.limit_bytes = DOCUMENT_CACHE_BYTES // parts
    _DOC_CACHE.evict()


def clear_document_cache() -> None:
    """Drop every cached document, index and validation set of this process (frees memory; tests
    use it to force reloads)."""
    _DOC_CACHE.entries.clear()
    _DOC_CACHE.bytes = 0
    _INDEX_CACHE.clear()
    _validation_batches.cache_clear()


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What to train on and how to pack it.

    ``corpus``: a prepared corpus directory (None = :func:`default_corpus_dir`). ``seq_len``:
    tokens per packed sequence. ``max_images``: images per sequence at most (MM1: 16).
    ``image_tokens``: placeholders per image (None = 144, MM1's). ``image_size``: ViT input side
    in pixels (None = 32). The trainer fills the last two from the model so they always agree.
    ``mixture``: source weights per sequence. ``seed``: order of records and of sources.
    ``num_workers``: loader worker processes per rank (0 = pack in the training process; see
    :mod:`mm1model.data.loader`; another value gives other sequences). ``prefetch``: steps each
    worker packs ahead. ``shuffle_buffer``: records; a source's split of at most this many is
    permuted whole each epoch, a larger one is read shard by shard through a shuffle buffer of
    this size (see the module docstring). ``sources``: train on user files where they lie
    (:mod:`mm1model.data.sources`) instead of the prepared corpus's (the tokenizer stays
    ``corpus``'s, or ``tokenizer``'s).
    ``tokenizer``: a pretrained LM directory whose ``tokenizer.json`` to use (None = the corpus's;
    the trainer sets it from ``init.lm``).
    """

    corpus: str | None = None
    seq_len: int = paper.SEQ_LEN
    max_images: int = paper.MAX_IMAGES
    image_tokens: int | None = None
    image_size: int | None = None
    mixture: MixtureConfig = dataclasses.field(default_factory=MixtureConfig)
    seed: int = 0
    num_workers: int = 0
    prefetch: int = 2
    shuffle_buffer: int = 10_000
    sources: SourcesConfig | None = None
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ConfigError(f"DataConfig.num_workers must be an integer >= 0, got {self.num_workers!r}")
        if not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 1:
            raise ConfigError(f"DataConfig.shuffle_buffer must be an integer >= 1, got {self.shuffle_buffer!r}")
        if not isinstance(self.prefetch, int) or self.prefetch < 1:
            raise ConfigError(f"DataConfig.prefetch must be an integer >= 1, got {self.prefetch!r}")
        if not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise ConfigError(f"DataConfig.seq_len must be an integer >= 2, got {self.seq_len!r}")
        if not isinstance(self.max_images, int) or self.max_images < 0:
            raise ConfigError(f"DataConfig.max_images must be >= 0, got {self.max_images!r}")
        if self.image_tokens is not None and (not isinstance(self.image_tokens, int)
                                              or self.image_tokens < 1):
            raise ConfigError(f"DataConfig.image_tokens must be >= 1, got {self.image_tokens!r}")
        if self.image_size is not None and (not isinstance(self.image_size, int)
                                            or self.image_size < 4):
            raise ConfigError(f"DataConfig.image_size must be >= 4 pixels, got {self.image_size!r}")
        if isinstance(self.mixture, dict):  # built directly from a JSON dict
            object.__setattr__(self, "mixture", MixtureConfig(**self.mixture))
        if isinstance(self.sources, dict):
            object.__setattr__(self, "sources", SourcesConfig(**self.sources))

    @property
    def corpus_dir(self) -> Path:
        return Path(self.corpus) if self.corpus else default_corpus_dir()

    @property
    def tokens_per_image(self) -> int:
        return self.image_tokens if self.image_tokens is not None else DEFAULT_IMAGE_TOKENS

    @property
    def image_side(self) -> int:
        return self.image_size if self.image_size is not None else DEFAULT_IMAGE_SIZE


def split_of(key: str) -> str:
    """``"val"`` for the held-out 5% of record keys, else ``"train"`` (stable across machines)."""
    digest = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")
    return "val" if digest < VAL_FRACTION * 2**64 else "train"


@dataclasses.dataclass
class SourceIndex:
    """What a stream keeps of one source's index, per split: the records themselves when the split
    holds at most ``limit`` of them (``refs[split]``), else None (the split is larger: it is read
    shard by shard, :class:`ShuffledShards`, and never counted whole)."""

    refs: dict[str, list[RecordRef] | None]
    skipped: Counter  # what indexing skipped, in the files read to decide

    def records(self, split: str) -> int | None:
        """The split's record count, None for a split over the limit."""
        refs = self.refs[split]
        return None if refs is None else len(refs)


# Each source's index, per process, keyed by its files and their (mtime, size): a warm sweep
# worker (scaling.workers) builds it once and the cells it forks inherit it, instead of
# re-reading every shard per cell (0.7-1.1 s on the bundled corpus).
_INDEX_CACHE: dict[tuple, SourceIndex] = {}


def source_index(kind: str, reader: Any, limit: int, skipped: Counter) -> SourceIndex:
    """The :class:`SourceIndex` of one source kind, from the process's cache when its files are
    unchanged; the records its indexing skipped are added to ``skipped`` either way. First checks
    the layout of the first file of each format (``reader.check``: a ConfigError). Reads files
    until both splits are known to exceed ``limit`` records (or all are read): it never holds more
    than ``limit`` records per split plus one file's, and a corpus of billions of records costs
    no full pass at start-up."""
    key = (kind, limit, tuple((p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in reader.paths))
    if key not in _INDEX_CACHE:
        first_of_format = {os.path.splitext(p)[1].lower(): p for p in reversed(reader.paths)}
        for path in first_of_format.values():  # a wrong field name: one line now, not mid-run
            reader.check(path)
        found: Counter = Counter()
        refs: dict[str, list[RecordRef] | None] = {"train": [], "val": []}
        for path in reader.paths:
            if refs["train"] is None and refs["val"] is None:
                break
            for ref in reader.index_path(path, found):
                kept = refs[split_of(ref.key)]
                if kept is not None:
                    kept.append(ref)
                    if len(kept) > limit:
                        refs[split_of(ref.key)] = None
        _INDEX_CACHE[key] = SourceIndex(refs, found)
    index = _INDEX_CACHE[key]
    skipped.update(index.skipped)
    return index


class ShuffledShards:
    """One stream's records of one epoch of a source too large to permute whole.

    The source's files (shards) are permuted with a generator seeded by (seed, source, epoch);
    their records of the split, in file order, form the epoch's sequence, and stream ``s`` of
    ``n`` takes positions ``s, s + n, ...`` of it (so the streams together see every record once);
    those pass through a shuffle buffer of ``buffer`` records seeded by (seed, source, epoch,
    stream), as webdataset does: once full, each record out is a random one of the buffer,
    replaced by the next in. ``order[pos]`` is the ``pos``-th record out (IndexError past the
    epoch's end); reading in order is O(1) per record, an earlier position (a resume) replays
    the epoch from its start, reading indices, never decoding. Memory: the buffer plus this
    stream's part of one shard's index, whatever the size of the source.
    """

    def __init__(self, reader: Any, split: str, seed: int, source_id: int, epoch: int,
                 stream: int, n_streams: int, buffer: int):
        self.reader, self.split = reader, split
        self.seeds = (seed, source_id, epoch)
        self.stream, self.n_streams, self.buffer_size = stream, n_streams, buffer
        self.buffer: list[RecordRef] = []
        self.shard_refs: list[RecordRef] = []
        self._out: Iterator[RecordRef] | None = None
        self._next = 0  # position of the record _out gives next
        self._last: RecordRef | None = None
        self._end: int | None = None  # the epoch's length, once met

    def __getitem__(self, pos: int) -> RecordRef:
        if pos < 0 or (self._end is not None and pos >= self._end):
            raise IndexError(pos)
        if self._next > 0 and pos == self._next - 1:
            return self._last  # the record last read (ahead, by has)
        if self._out is None or pos < self._next:
            self._out, self._next = self._shuffled(), 0
        while self._next <= pos:
            try:
                self._last = next(self._out)
            except StopIteration:
                self._end, self._out = self._next, None
                raise IndexError(pos) from None
            self._next += 1
        return self._last

    def has(self, pos: int) -> bool:
        """Whether the epoch has a ``pos``-th record (reads ahead to it)."""
        try:
            self[pos]
        except IndexError:
            return False
        return True

    def index_bytes(self) -> int:
        """Bytes of the records this order holds (buffer and current shard's index), deep."""
        return (sys.getsizeof(self.buffer) + sys.getsizeof(self.shard_refs)
                + sum(_ref_bytes(r) for r in self.buffer) + sum(_ref_bytes(r) for r in self.shard_refs))

    def _own(self) -> Iterator[RecordRef]:
        shards = np.random.default_rng([*self.seeds, 1]).permutation(len(self.reader.paths))
        start = 0  # position of the shard's first record in the epoch's sequence
        for shard in shards:
            refs = [r for r in self.reader.index_path(self.reader.paths[shard], Counter())
                    if split_of(r.key) == self.split]
            self.shard_refs = refs[(self.stream - start) % self.n_streams::self.n_streams]
            start += len(refs)
            del refs
            yield from self.shard_refs
            self.shard_refs = []

    def _shuffled(self) -> Iterator[RecordRef]:
        rng = np.random.default_rng([*self.seeds, 2, self.stream])
        self.buffer = []
        for ref in self._own():
            if len(self.buffer) < self.buffer_size:
                self.buffer.append(ref)
                continue
            j = int(rng.integers(self.buffer_size))
            out, self.buffer[j] = self.buffer[j], ref
            yield out
        while self.buffer:
            j = int(rng.integers(len(self.buffer)))
            self.buffer[j], self.buffer[-1] = self.buffer[-1], self.buffer[j]
            yield self.buffer.pop()


def _ref_bytes(ref: RecordRef) -> int:
    where = ref.where
    extra = sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in where.items()) if isinstance(where, dict) else 0
    return sys.getsizeof(ref) + sys.getsizeof(ref.key) + sys.getsizeof(where) + extra


def open_sources(corpus_dir: Path, image_side: int | None = None) -> dict[str, Any]:
    """The reader of each source kind over the files of a corpus directory."""
    return {
        "caption": CaptionShards(sorted((corpus_dir / "caption").glob("*.tar")), image_side),
        "interleaved": InterleavedDocs(sorted((corpus_dir / "interleaved").glob("*.parquet"))
                                       + sorted((corpus_dir / "interleaved").glob("*.jsonl")),
                                       image_side),
        "text": TextDocs(sorted((corpus_dir / "text").glob("*.jsonl"))
                         + sorted((corpus_dir / "text").glob("*.txt"))),
    }


class PackedStream:
    """An endless, resumable iterator of packed sequences from the 45/45/10 mixture.

    ``next(stream)`` gives one sequence (tensors of shape (T,), ``source`` a 0-d tensor);
    :meth:`next_batch` gives a :data:`Batch` of ``n``. Different ``(rank, worker)`` pairs read
    disjoint records. ``skipped`` counts bad records by reason, each record once per stream
    (however many epochs meet it); ``counters`` accumulate tokens, images, padding and
    sequences per source since construction (or the loaded state).
    """

    def __init__(self, config: DataConfig, rank: int = 0, world_size: int = 1,
                 split: str = "train", worker: int = 0, num_workers: int = 1):
        if split not in ("train", "val"):
            raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
        if not 0 <= rank < world_size or not 0 <= worker < num_workers:
            raise ConfigError(f"bad shard: rank {rank} of {world_size}, worker {worker} of "
                              f"{num_workers}")
        # An image is never split: a caption pair whose image cannot fit a whole sequence (its
        # placeholders plus <img_start>, <img_end>) would leave every caption sequence empty,
        # forever. (Interleaved documents drop such an image and keep their text.)
        if (config.max_images > 0 and config.mixture.caption > 0
                and config.tokens_per_image + 2 > config.seq_len):
            raise ConfigError(f"an image takes {config.tokens_per_image} + 2 tokens, more than seq_len "
                              f"{config.seq_len}: raise seq_len, lower image_tokens, or set max_images = 0")
        self.config, self.split = config, split
        corpus_dir = config.corpus_dir
        self.shard, self.num_shards = rank * num_workers + worker, world_size * num_workers
        self.weights = config.mixture.probabilities()
        if config.sources is not None:
            self.readers = config.sources.open(config.image_side)
            where = {kind: f"data.sources.{kind} ({len(r.paths)} files)" for kind, r in self.readers.items()}
            for kind, weight in zip(SOURCES, self.weights):
                if weight > 0 and not self.readers[kind].paths:
                    raise ConfigError(f"data.mixture gives {kind} a weight but data.sources.{kind} names no "
                                      f"files: add some, or set data.mixture.{kind} = 0")
        elif read_manifest(corpus_dir) is None:
            raise ConfigError(f"corpus {corpus_dir} is not prepared: run `scaling data prepare"
                              f"{'' if config.corpus is None else ' --out ' + str(corpus_dir)}`")
        else:
            self.readers = open_sources(corpus_dir, config.image_side)
            where = {kind: str(corpus_dir) for kind in SOURCES}
        self.tokenizer = load_tokenizer(corpus_dir, config.tokenizer)
        self.skipped: Counter = Counter()
        # refs[kind]: the split's records of a source small enough to permute whole, else None
        self.index: dict[str, SourceIndex] = {}
        self.refs: dict[str, list[RecordRef] | None] = {}
        for kind in SOURCES:
            try:
                index = source_index(kind, self.readers[kind], config.shuffle_buffer, self.skipped)
            except ConfigError:
                raise
            except (OSError, ValueError) as err:  # not a tar / Parquet file at all, unreadable
                raise ConfigError(f"cannot index the {kind} files of {where[kind]}: "
                                  f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}") from None
            records = index.records(split)
            if records is None and self.num_shards > config.shuffle_buffer:
                raise ConfigError(f"{self.num_shards} streams read source {kind} through a shuffle buffer of "
                                  f"{config.shuffle_buffer} records: raise data.shuffle_buffer to at least that")
            if self.weights[SOURCES.index(kind)] > 0 and records is not None and records < self.num_shards:
                raise ConfigError(f"source {kind} has {records} records in split {split} of "
                                  f"{where[kind]}, fewer than the {self.num_shards} streams"
                                  + (f" (skipped while indexing: {dict(index.skipped)})" if index.skipped else ""))
            self.index[kind], self.refs[kind] = index, index.refs[split]
        # A rebuilt corpus file (new mtime or size) never hits documents cached from the old one.
        self._stamps = {path: (os.stat(path).st_mtime_ns, os.stat(path).st_size)
                        for reader in self.readers.values() for path in reader.paths}
        self.sampler = MixtureSampler(config.mixture, config.seed, self.shard)
        self.sequence = 0
        self.cursor = {kind: {"epoch": 0, "pos": 0, "offset": 0} for kind in SOURCES}
        self._orders: dict[tuple[str, int], np.ndarray | ShuffledShards] = {}
        self._docs: dict[str, tuple[tuple[int, int], TokenizedDoc]] = {}
        self._counted: set[tuple] = set()
        self.counters = self._zero_counters()

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """JSON-ready state: restoring it makes the stream continue exactly where it was."""
        return {"sequence": self.sequence, "cursor": {k: dict(v) for k, v in self.cursor.items()},
                "skipped": dict(self.skipped), "counters": _plain(self.counters),
                "shard": [self.shard, self.num_shards], "split": self.split,
                "config": to_dict(self.config)}

    def load_state_dict(self, state: dict) -> None:
        if state["shard"] != [self.shard, self.num_shards] or state["split"] != self.split:
            raise ConfigError(f"stream state is for shard {state['shard']} split {state['split']},"
                              f" not {[self.shard, self.num_shards]} {self.split}")
        self.sequence = int(state["sequence"])
        self.cursor = {k: {f: int(x) for f, x in v.items()} for k, v in state["cursor"].items()}
        self.skipped = Counter(state["skipped"])
        self._counted.clear()  # a bad record met again after a resume is counted again, once
        self.counters = self._zero_counters()
        for kind, values in state.get("counters", {}).items():
            for name, value in values.items():
                self.counters[kind][name] = (np.asarray(value, dtype=np.int64)
                                             if name == "images_per_sequence" else int(value))
        self._docs.clear()

    # --------------------------------------------------------------------------- iteration
    def __iter__(self) -> "PackedStream":
        return self

    def __next__(self) -> dict:
        kind = SOURCES[self.sampler.source(self.sequence)]
        self.sequence += 1
        builder = SequenceBuilder(self.config.seq_len, self.tokenizer.special)
        max_images = self.config.max_images
        while builder.space > 0:
            doc = self._current(kind)
            offset = self.cursor[kind]["offset"]
            end, blocked = cut(doc, offset, builder.space, max_images - len(builder.images))
            finished = end == len(doc.ids)
            if doc.atomic and not finished and builder.length > 0:
                break  # a pair that does not fit waits for the next sequence whole
            if end == offset:
                if builder.length > 0:
                    break  # the next image waits for the next sequence
                self._drop_image(kind, doc, offset)  # it cannot fit even in an empty sequence
                continue
            builder.add(doc, offset, end)
            if finished or doc.atomic:  # an over-long pair is truncated, its rest dropped
                self._advance(kind)
            else:
                self.cursor[kind]["offset"] = end
            if blocked:
                break
        packed = builder.finish()
        counters = self.counters[kind]
        counters["sequences"] += 1
        counters["tokens"] += self.config.seq_len - packed["padding"]
        counters["padding"] += packed["padding"]
        counters["images"] += len(packed["images"])
        counters["images_per_sequence"][len(packed["images"])] += 1
        return {"input_ids": torch.from_numpy(packed["input_ids"]),
                "labels": torch.from_numpy(packed["labels"]),
                "doc_ids": torch.from_numpy(packed["doc_ids"]),
                "position_ids": torch.from_numpy(packed["position_ids"]),
                "images": packed["images"],
                "source": torch.tensor(SOURCES.index(kind))}

    def next_batch(self, n: int) -> Batch:
        """The next ``n`` sequences stacked: (n, T) tensors, images in row-major order."""
        rows = [next(self) for _ in range(n)]
        batch = {name: torch.stack([r[name] for r in rows])
                 for name in ("input_ids", "labels", "doc_ids", "position_ids", "source")}
        batch["images"] = [image for r in rows for image in r["images"]]
        return batch

    # ---------------------------------------------------------------------------- helpers
    def _order(self, kind: str, epoch: int) -> np.ndarray | ShuffledShards:
        """This stream's records of one epoch of one source: indices into ``refs[kind]`` for a
        source permuted whole, else its :class:`ShuffledShards`."""
        key = (kind, epoch)
        if key not in self._orders:
            source_id = SOURCES.index(kind)
            self._orders = {k: v for k, v in self._orders.items() if k[0] != kind}
            if self.refs[kind] is None:
                self._orders[key] = ShuffledShards(self.readers[kind], self.split, self.config.seed, source_id,
                                                   epoch, self.shard, self.num_shards, self.config.shuffle_buffer)
            else:
                perm = np.random.default_rng([self.config.seed, source_id, epoch]).permutation(
                    len(self.refs[kind]))
                self._orders[key] = perm[self.shard::self.num_shards]
        return self._orders[key]

    def index_bytes(self) -> int:
        """Bytes this stream holds of its sources' indices (deep ``sys.getsizeof``): the records of
        sources permuted whole and their orders, and each shuffled source's buffer and part of its
        current shard. The readers' lists of file paths (O(files)) are not included."""
        total = 0
        for kind in SOURCES:
            if self.refs[kind] is not None:
                total += sys.getsizeof(self.refs[kind]) + sum(_ref_bytes(r) for r in self.refs[kind])
        for order in self._orders.values():
            total += order.index_bytes() if isinstance(order, ShuffledShards) else order.nbytes
        return total

    def _advance(self, kind: str) -> None:
        cursor = self.cursor[kind]
        cursor["pos"] += 1
        cursor["offset"] = 0
        order = self._order(kind, cursor["epoch"])
        if not (order.has(cursor["pos"]) if isinstance(order, ShuffledShards) else cursor["pos"] < len(order)):
            cursor["epoch"] += 1
            cursor["pos"] = 0

    def _current(self, kind: str) -> TokenizedDoc:
        """The document under this source's cursor (loaded once, kept while it is consumed)."""
        misses, first_epoch = 0, self.cursor[kind]["epoch"]
        while True:
            cursor = self.cursor[kind]
            where = (cursor["epoch"], cursor["pos"])
            cached = self._docs.get(kind)
            if cached is not None and cached[0] == where:
                return cached[1]
            order = self._order(kind, where[0])
            if self.refs[kind] is None:
                ref = order[where[1]]
                index = (ref.path, ref.key)
            else:
                index = int(order[where[1]])
                ref = self.refs[kind][index]
            cache_key = (kind, ref.path, self._stamps[ref.path], ref.key,
                         self.config.tokens_per_image, self.config.image_side, self.config.tokenizer)
            entry = _DOC_CACHE.get(cache_key)
            if entry is None:
                reasons: Counter = Counter()
                doc = self.readers[kind].load(ref, reasons)
                tokenized = None if doc is None else tokenize_document(
                    doc, self.tokenizer, self.config.tokens_per_image, self.config.image_side,
                    atomic=kind == "caption")
                entry = (tokenized, reasons)
                _DOC_CACHE.put(cache_key, entry)
            tokenized, reasons = entry
            if (kind, index) not in self._counted:  # each bad record counts once per stream
                self._counted.add((kind, index))
                self.skipped.update(reasons)
            if tokenized is not None:
                self._docs[kind] = (where, tokenized)
                return tokenized
            misses += 1
            # a whole epoch without one good record (a large source: counted by its epochs)
            if misses > (self.index[kind].records(self.split) or 0) and (
                    self.refs[kind] is not None or self.cursor[kind]["epoch"] > first_epoch + 1):
                raise ConfigError(f"every {kind} record of split {self.split} is bad "
                                  f"(skipped: {dict(self.skipped)})")
            self._advance(kind)

    def _drop_image(self, kind: str, doc: TokenizedDoc, offset: int) -> None:
        self.skipped["image_does_not_fit"] += 1
        if doc.atomic:
            self._advance(kind)
            return
        stop = next(e for s, e in doc.spans if s == offset)
        if stop == len(doc.ids):
            self._advance(kind)
        else:
            self.cursor[kind]["offset"] = stop

    def _zero_counters(self) -> dict:
        return {kind: {"sequences": 0, "tokens": 0, "padding": 0, "images": 0,
                       "images_per_sequence": np.zeros(self.config.max_images + 1, np.int64)}
                for kind in SOURCES}


def _plain(counters: dict) -> dict:
    return {k: {n: (v.tolist() if isinstance(v, np.ndarray) else v) for n, v in c.items()}
            for k, c in counters.items()}


def validation_batches(config: DataConfig, n_sequences: int, batch_size: int) -> list[Batch]:
    """The fixed held-out set: ``n_sequences`` packed from the val split, in batches.

    The training seed is ignored (a fixed seed is used), so every run of a sweep, whatever its LR
    or seed, is scored on identical batches; the last batch may be smaller. Cached per process
    (the batches are read, never changed) and per state of the corpus's manifest, so a warm sweep
    worker packs them once for its cells.
    """
    files = [config.corpus_dir / "manifest.json"]
    if config.sources is not None:
        files += [path for kind in SOURCES for path in config.sources.files(kind)]
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None for p in files)
    return _validation_batches(config, n_sequences, batch_size, stamp)


@functools.lru_cache(maxsize=4)
def _validation_batches(config: DataConfig, n_sequences: int, batch_size: int, stamp: tuple | None) -> list[Batch]:
    if n_sequences < 1 or batch_size < 1:
        raise ConfigError(f"validation needs n_sequences >= 1 and batch_size >= 1, got "
                          f"{n_sequences} and {batch_size}")
    stream = PackedStream(dataclasses.replace(config, seed=VAL_SEED), split="val")
    sizes = [batch_size] * (n_sequences // batch_size)
    if n_sequences % batch_size:
        sizes.append(n_sequences % batch_size)
    return [stream.next_batch(size) for size in sizes]
