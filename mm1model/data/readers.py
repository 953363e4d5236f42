"""Readers for the three formats real users bring, with bad records skipped and counted.

* image-caption pairs: webdataset tar shards, ``KEY.jpg``/``KEY.png``/... next to ``KEY.txt``
  (the key is the member name up to the first dot of its basename, as in webdataset);
* interleaved documents: OBELICS-style records with parallel ``texts`` / ``images`` lists where
  exactly one of the two is set at each position, in JSONL or Parquet; an image is a path
  (relative to the file), raw bytes, or a ``{"bytes": ..., "path": ...}`` dict;
* text-only: JSONL with a ``text`` field, or plain ``.txt`` files (one document per file).

Each reader first *indexes* its files (tar headers, Parquet ids by row group, JSONL byte offsets;
no payload is decoded) into :class:`RecordRef` s, then *loads* one record on demand; ``check(path)``
reads a file's first record (or a Parquet file's columns) and raises a one-line
:class:`~mm1model.config.ConfigError` when the layout is not the kind's, so a corpus with a wrong
field name is refused when the stream is built, not once packing reaches it. The index lets
the stream shuffle per epoch, shard across ranks and workers by position, and resume from a
position without replaying the data. A bad record never raises: the reader returns ``None`` and
adds one to ``skipped[reason]``. Reasons: ``truncated_tar``, ``missing_pair``, ``empty_caption``,
``corrupt_image``, ``texts_images_mismatch``, ``bad_json``, ``empty_text``, ``empty_document``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tarfile
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

from PIL import Image

from mm1model.config import ConfigError
from mm1model.data.images import decode

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
ROW_GROUPS_HELD = 2  # Parquet row groups an InterleavedDocs keeps: the one being read and the last
JSONL_LINES_CHECKED = 100  # lines a format check reads to find a JSONL file's first record
_ID_DECODER = json.JSONDecoder()


@dataclasses.dataclass(frozen=True)
class RecordRef:
    """Where one record lives: ``key`` is stable across runs (split hashing uses it)."""

    key: str
    path: str
    where: Any  # format-specific: tar {ext: (offset, size)}, Parquet (row group, row), JSONL byte offset


@dataclasses.dataclass
class Document:
    """One example: text strings and decoded RGB images, in reading order."""

    key: str
    parts: list[str | Image.Image]


class CaptionShards:
    """Image-caption pairs in webdataset tar shards; each pair loads as ``[image, caption]``.

    ``image_side``: images are decoded at no less than this many pixels a side (see
    :func:`~mm1model.data.images.decode`); None decodes at full size.
    """

    def __init__(self, paths: list[Path], image_side: int | None = None):
        self.paths = sorted(str(p) for p in paths)
        self.image_side = image_side

    def index(self, skipped: Counter) -> list[RecordRef]:
        return [ref for path in self.paths for ref in self.index_path(path, skipped)]

    def index_path(self, path: str, skipped: Counter) -> list[RecordRef]:
        """The records of one shard, in file order."""
        refs = []
        groups: dict[str, dict[str, tuple[int, int]]] = {}
        size = os.path.getsize(path)
        truncated = False
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    if member.offset_data + member.size > size:
                        truncated = True
                        break
                    base = os.path.basename(member.name)
                    stem, _, ext = base.partition(".")
                    key = os.path.join(os.path.dirname(member.name), stem)
                    groups.setdefault(key, {})[ext.lower()] = (member.offset_data, member.size)
                else:
                    # tarfile takes a header cut short for the end of the archive; a whole
                    # shard ends with two zero blocks, so their absence means a cut.
                    truncated = not _has_end_marker(tar.fileobj, tar.offset, size)
        except (tarfile.TarError, EOFError, OSError):
            truncated = True
        if truncated:
            # Keep the pairs read before the cut; the pair the cut went through is part of
            # this one skip, not a missing pair of its own.
            skipped["truncated_tar"] += 1
            if groups:
                groups.popitem()
        for key, members in groups.items():
            if "txt" not in members or not any(e in members for e in IMAGE_EXTENSIONS):
                skipped["missing_pair"] += 1
                continue
            refs.append(RecordRef(key, path, members))
        return refs

    def check(self, path: str) -> None:
        """Nothing to read ahead: indexing a shard reads its layout (pairs missing a part are
        counted, and a kind with no pair at all is refused by the stream)."""

    def load(self, ref: RecordRef, skipped: Counter) -> Document | None:
        with open(ref.path, "rb") as handle:
            def read(ext: str) -> bytes:
                offset, size = ref.where[ext]
                handle.seek(offset)
                return handle.read(size)

            caption = read("txt").decode("utf-8", errors="replace").strip()
            if not caption:
                skipped["empty_caption"] += 1
                return None
            image_ext = next(e for e in IMAGE_EXTENSIONS if e in ref.where)
            try:
                image = decode(read(image_ext), self.image_side)
            except (OSError, ValueError, Image.DecompressionBombError):
                skipped["corrupt_image"] += 1
                return None
        return Document(ref.key, [image, caption])


class InterleavedDocs:
    """OBELICS-style documents in ``.jsonl`` or ``.parquet`` files (``image_side``: as above).

    A Parquet file is indexed from its ``id`` column alone (row numbers from the footer when it
    has none), and a record's ``texts`` / ``images`` are read with the rest of its row group; the
    reader keeps the last :data:`ROW_GROUPS_HELD` row groups it read (least recently used out),
    so its memory is a row group or two, never the corpus. Records are met in file order within
    a shard (:class:`~mm1model.data.stream.ShuffledShards`), so consecutive loads mostly hit the
    held row group; a source permuted whole that spans several row groups reads a row group per
    record on its first epoch (later epochs come from the stream's document cache).
    """

    def __init__(self, paths: list[Path], image_side: int | None = None):
        self.paths = sorted(str(p) for p in paths)
        self.image_side = image_side
        self._row_groups: OrderedDict[tuple[str, int], Any] = OrderedDict()  # (path, group) -> table

    def index(self, skipped: Counter) -> list[RecordRef]:
        return [ref for path in self.paths for ref in self.index_path(path, skipped)]

    def index_path(self, path: str, skipped: Counter) -> list[RecordRef]:
        """The records of one file, in file order (a Parquet ref's ``where``: (row group, row in it))."""
        if not path.endswith(".parquet"):
            return _jsonl_refs(path, skipped)
        parquet = _parquet_file(path)
        has_id = "id" in parquet.schema_arrow.names
        refs, row = [], 0
        for group in range(parquet.metadata.num_row_groups):
            keys = parquet.read_row_group(group, columns=["id"]).column("id").to_pylist() if has_id else None
            for i in range(parquet.metadata.row_group(group).num_rows):
                refs.append(RecordRef(str(keys[i]) if has_id else f"{Path(path).name}:{row}", path, (group, i)))
                row += 1
        return refs

    def check(self, path: str) -> None:
        """ConfigError unless the file has OBELICS' fields: a Parquet file's ``texts`` and
        ``images`` columns, a JSONL file's first record's ``texts`` and ``images``."""
        if path.endswith(".parquet"):
            _parquet_file(path)
        else:
            _check_jsonl(path, ("texts", "images"), 'an interleaved .jsonl needs {"texts": [...], '
                                                    '"images": [...]} on each line')

    def held_bytes(self) -> int:
        """Bytes of the Parquet row groups this reader holds (Arrow buffers)."""
        return sum(table.nbytes for table in self._row_groups.values())

    def _row_group(self, path: str, group: int):
        key = (path, group)
        if key in self._row_groups:
            self._row_groups.move_to_end(key)
        else:
            self._row_groups[key] = _parquet_file(path).read_row_group(group, columns=["texts", "images"])
            while len(self._row_groups) > ROW_GROUPS_HELD:
                self._row_groups.popitem(last=False)
        return self._row_groups[key]

    def load(self, ref: RecordRef, skipped: Counter) -> Document | None:
        if ref.path.endswith(".parquet"):
            group, row = ref.where
            table = self._row_group(ref.path, group)
            record = {name: table.column(name)[row].as_py() for name in ("texts", "images")}
        else:
            record = _jsonl_record(ref, skipped)
            if record is None:
                return None
        texts, images = record.get("texts"), record.get("images")
        if not isinstance(texts, list) or not isinstance(images, list) or len(texts) != len(images):
            skipped["texts_images_mismatch"] += 1
            return None
        parts: list[str | Image.Image] = []
        for text, image in zip(texts, images):
            if (text is None) == (image is None):  # both or neither set at one position
                skipped["texts_images_mismatch"] += 1
                return None
            if text is not None:
                if text.strip():
                    parts.append(text)
                continue
            try:
                parts.append(decode(_image_bytes(image, Path(ref.path).parent), self.image_side))
            except (OSError, ValueError, TypeError, Image.DecompressionBombError):
                # One bad picture does not void the document's text: drop the picture only.
                skipped["corrupt_image"] += 1
        if not any(isinstance(p, str) for p in parts):
            skipped["empty_document"] += 1
            return None
        return Document(ref.key, parts)


class TextDocs:
    """Text-only documents: JSONL with a ``text`` field, or plain ``.txt`` files."""

    def __init__(self, paths: list[Path]):
        self.paths = sorted(str(p) for p in paths)

    def index(self, skipped: Counter) -> list[RecordRef]:
        return [ref for path in self.paths for ref in self.index_path(path, skipped)]

    def index_path(self, path: str, skipped: Counter) -> list[RecordRef]:
        """The records of one file, in file order."""
        if path.endswith(".jsonl"):
            return _jsonl_refs(path, skipped)
        return [RecordRef(Path(path).name, path, None)]

    def check(self, path: str) -> None:
        """ConfigError unless a JSONL file's first record has a ``text`` field."""
        if path.endswith(".jsonl"):
            _check_jsonl(path, ("text",), 'a text .jsonl needs {"text": ...} on each line')

    def load(self, ref: RecordRef, skipped: Counter) -> Document | None:
        if ref.where is None:
            text = Path(ref.path).read_text(encoding="utf-8", errors="replace")
        else:
            record = _jsonl_record(ref, skipped)
            if record is None:
                return None
            text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            skipped["empty_text"] += 1
            return None
        return Document(ref.key, [text])


def _parquet_file(path: str):
    """The open Parquet file (footer read, no data); ConfigError without OBELICS' columns."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    missing = [c for c in ("texts", "images") if c not in names]
    if missing:  # not an OBELICS layout: every record would be skipped
        raise ConfigError(f"{path} has no {' or '.join(missing)} column (its columns: {', '.join(names)}); "
                          f"an interleaved .parquet needs OBELICS' texts[] and images[] (id optional)")
    return parquet


def _check_jsonl(path: str, fields: tuple[str, ...], layout: str) -> None:
    """ConfigError unless the first JSON object of a JSONL file has ``fields`` (blank and
    unparsable lines before it are skipped, up to :data:`JSONL_LINES_CHECKED` lines)."""
    with open(path, "rb") as handle:
        for line_no, line in enumerate(handle, 1):
            if line_no > JSONL_LINES_CHECKED:
                break
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            missing = [f for f in fields if f not in record]
            if missing:
                raise ConfigError(f"{path}: line {line_no} has no {' or '.join(missing)} field (its fields: "
                                  f"{', '.join(map(str, record)) or 'none'}); {layout}")
            return
    raise ConfigError(f"{path}: no JSON object in its first {JSONL_LINES_CHECKED} lines; {layout}")


def _has_end_marker(handle, offset: int, size: int) -> bool:
    if offset + 2 * tarfile.BLOCKSIZE > size:
        return False
    handle.seek(offset)
    return handle.read(2 * tarfile.BLOCKSIZE) == bytes(2 * tarfile.BLOCKSIZE)


def _jsonl_refs(path: str, skipped: Counter) -> list[RecordRef]:
    """One ref per non-blank line; the key is the record's ``id`` when the line has one."""
    refs = []
    name = Path(path).name
    with open(path, "rb") as handle:
        offset, line_no = 0, 0
        for line in handle:
            if line.strip():
                refs.append(RecordRef(_jsonl_key(line) or f"{name}:{line_no}", path, offset))
            offset += len(line)
            line_no += 1
    return refs


def _jsonl_key(line: bytes) -> str | None:
    """The ``id`` of a JSONL line that starts with it (the writers here put it first), without
    parsing the line: a long document's text is never decoded. None when it does not."""
    if not line.startswith(b'{"id": '):
        return None
    end = line.find(b'"', 8)
    if line[7:8] == b'"' and end > 0 and b"\\" not in line[8:end]:  # a plain string id
        return line[8:end].decode("utf-8", "replace")
    try:
        return str(_ID_DECODER.raw_decode(line[7:263].decode("utf-8", "ignore"))[0])
    except ValueError:  # an id of over 256 bytes, or no JSON at all
        try:
            return str(json.loads(line)["id"])
        except (ValueError, KeyError, TypeError):
            return None


def _jsonl_record(ref: RecordRef, skipped: Counter) -> dict | None:
    with open(ref.path, "rb") as handle:
        handle.seek(ref.where)
        line = handle.readline()
    try:
        record = json.loads(line)
    except ValueError:
        skipped["bad_json"] += 1
        return None
    if not isinstance(record, dict):
        skipped["bad_json"] += 1
        return None
    return record


def _image_bytes(image: Any, base: Path) -> bytes:
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, str):
        path = Path(image) if os.path.isabs(image) else base / image
        return path.read_bytes()
    raise TypeError(f"image entry of type {type(image).__name__}")
