"""Writers of the corpus formats (webdataset caption shards, OBELICS-style Parquet, JSONL
text) and of a manifest row: what ``scaling data prepare`` writes, and what tests use to make
corpora of their own. Reading them back is :mod:`mm1model.data.readers`."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterable

from PIL import Image

from mm1model import records
from mm1model.data.images import encode_jpeg, fit_within, to_rgb

# Images are stored small: the models here see 32-128 px inputs, and it keeps the corpus a few MB.
STORED_IMAGE_SIDE = 128
SHARD_RECORDS = 1000


def write_caption_shards(directory: Path, name: str,
                         pairs: Iterable[tuple[str, Image.Image, str]]) -> tuple[int, int]:
    """Webdataset shards ``NAME-000000.tar`` of ``SHARD_RECORDS`` pairs; returns (items, bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    items, total, shard, buffer = 0, 0, 0, []

    def flush() -> int:
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, payload, ext in buffer:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(payload), 0
                tar.addfile(info, io.BytesIO(payload))
        records.write_bytes(directory / f"{name}-{shard:06d}.tar", data.getvalue())
        buffer.clear()
        return len(data.getvalue())

    for key, image, text in pairs:
        buffer.append((key, encode_jpeg(fit_within(to_rgb(image), STORED_IMAGE_SIDE)), "jpg"))
        buffer.append((key, text.encode("utf-8"), "txt"))
        items += 1
        if len(buffer) == 2 * SHARD_RECORDS:
            total += flush()
            shard += 1
    if buffer:
        total += flush()
    return items, total


def write_interleaved(path: Path, docs: Iterable[tuple[str, list[str | Image.Image], dict]]
                      ) -> tuple[int, int]:
    """An OBELICS-style Parquet file (id, texts, images as JPEG bytes, meta JSON)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, texts, images, metas = [], [], [], []
    for key, parts, meta in docs:
        ids.append(key)
        texts.append([p if isinstance(p, str) else None for p in parts])
        images.append([None if isinstance(p, str) else
                       encode_jpeg(fit_within(to_rgb(p), STORED_IMAGE_SIDE)) for p in parts])
        metas.append(json.dumps(meta))
    table = pa.table({"id": ids, "texts": pa.array(texts, pa.list_(pa.string())),
                      "images": pa.array(images, pa.list_(pa.binary())), "meta": metas})
    data = io.BytesIO()
    pq.write_table(table, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    records.write_bytes(path, data.getvalue())
    return len(ids), len(data.getvalue())


def write_text_docs(path: Path, docs: Iterable[tuple[str, str]]) -> tuple[int, int]:
    """A JSONL file of ``{"id", "text"}`` documents."""
    rows = [{"id": key, "text": text} for key, text in docs]
    path.parent.mkdir(parents=True, exist_ok=True)
    records.write_jsonl(path, rows)
    return len(rows), path.stat().st_size


def source_entry(name: str, kind: str, licence: str, origin: str, items_bytes: tuple[int, int],
                 synthetic: bool = False) -> dict:
    """One manifest row."""
    items, size = items_bytes
    return {"name": name, "kind": kind, "licence": licence, "origin": origin, "items": items,
            "bytes": size, "synthetic": synthetic}
