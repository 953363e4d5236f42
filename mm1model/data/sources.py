"""User corpora: train on files in the standard formats where they lie, without `scaling data prepare`.

``DataConfig.sources`` names, per source kind, files, directories or glob patterns::

    [data.sources]
    caption = ["/data/laion/*.tar"]           # brace ranges like {00000..00999} are not expanded
    interleaved = ["/data/obelics/"]          # every .parquet and .jsonl directly inside
    text = ["/data/web/*.jsonl", "/data/books/moby.txt"]

Formats (the readers of :mod:`mm1model.data.readers`):

* ``caption``: webdataset ``.tar`` shards, ``KEY.jpg`` / ``KEY.jpeg`` / ``KEY.png`` / ``KEY.webp`` next
  to ``KEY.txt`` (the caption);
* ``interleaved``: OBELICS-style ``.parquet`` (columns ``texts`` and ``images``, optional ``id``) or
  ``.jsonl`` (``{"id": ..., "texts": [...], "images": [...]}``), parallel lists with exactly one of
  the two set at each position, an image as bytes, a path relative to the file, or
  ``{"bytes": ..., "path": ...}``;
* ``text``: ``.jsonl`` with a ``text`` field, or plain ``.txt`` files (one document each).

The mixture weights stay ``DataConfig.mixture`` (per kind; a kind with weight 0 may have no
files). The tokenizer is the prepared corpus's (``DataConfig.corpus``, else the bundled one): its
special tokens are the model's. Everything else (sharding, shuffling, the validation split by
record key, exact resumption, loader workers) is as for the bundled corpus. A path that matches
nothing, a file of a format its kind does not take, a Parquet file without ``texts`` / ``images``,
a JSONL file whose first record lacks the kind's field (``text``; ``texts`` and ``images``) and a
kind with weight but no records are each a :class:`~mm1model.config.ConfigError` of one line,
raised when the stream is built, before any training. The layout check reads the first file of
each format of a kind (``reader.check``), not every file: a later Parquet file without the columns
is the same one line when the stream reaches it.
"""
from __future__ import annotations

import dataclasses
import glob
from pathlib import Path
from typing import Any

from mm1model.config import ConfigError
from mm1model.data.readers import CaptionShards, InterleavedDocs, TextDocs

# the file extensions each kind reads, and the reader that reads them
FORMATS = {"caption": (".tar",), "interleaved": (".parquet", ".jsonl"), "text": (".jsonl", ".txt")}
FORMAT_NAMES = {"caption": "webdataset .tar shards", "interleaved": "OBELICS-style .parquet or .jsonl",
                "text": ".jsonl with a text field or .txt"}


@dataclasses.dataclass(frozen=True)
class SourcesConfig:
    """Files of each source kind: paths to files, directories (their files of the kind's formats,
    not recursive) or glob patterns (``*``, ``?``, ``[...]``, ``**``). See the module docstring."""

    caption: tuple[str, ...] = ()
    interleaved: tuple[str, ...] = ()
    text: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for kind in FORMATS:
            value = getattr(self, kind)
            if isinstance(value, str):
                object.__setattr__(self, kind, (value,))
            elif isinstance(value, list):
                object.__setattr__(self, kind, tuple(value))

    def files(self, kind: str) -> list[Path]:
        """The files of one kind, sorted; ConfigError for a path matching nothing or a file of
        another format."""
        found: set[Path] = set()
        for entry in getattr(self, kind):
            where = f"data.sources.{kind}: {entry}"
            path = Path(entry).expanduser()
            if any(c in entry for c in "*?["):
                matches = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
            elif path.is_dir():
                matches = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS[kind]]
            elif path.is_file():
                matches = [path]
            else:
                raise ConfigError(f"{where} does not exist")
            if not matches:
                raise ConfigError(f"{where} holds no {FORMAT_NAMES[kind]}")
            for match in matches:
                if match.suffix.lower() not in FORMATS[kind]:
                    raise ConfigError(f"{where}: {match} is not one of the {kind} formats ({FORMAT_NAMES[kind]})")
            found.update(m.resolve() for m in matches)
        return sorted(found)

    def open(self, image_side: int | None) -> dict[str, Any]:
        """The reader of each kind over its files (see :func:`~mm1model.data.stream.open_sources`)."""
        return {"caption": CaptionShards(self.files("caption"), image_side),
                "interleaved": InterleavedDocs(self.files("interleaved"), image_side),
                "text": TextDocs(self.files("text"))}
