"""`scaling data prepare`: build the bundled corpus in the standard formats, offline, once.

Layout of a corpus directory (any directory with this layout works as ``DataConfig.corpus``)::

    caption/*.tar            webdataset shards: KEY.jpg + KEY.txt
    interleaved/*.parquet    OBELICS-style: id, texts[], images[] (JPEG bytes), meta (JSON)
    text/*.jsonl             {"id": ..., "text": ...}
    tokenizer.json           byte-level BPE, special tokens first
    manifest.json            per source: name, kind, licence, items, bytes, synthetic

The real sources come from Debian packages fetched with ``apt-get download`` (never installed;
copyleft material is fetched here, never committed) and unpacked with ``dpkg-deb -x`` (see
:mod:`mm1model.data.debian`). Without apt, or with ``synthetic=True`` / ``MM1_SYNTHETIC=1``, the
procedural fallback of :mod:`mm1model.data.synthetic` is written instead and marked synthetic in
the manifest and on screen. ``manifest.json`` is written last and atomically, so a prepare that
was killed midway has no manifest and is simply redone; with a manifest, prepare returns at once.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Callable, Iterable

from mm1model import records
from mm1model.data import debian
from mm1model.data import synthetic as synth
from mm1model.data.tokenizer import TOKENIZER_FILE, train_tokenizer
from mm1model.data.writers import source_entry, write_caption_shards, write_interleaved, write_text_docs

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
TOKENIZER_CHARS_PER_FILE = 2_000_000
KINDS = ("caption", "interleaved", "text")


def default_corpus_dir() -> Path:
    """``$MM1_CORPUS`` if set, else ``~/.cache/mm1-scaling/corpus``."""
    env = os.environ.get("MM1_CORPUS")
    return Path(env) if env else Path.home() / ".cache" / "mm1-scaling" / "corpus"


def read_manifest(corpus_dir: str | Path) -> dict | None:
    """The manifest of a prepared corpus, or None when it was never (completely) prepared."""
    path = Path(corpus_dir) / MANIFEST
    if not path.is_file():
        return None
    manifest = records.read_json(path)
    return manifest if manifest.get("version") == MANIFEST_VERSION else None


def prepare_corpus(out: str | Path | None = None, synthetic: bool | None = None,
                   echo: Callable[[str], None] = print) -> dict:
    """Build the corpus in ``out`` (default :func:`default_corpus_dir`) and return its manifest.

    Idempotent: an existing complete corpus is returned untouched. ``synthetic=None`` follows
    ``$MM1_SYNTHETIC`` (``1`` forces the fallback); otherwise the real packages are used when
    apt works, and the fallback, announced through ``echo``, when it does not.
    """
    out = Path(out) if out is not None else default_corpus_dir()
    manifest = read_manifest(out)
    if manifest is not None:
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    # Concurrent prepares (sweep cells starting together) build it once: the others wait here
    # and then find the manifest.
    with open(out / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest(out)
        if manifest is not None:
            return manifest
        return _prepare(out, synthetic, echo)


def _prepare(out: Path, synthetic: bool | None, echo: Callable[[str], None]) -> dict:
    if synthetic is None:
        synthetic = os.environ.get("MM1_SYNTHETIC", "") not in ("", "0")
    start = time.time()
    for kind in KINDS:  # leftovers of a killed prepare
        shutil.rmtree(out / kind, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    sources = None
    if not synthetic:
        try:
            sources = debian.build_sources(out, echo)
        except debian.Unavailable as err:
            echo(f"WARNING: real corpus unavailable ({err}); writing the SYNTHETIC fallback")
            for kind in KINDS:
                shutil.rmtree(out / kind, ignore_errors=True)
    if sources is None:
        echo("SYNTHETIC corpus: procedurally generated shapes with exact captions and "
             "constructed documents (not real data)")
        sources = build_synthetic(out)
    texts = tokenizer_texts(out)
    tokenizer = train_tokenizer(texts)
    records.write_text(out / TOKENIZER_FILE, tokenizer.to_str())
    manifest = {
        "version": MANIFEST_VERSION,
        "synthetic": all(s["synthetic"] for s in sources),
        "sources": sources,
        "vocab_size": tokenizer.get_vocab_size(),
        "prepare_s": round(time.time() - start, 1),
    }
    records.write_json(out / MANIFEST, manifest)
    return manifest


def build_synthetic(out: Path) -> list[dict]:
    """The procedural fallback: 4000 captioned scenes, 800 lessons, 500 prose documents."""
    origin = "procedurally generated (mm1model.data.synthetic)"
    return [
        source_entry("shapes", "caption", "none (generated)", origin,
                     write_caption_shards(out / "caption", "shapes", synth.caption_pairs(4000)),
                     synthetic=True),
        source_entry("shape-lessons", "interleaved", "none (generated)", origin,
                     write_interleaved(out / "interleaved" / "shape-lessons.parquet",
                                       ((k, p, {"constructed": True}) for k, p in
                                        synth.interleaved_documents(800))), synthetic=True),
        source_entry("shape-stories", "text", "none (generated)", origin,
                     write_text_docs(out / "text" / "shape-stories.jsonl",
                                     synth.text_documents(500)), synthetic=True),
    ]


def tokenizer_texts(out: Path) -> Iterable[str]:
    """All text of the written corpus (captions, interleaved texts, text-only documents)."""
    import pyarrow.parquet as pq

    for shard in sorted((out / "caption").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".txt"):
                    yield tar.extractfile(member).read().decode("utf-8", errors="replace")
    for path in sorted((out / "interleaved").glob("*.parquet")):
        for texts in pq.read_table(path, columns=["texts"]).column("texts").to_pylist():
            yield "\n".join(t for t in texts if t)
    for path in sorted((out / "text").glob("*.jsonl")):
        # The first ~2 MB of each text-only source: word counts have settled by then, and the
        # BPE trainer's time grows with its input (all 14 MB would take ~10 s more).
        chars = 0
        for row in records.read_jsonl(path):
            yield row["text"]
            chars += len(row["text"])
            if chars > TOKENIZER_CHARS_PER_FILE:
                break
