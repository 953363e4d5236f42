"""The bundled corpus as `make test` builds it (real Debian packages), and the model on its data.

The corpus is prepared once (idempotent: a prepared default corpus is reused as is). Where apt
cannot fetch the packages the corpus is the synthetic fallback; the checks that need the real
sources then skip, except under ``CI=true`` where that is a failure.
"""
from __future__ import annotations

import os
import time

import pyarrow.parquet as pq
import pytest
import torch

from mm1model.data import (DataConfig, MixtureConfig, PackedStream, default_corpus_dir,
                           load_tokenizer, prepare_corpus)
from mm1model.data.images import normalise_images
from mm1model.data.stats import corpus_stats
from mm1model.tokens import CORPUS_VOCAB_SIZE, IGNORE_INDEX, SPECIAL_TOKENS


@pytest.fixture(scope="module")
def corpus():
    manifest = prepare_corpus(echo=lambda line: None)
    return default_corpus_dir(), manifest


@pytest.fixture(scope="module")
def real_corpus(corpus):
    directory, manifest = corpus
    if manifest["synthetic"]:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but the corpus is the synthetic fallback", pytrace=False)
        pytest.skip("the prepared corpus is the synthetic fallback (no apt here)")
    return directory, manifest


def test_prepare_is_idempotent_and_fast_the_second_time(corpus):
    directory, manifest = corpus
    start = time.perf_counter()
    assert prepare_corpus(echo=lambda line: None) == manifest
    assert time.perf_counter() - start < 1.0


def test_the_real_corpus_has_every_source(real_corpus):
    _, manifest = real_corpus
    rows = {row["name"]: row for row in manifest["sources"]}
    assert {r["kind"] for r in rows.values()} == {"caption", "interleaved", "text"}
    assert not any(r["synthetic"] for r in rows.values())
    assert rows["kjv"]["items"] == 1189  # chapters of the KJV
    assert rows["austen"]["items"] >= 269  # chapters of six novels (+ title pages)
    assert 3500 <= rows["noto-emoji"]["items"] <= 3800
    assert 700 <= rows["tuxpaint-stamps"]["items"] <= 796
    assert 400 <= rows["gimp-help"]["items"] <= 520
    assert all(r["bytes"] > 0 and r["licence"] for r in rows.values())


def test_tokenizer_has_the_specials_first_and_the_full_vocabulary(real_corpus):
    directory, manifest = real_corpus
    tokenizer = load_tokenizer(directory)
    assert tokenizer.get_vocab_size() == manifest["vocab_size"] == CORPUS_VOCAB_SIZE
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    text = "In the beginning God created the heaven and the earth. Emma Woodhouse, ünïcode ✓"
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text and len(ids) < len(text) / 2.5


def test_gimp_pages_keep_their_images_in_place(real_corpus):
    directory, _ = real_corpus
    table = pq.read_table(directory / "interleaved" / "gimp-help.parquet")
    row = table.column("id").to_pylist().index("gimp-help/gimp-tool-crop")
    texts, images = table.column("texts")[row].as_py(), table.column("images")[row].as_py()
    layout = ["T" if t is not None else "I" for t in texts]
    assert all((t is None) != (i is None) for t, i in zip(texts, images))
    # the crop tool page: the tool figure right after its caption, the options screenshot
    # after the "Tool Options" heading; no 48 px admonition icon ("Note", "Tip") in between
    assert texts[:2] == ["4.4. Crop", "Figure 14.127. Crop tool"] and layout[2] == "I"
    options = texts.index("Figure 14.128. Tool Options for the “Crop” tool")
    assert layout[options + 1] == "I" and layout.count("I") == 7
    assert texts[texts.index("Note") - 1] is not None


@pytest.mark.parametrize("seq_len,sequences", [(128, 1000), (256, 2000)])
def test_stats_show_the_mixture_and_dense_packing(real_corpus, seq_len, sequences):
    # the CPU sizes' packing: 16 tokens per 32 px image (`scaling data stats` defaults)
    stats = corpus_stats(DataConfig(seq_len=seq_len, image_tokens=16, image_size=32), sequences)
    assert stats["synthetic"] is False and stats["skipped"] == {}
    for kind, target in (("caption", 0.45), ("interleaved", 0.45), ("text", 0.10)):
        assert abs(stats["mixture"][kind] - target) < 0.03
        assert stats["sources"][kind]["tokens"] > 0
    assert stats["packing_efficiency"] >= 0.9
    assert stats["sources"]["caption"]["images"] > stats["sources"]["interleaved"]["images"] > 0


def test_no_gradient_crosses_a_document_boundary(corpus):
    """d loss(doc j) / d (LM input embeddings of every other document) is exactly zero."""
    from mm1model.model import MM1
    from mm1model.sizes import get_size

    torch.manual_seed(0)
    model_config = get_size("100K")
    config = DataConfig(seq_len=128, image_tokens=model_config.tokens_per_image,
                        image_size=model_config.vit.image_size,
                        mixture=MixtureConfig(caption=0.5, interleaved=0.5, text=0.0))
    batch = PackedStream(config).next_batch(2)
    model = MM1(model_config)
    inputs = {}

    def capture(module, args):  # the LM's input: token embeddings with image tokens spliced in
        x = args[0].detach().requires_grad_(True)
        inputs["x"] = x
        return (x, *args[1:])

    model.lm.register_forward_pre_hook(capture)
    logits = model(batch["input_ids"], images=normalise_images(batch["images"]), doc_ids=batch["doc_ids"],
                   position_ids=batch["position_ids"]).logits  # (B, T, V)
    token_loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX,
        reduction="none").view_as(batch["labels"])  # (B, T)
    docs, labelled = batch["doc_ids"], batch["labels"] != IGNORE_INDEX
    checked = 0
    for b in range(2):
        for j in docs[b].unique().tolist():
            own = torch.zeros_like(docs, dtype=torch.bool)
            own[b] = docs[b] == j
            if not (own & labelled).any() or checked == 8:
                continue  # padding, a carried piece of one token; or enough checked
            (grad,) = torch.autograd.grad(token_loss[own].sum(), inputs["x"], retain_graph=True)
            assert grad[~own].abs().max() == 0  # exactly: other documents, other rows
            assert grad[own].abs().max() > 0
            checked += 1
    assert checked >= 4 and len(batch["images"]) > 0
