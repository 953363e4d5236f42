"""The data pipeline on small corpora built here: packing, resume, sharding, bad records."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mm1model import records
from mm1model.config import ConfigError, from_dict
from mm1model.data import (DataConfig, MixtureConfig, PackedStream, prepare_corpus, split_of,
                           validation_batches)
from mm1model.data.corpus import MANIFEST
from mm1model.data.writers import write_caption_shards, write_interleaved, write_text_docs
from mm1model.data.images import CLIP_MEAN, CLIP_STD, normalise, preprocess, resize
from mm1model.data.mixture import MixtureSampler
from mm1model.data.stream import clear_document_cache
from mm1model.data.tokenizer import TOKENIZER_FILE, train_tokenizer
from mm1model.tokens import (EOD_ID, IGNORE_INDEX, IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID,
                             PAD_ID)
from scaling.cli import main

CAPTION_ONLY = MixtureConfig(caption=1, interleaved=0, text=0)
INTERLEAVED_ONLY = MixtureConfig(caption=0, interleaved=1, text=0)
TEXT_ONLY = MixtureConfig(caption=0, interleaved=0, text=1)


@pytest.fixture(scope="module")
def synthetic_corpus(tmp_path_factory) -> Path:
    """The procedural fallback corpus, forced (the real one is tested in test_data_corpus.py)."""
    out = tmp_path_factory.mktemp("synthetic")
    prepare_corpus(out, synthetic=True, echo=lambda line: None)
    return out


def _colour(i: int) -> Image.Image:
    return Image.new("RGB", (24 + i % 7, 16), (i * 37 % 256, i * 91 % 256, 80))


def _finish(out: Path, texts: list[str]) -> None:
    """Tokenizer and manifest, as prepare writes them last."""
    records.write_text(out / TOKENIZER_FILE, train_tokenizer(texts, vocab_size=600).to_str())
    records.write_json(out / MANIFEST, {"version": 1, "synthetic": True, "vocab_size": 600,
                                        "sources": []})


def _numbered_corpus(out: Path, n: int = 60) -> Path:
    """Every record of every kind names itself ("record 17"), so a test can read what it got."""
    write_caption_shards(out / "caption", "pairs",
                         ((f"pair-{i}", _colour(i), f"record {i}") for i in range(n)))
    write_interleaved(out / "interleaved" / "docs.parquet",
                      ((f"doc-{i}", [f"record {i} before", _colour(i), "after"], {})
                       for i in range(n)))
    write_text_docs(out / "text" / "prose.jsonl", ((f"text-{i}", f"record {i} alone.")
                                                   for i in range(n)))
    _finish(out, [f"record {i} before after alone." for i in range(n)])
    return out


def _config(corpus: Path, mixture: MixtureConfig = MixtureConfig(), **kw) -> DataConfig:
    kw = {"seq_len": 128, "image_tokens": 16, "image_size": 32, **kw}
    return DataConfig(corpus=str(corpus), mixture=mixture, **kw)


# ------------------------------------------------------------------------------- packing
def test_packed_sequences_follow_the_packing_rules(synthetic_corpus):
    stream = PackedStream(_config(synthetic_corpus))
    batch = stream.next_batch(64)
    k = 16
    ids, labels, docs, pos = (batch[n] for n in ("input_ids", "labels", "doc_ids", "position_ids"))
    assert ids.shape == labels.shape == docs.shape == pos.shape == (64, 128)
    assert all(t.dtype == torch.long for t in (ids, labels, docs, pos, batch["source"]))
    # placeholders = images x image_tokens, every image whole: START, k x IMAGE, END
    assert int((ids == IMAGE_ID).sum()) == len(batch["images"]) * k
    assert int((ids == IMAGE_START_ID).sum()) == len(batch["images"])
    for row in ids:
        for start in (row == IMAGE_START_ID).nonzero().flatten().tolist():
            assert row[start + 1:start + 1 + k].eq(IMAGE_ID).all()
            assert row[start + 1 + k] == IMAGE_END_ID
    # the stream sends uint8 pixels, longer side 32; the trainer normalises them on the device
    assert all(img.dtype == torch.uint8 and img.shape[0] == 3 and max(img.shape[1:]) == 32 for img in batch["images"])
    assert (batch["source"] == 0).sum() > 0 and (batch["source"] == 1).sum() > 0
    for b in range(64):
        change = torch.ones(128, dtype=torch.bool)
        change[1:] = docs[b, 1:] != docs[b, :-1]
        # doc ids count up from 0; positions restart at 0 at every new document, else count up
        assert docs[b, 0] == 0 and torch.isin(docs[b, 1:] - docs[b, :-1], torch.tensor([0, 1])).all()
        assert (pos[b][change] == 0).all()
        assert (pos[b, 1:][~change[1:]] == pos[b, :-1][~change[1:]] + 1).all()
        for t in range(128):
            last_of_doc = t == 127 or docs[b, t + 1] != docs[b, t]
            if last_of_doc or ids[b, t] == PAD_ID or ids[b, t + 1] in (IMAGE_ID, IMAGE_END_ID):
                assert labels[b, t] == IGNORE_INDEX
            else:
                assert labels[b, t] == ids[b, t + 1]
    # EOD closes documents: it is always the last token of its segment
    for b, t in (ids == EOD_ID).nonzero().tolist():
        assert t == 127 or docs[b, t + 1] != docs[b, t]
    assert stream.skipped == Counter()


def test_long_documents_are_carried_and_images_never_split(tmp_path):
    out = tmp_path / "c"
    big = [f"chapter {i}: " + " ".join(["word"] * 300) for i in range(8)]
    write_text_docs(out / "text" / "long.jsonl", ((f"t{i}", t) for i, t in enumerate(big)))
    docs = [(f"d{i}", ["intro " * 20, _colour(i), "middle " * 30, _colour(i + 1), "end"], {})
            for i in range(40)]
    write_interleaved(out / "interleaved" / "d.parquet", docs)
    write_caption_shards(out / "caption", "p", ((f"p{i}", _colour(i), "cap") for i in range(40)))
    _finish(out, big + ["intro middle end cap"])
    stream = PackedStream(_config(out, TEXT_ONLY, seq_len=64))
    rows = [next(stream) for _ in range(8)]
    # text fills every position: a long chapter continues in the next sequence, positions from 0
    assert all((r["input_ids"] != PAD_ID).all() for r in rows)
    assert rows[1]["position_ids"][0] == 0 and rows[1]["labels"][-1] == IGNORE_INDEX
    stream = PackedStream(_config(out, INTERLEAVED_ONLY, seq_len=64, image_tokens=30))
    for _ in range(20):
        row = next(stream)
        ids = row["input_ids"]
        assert int((ids == IMAGE_ID).sum()) == 30 * len(row["images"])
        assert int((ids == IMAGE_START_ID).sum()) == int((ids == IMAGE_END_ID).sum())
    # an image that can never fit (34 tokens > seq_len 20) is dropped and counted
    stream = PackedStream(_config(out, INTERLEAVED_ONLY, seq_len=20, image_tokens=32))
    rows = [next(stream) for _ in range(10)]
    assert sum(len(r["images"]) for r in rows) == 0
    assert stream.skipped["image_does_not_fit"] > 0


def test_max_images_caps_each_sequence(synthetic_corpus):
    stream = PackedStream(_config(synthetic_corpus, CAPTION_ONLY, seq_len=512, max_images=3))
    counts = [len(next(stream)["images"]) for _ in range(20)]
    assert counts == [3] * 20


# --------------------------------------------------------------------------- determinism
def test_resumed_stream_yields_the_same_next_100_sequences(synthetic_corpus):
    config = _config(synthetic_corpus, seed=3)
    first = PackedStream(config)
    for _ in range(37):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # it must survive a JSON checkpoint
    expected = [next(first) for _ in range(100)]
    clear_document_cache()  # the resumed stream reads and decodes everything again
    resumed = PackedStream(config)
    resumed.load_state_dict(state)
    got = [next(resumed) for _ in range(100)]
    for a, b in zip(expected, got):
        for name in ("input_ids", "labels", "doc_ids", "position_ids", "source"):
            assert torch.equal(a[name], b[name])
        assert len(a["images"]) == len(b["images"])
        assert all(torch.equal(x, y) for x, y in zip(a["images"], b["images"]))
    # a different seed gives a different stream
    other = PackedStream(_config(synthetic_corpus, seed=4))
    assert not all(torch.equal(next(other)["input_ids"], e["input_ids"]) for e in expected[:5])
    with pytest.raises(ConfigError, match="shard"):
        PackedStream(config, rank=1, world_size=2).load_state_dict(state)


def test_mixture_sampler_is_stratified_and_pinned():
    sampler = MixtureSampler(MixtureConfig(), seed=0)
    picks = np.array([sampler.source(i) for i in range(2000)])
    fractions = np.bincount(picks, minlength=3) / 2000
    assert np.abs(fractions - [0.45, 0.45, 0.10]).max() < 0.005
    assert picks[:12].tolist() == [1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0]
    zero = MixtureSampler(MixtureConfig(caption=0.5, interleaved=0, text=0.5), seed=1)
    assert {zero.source(i) for i in range(500)} == {0, 2}
    with pytest.raises(ConfigError, match="sum to 0"):
        MixtureConfig(caption=0, interleaved=0, text=0)
    with pytest.raises(ConfigError, match=">= 0"):
        MixtureConfig(caption=-1)


def test_data_config_is_closed_and_validated():
    config = from_dict(DataConfig, {"seq_len": 256, "mixture": {"text": 1.0}})
    assert config.mixture == MixtureConfig(text=1.0) and config.tokens_per_image == 144
    with pytest.raises(ConfigError, match="valid keys: corpus, seq_len"):
        from_dict(DataConfig, {"seq_length": 256})
    with pytest.raises(ConfigError, match="valid keys: caption, interleaved, text"):
        from_dict(DataConfig, {"mixture": {"captions": 1}})
    with pytest.raises(ConfigError, match="seq_len"):
        DataConfig(seq_len=1)


# ------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("mixture,kind,shard", [(CAPTION_ONLY, "caption", "rank"),
                                                (INTERLEAVED_ONLY, "interleaved", "rank"),
                                                (TEXT_ONLY, "text", "rank"),
                                                (TEXT_ONLY, "text", "worker")])
def test_two_ranks_together_see_every_record_once(tmp_path, mixture, kind, shard):
    corpus = _numbered_corpus(tmp_path / "c")
    seen = []
    for rank in range(2):
        where = ({"rank": rank, "world_size": 2} if shard == "rank"
                 else {"worker": rank, "num_workers": 2})
        stream = PackedStream(_config(corpus, mixture, seq_len=96), **where)
        docs, text = [], ""
        while stream.cursor[kind]["epoch"] == 0:
            row = next(stream)
            for doc in row["doc_ids"].unique().tolist():
                ids = row["input_ids"][row["doc_ids"] == doc]
                # a document carried into the next sequence is glued back together
                text += stream.tokenizer.decode(ids[ids > IMAGE_END_ID].tolist())
                if ids[-1] == EOD_ID:
                    docs.append(int(text.split()[1]))
                    text = ""
        # the sequence that finished the epoch may have gone on into the next one
        seen += docs[:len(range(rank, len(stream.refs[kind]), 2))]
    train = [i for i in range(60) if split_of({"caption": f"pair-{i}",
                                                "interleaved": f"doc-{i}",
                                                "text": f"text-{i}"}[kind]) == "train"]
    assert sorted(seen) == train  # every train record once, none twice, none from val
    assert 45 <= len(train) < 60


def test_validation_batches_are_held_out_and_independent_of_the_seed(synthetic_corpus):
    a = validation_batches(_config(synthetic_corpus, seed=0), n_sequences=10, batch_size=4)
    b = validation_batches(_config(synthetic_corpus, seed=123), n_sequences=10, batch_size=4)
    assert [x["input_ids"].shape[0] for x in a] == [4, 4, 2]
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    stream = PackedStream(_config(synthetic_corpus))
    val = PackedStream(_config(synthetic_corpus), split="val")
    for kind in ("caption", "interleaved", "text"):
        train_keys = {r.key for r in stream.refs[kind]}
        val_keys = {r.key for r in val.refs[kind]}
        assert train_keys and val_keys and not train_keys & val_keys
        assert 0.02 < len(val_keys) / (len(train_keys) + len(val_keys)) < 0.08


# ------------------------------------------------------------------------------- images
def test_preprocess_keeps_aspect_pads_with_the_mean_and_normalises():
    red = Image.new("RGB", (40, 20), (255, 0, 0))
    out = preprocess(red, 32)
    assert out.shape == (3, 32, 32)
    expected = [(1 - CLIP_MEAN[0]) / CLIP_STD[0], -CLIP_MEAN[1] / CLIP_STD[1],
                -CLIP_MEAN[2] / CLIP_STD[2]]
    # 40 x 20 -> 32 x 16, centred: rows 8..23 hold the image, rows above and below are padding
    assert torch.allclose(out[:, 8:24, :], torch.tensor(expected).view(3, 1, 1), atol=1e-5)
    assert out[:, :8].abs().max() == 0 and out[:, 24:].abs().max() == 0
    assert torch.allclose(out[:, 16, 0], torch.tensor([1.9303, -1.7521, -1.4802]), atol=1e-4)
    # what the stream caches: uint8, unpadded, a quarter of a float32 pixel (and no padding bytes)
    pixels = resize(red, 32)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 16, 32) and pixels.nbytes == 1536 == out.nbytes // 8
    assert torch.equal(normalise(pixels), out)


# ----------------------------------------------------------------------------- bad input
def _train_key(stem: str) -> str:
    """A record key that the 5% hold-out puts in the train split."""
    return next(f"{stem}{i}" for i in range(100) if split_of(f"{stem}{i}") == "train")


def _bad_corpus(out: Path) -> Path:
    """Good records of each kind plus one bad record of each kind, all in the train split."""
    write_caption_shards(out / "caption", "good", ((f"g{i}", _colour(i), f"fine {i}")
                                                   for i in range(30)))
    corrupt, blank = _train_key("corrupt"), _train_key("blank")
    shard = io.BytesIO()
    with tarfile.open(fileobj=shard, mode="w") as tar:
        for name, payload in ((f"{corrupt}.jpg", b"\xff\xd8 not a jpeg"), (f"{corrupt}.txt", b"cap"),
                              (f"{blank}.png", _png(_colour(1))), (f"{blank}.txt", b"   \n"),
                              ("lonely.png", _png(_colour(2)))):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    (out / "caption" / "bad-000000.tar").write_bytes(shard.getvalue())
    whole = (out / "caption" / "good-000000.tar").read_bytes()
    (out / "caption" / "cut-000000.tar").write_bytes(whole[:len(whole) // 2 + 100])
    lines = [{"id": _train_key("short"), "texts": ["a", None], "images": [None]},
             {"id": _train_key("both"), "texts": ["a", "b"], "images": [None, "pic.png"]},
             {"id": _train_key("broken"), "texts": ["with a broken picture", None],
              "images": [None, "missing.png"]}]
    lines += [{"id": f"ok{i}", "texts": [f"doc {i}", None], "images": [None, "pic.png"]}
              for i in range(30)]
    rows = [json.dumps(line) for line in lines]
    # the unparsable line's key is its line number: pad with blank lines to a train one
    while split_of(f"docs.jsonl:{len(rows)}") != "train":
        rows.append("")
    (out / "interleaved").mkdir()
    (out / "interleaved" / "docs.jsonl").write_text("\n".join(rows + ["{not json"]) + "\n")
    _colour(5).save(out / "interleaved" / "pic.png")
    write_text_docs(out / "text" / "t.jsonl", [(f"t{i}", f"text {i}") for i in range(30)]
                    + [(_train_key("empty"), "  ")])
    _finish(out, ["fine doc text cap a b"])
    return out


def _png(image: Image.Image) -> bytes:
    data = io.BytesIO()
    image.save(data, format="PNG")
    return data.getvalue()


def test_bad_records_are_skipped_and_counted_by_reason(tmp_path):
    corpus = _bad_corpus(tmp_path / "bad")
    stream = PackedStream(_config(corpus, seq_len=64))
    for _ in range(300):  # several epochs of every source: never a crash
        next(stream)
    epochs = {kind: stream.cursor[kind]["epoch"] for kind in ("caption", "interleaved", "text")}
    assert min(epochs.values()) >= 1
    # each bad record is counted once, however many epochs meet it
    assert stream.skipped == Counter({"truncated_tar": 1, "missing_pair": 1,
                                      "corrupt_image": 2,  # a pair and a document's picture
                                      "empty_caption": 1, "texts_images_mismatch": 2,
                                      "bad_json": 1, "empty_text": 1})
    runner = CliRunner()
    result = runner.invoke(main, ["data", "stats", "--corpus", str(corpus), "--sequences", "50",
                                  "--seq-len", "64", "--json"])
    assert result.exit_code == 0, result.output
    skipped = json.loads(result.output)["skipped"]
    assert skipped["truncated_tar"] == 1 and skipped["missing_pair"] == 1
    text = runner.invoke(main, ["data", "stats", "--corpus", str(corpus), "--sequences", "50",
                                "--seq-len", "64"]).output
    assert "truncated_tar 1" in text


def test_cli_errors_are_one_line_and_exit_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["data", "stats", "--corpus", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "error: corpus" in result.output and "scaling data prepare" in result.output
    corpus = _numbered_corpus(tmp_path / "c")
    result = runner.invoke(main, ["data", "stats", "--corpus", str(corpus), "--sequences", "0"])
    assert result.exit_code == 2 and "--sequences must be >= 1" in result.output


# ------------------------------------------------------------------------------- prepare
def test_synthetic_fallback_is_labelled_and_prepare_is_idempotent(tmp_path, monkeypatch):
    lines = []
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg-deb: the real path fails
    manifest = prepare_corpus(tmp_path / "c", echo=lines.append)
    assert manifest["synthetic"] is True
    assert all(s["synthetic"] for s in manifest["sources"])
    assert {s["kind"] for s in manifest["sources"]} == {"caption", "interleaved", "text"}
    assert any("WARNING" in line and "no apt-get" in line for line in lines)
    assert any("SYNTHETIC" in line for line in lines)
    # second call: the manifest is there, nothing is rebuilt
    lines.clear()
    stamp = (tmp_path / "c" / "caption" / "shapes-000000.tar").stat().st_mtime_ns
    assert prepare_corpus(tmp_path / "c", echo=lines.append) == manifest and lines == []
    assert (tmp_path / "c" / "caption" / "shapes-000000.tar").stat().st_mtime_ns == stamp
    # a prepare killed before its manifest is redone from scratch
    (tmp_path / "c" / MANIFEST).unlink()
    (tmp_path / "c" / "caption" / "stale-000000.tar").write_bytes(b"half a shard")
    assert prepare_corpus(tmp_path / "c", synthetic=True, echo=lines.append)["synthetic"]
    assert not (tmp_path / "c" / "caption" / "stale-000000.tar").exists()
    result = CliRunner().invoke(main, ["data", "prepare", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0 and "SYNTHETIC" in result.output


def test_plain_text_files_and_jsonl_image_paths_are_read(tmp_path):
    out = tmp_path / "c"
    (out / "text").mkdir(parents=True)
    (out / "text" / "a.txt").write_text("A plain text file is one document.\n")
    (out / "text" / "b.txt").write_text("And so is this one.\n")
    (out / "interleaved").mkdir()
    _colour(3).save(out / "interleaved" / "p.png")
    rows = [{"id": f"x{i}", "texts": [f"see {i}", None], "images": [None, "p.png"]}
            for i in range(40)]
    (out / "interleaved" / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_caption_shards(out / "caption", "p", ((f"p{i}", _colour(i), "cap") for i in range(40)))
    _finish(out, ["A plain text file is one document. And so is this one. see cap"])
    stream = PackedStream(_config(out, TEXT_ONLY, seq_len=32))
    assert split_of("a.txt") == split_of("b.txt") == "train"
    text = "".join(stream.tokenizer.decode(next(stream)["input_ids"].tolist()) for _ in range(2))
    assert "A plain text file is one document." in text and "And so is this one." in text
    row = next(PackedStream(_config(out, INTERLEAVED_ONLY, seq_len=64)))
    assert len(row["images"]) >= 1 and stream.skipped == Counter()


def test_emoji_captions_use_the_cldr_form():
    from mm1model.data.debian import emoji_name

    assert emoji_name(":woman_mage_dark_skin_tone:") == "woman mage: dark skin tone"
    assert emoji_name(":thumbs_up_medium-light_skin_tone:") == "thumbs up: medium-light skin tone"
    assert emoji_name(":1st_place_medal:") == "1st place medal"


def test_an_image_longer_than_the_sequence_is_refused_not_a_hang(corpus):
    with pytest.raises(ConfigError, match=r"an image takes 144 \+ 2 tokens, more than seq_len 128"):
        PackedStream(DataConfig(corpus=corpus, seq_len=128, image_tokens=144))
