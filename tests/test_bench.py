"""The benchmarks: alternating timing, the transformers comparison's shapes, the GPU benchmark
run at a tiny size on CPU (FSDP2 over a world of one, eager and compiled), sweep overhead
through the real local executor (:mod:`scaling.overhead`), and bad input.

Tiny shapes on one thread: the whole file runs in well under 40 s on 2 busy cores.
"""
from __future__ import annotations

import json

import pytest
import torch

from mm1model import bench
from mm1model.config import ConfigError
from mm1model.bench.compare import Comparison, alternate, compare_doc_mask, compare_lm, compare_mm1, hf_llama, to_record
from mm1model.bench.gpu import gpu_bench
from scaling.overhead import measure_overhead

TINY_VIT = {"vit": {"n_layers": 1}}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus() -> str:
    from mm1model.data import default_corpus_dir, prepare_corpus

    prepare_corpus()
    return str(default_corpus_dir())


def test_alternate_reverses_the_order_every_other_round():
    calls: list[str] = []
    samples = alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, calls=2)
    assert calls == list("aabb" "bbaa" "aabb" "bbaa")
    assert [len(s) for s in samples.values()] == [4, 4] and all(t > 0 for s in samples.values() for t in s)


def test_llama_reference_has_our_shape_and_parameter_count():
    pytest.importorskip("transformers")
    from mm1model.model import LM
    from mm1model.sizes import get_size

    for size, total in (("100K", 359_744), ("1M", 1_529_216)):
        cfg = get_size(size).lm
        ours, ref = LM(cfg), hf_llama(cfg)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) == total
        assert ref.config.tie_word_embeddings and ref.config.intermediate_size == cfg.ffn_dim
        assert ref.config._attn_implementation == "sdpa" and not ref.config.use_cache


def test_lm_comparison_record():
    pytest.importorskip("transformers")
    c = compare_lm("100K", batch_size=2, seq_len=32, repeats=5, calls=1)
    record = to_record(c)
    assert list(record)[:5] == ["name", "ours", "reference", "unit", "ratio"]
    assert record["name"] == "lm_step/100K" and record["unit"] == "tokens/s" and record["target"] == 1.0
    assert record["ratio"] == pytest.approx(record["ours"] / record["reference"])
    assert len(record["ours_samples"]) == len(record["reference_samples"]) == 5
    assert record["ours"] == pytest.approx(sorted(record["ours_samples"])[2], rel=1e-3)  # the median of 5


def test_mm1_and_doc_mask_comparisons(corpus):
    c = compare_mm1("100K", batch_size=2, seq_len=64, repeats=5, calls=1)
    assert c.name == "mm1_step/100K" and c.target is None and c.met is None and c.ratio > 0
    assert "1 images of 16 tokens" in c.detail["ours_is"]
    d = compare_doc_mask(128, batch_size=2, repeats=5, calls=1, corpus=corpus)
    assert d.name == "doc_mask/128" and d.target == 0.8 and d.met == (d.ratio >= 0.8)
    assert d.ratio == pytest.approx(d.ours / d.reference)


def test_gpu_benchmark_runs_on_cpu_at_a_tiny_size(capsys):
    records = gpu_bench(sizes=("100K",), compile_modes=(False, True), seq_len=64, batch_size=2, steps=1, warmup=1,
                        device="cpu", compile_backend="aot_eager", model=TINY_VIT)
    assert [r.get("error") for r in records] == [None, None]
    assert [r["compile"] for r in records] == [False, True]
    for r in records:
        assert r["fsdp"] is True and r["world_size"] == 1 and r["dtype"] == "fp32" and r["device"] == "cpu"
        assert r["tokens_per_s"] == pytest.approx(2 * 64 / r["step_s"]) and r["images_per_seq"] == 1
    # the CLI prints one JSON record per (size, compile mode)
    assert bench.main(["--gpu", "--sizes", "100K", "--seq-len", "64", "--batch-size", "2", "--steps", "1",
                       "--warmup", "0", "--device", "cpu", "--compile-modes", "eager", "--model",
                       json.dumps(TINY_VIT), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["size"] == "100K"


def test_gpu_benchmark_records_a_failed_pair_and_goes_on():
    # a bad config (3 heads do not divide d_model 64) stops the run at once ...
    with pytest.raises(ConfigError, match="must divide"):
        gpu_bench(sizes=("100K",), compile_modes=(False,), seq_len=64, batch_size=2, steps=1, warmup=0,
                  device="cpu", model={"lm": {"n_heads": 3}})
    # ... while a runtime failure (here an unknown compile backend) is recorded per pair
    records = gpu_bench(sizes=("100K",), compile_modes=(True, False), seq_len=64, batch_size=2, steps=1, warmup=0,
                        device="cpu", compile_backend="no-such-backend", model=TINY_VIT)
    assert "error" in records[0] and "no-such-backend" in records[0]["error"]
    assert "error" not in records[1] and records[1]["tokens_per_s"] > 0


def test_sweep_overhead_through_the_local_executor(corpus, tmp_path):
    c = measure_overhead("local", repeats=1, corpus=corpus, root=tmp_path, size="100K")
    assert c.name == "sweep_overhead/local" and c.unit == "s" and c.reference == 5.0
    run = c.detail["runs"][0]
    assert 0 < run["to_setup_s"] < run["to_first_step_s"] == pytest.approx(c.ours, abs=1e-3)
    assert c.ratio == pytest.approx(5.0 / c.ours)
    assert (tmp_path / "cell0" / "result.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--compare", "--repeats", "3"], "need repeats >= 5"),
    (["--compare", "--skip", "lm,bogus"], "unknown comparison kind(s) ['bogus']"),
    (["--gpu", "--compile-modes", "fast"], "unknown compile mode(s) ['fast']"),
    (["--gpu", "--sizes", "nope", "--device", "cpu"], "unknown size 'nope'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_overhead_rejects_an_unknown_executor():
    with pytest.raises(ConfigError, match="unknown executor 'pbs'"):
        measure_overhead("pbs")


def test_comparison_met_follows_the_target():
    assert Comparison("x", 2.0, 1.0, "tokens/s", 2.0, target=1.0).met is True
    assert Comparison("x", 0.5, 1.0, "tokens/s", 0.5, target=1.0).met is False
    assert Comparison("x", 0.5, 1.0, "tokens/s", 0.5).met is None


def test_gpu_script_writes_records_to_out(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OUT": str(tmp_path), "SIZES": "100K", "PER_SIZE_S": "60", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(repo / "scripts" / "gpu-bench.sh"), "--device", "cpu", "--seq-len", "64",
                           "--batch-size", "2", "--steps", "1", "--warmup", "0", "--threads", "1",
                           "--compile-modes", "eager", "--model", json.dumps(TINY_VIT)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (tmp_path / "gpu-bench.jsonl").read_text().splitlines()]
    assert [(r["size"], r["compile"], r["fsdp"]) for r in records] == [("100K", False, True)]
    assert (tmp_path / "gpu-bench-env.txt").read_text().count("torch") == 1


def test_per_document_attention_equals_the_dense_mask():
    """What --compare's doc_mask measures: from 512 tokens on CPU the LM attends one document
    at a time; it must give the dense mask's outputs and gradients (to float rounding)."""
    from mm1model import masks
    from mm1model import model as m
    from mm1model.sizes import get_size

    mcfg = get_size("1M")
    torch.manual_seed(0)
    lm = m.MM1(mcfg).lm
    lengths = ([100, 300, 112], [512], [7, 5, 500])  # a row of one document takes the fused causal path
    doc_ids = torch.stack([torch.cat([torch.full((n,), d) for d, n in enumerate(row)]) for row in lengths])
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])
    spans = masks.document_mask(doc_ids)
    assert spans == [[(0, 100), (100, 400), (400, 512)], [(0, 512)], [(0, 7), (7, 12), (12, 512)]]
    assert masks.document_mask(doc_ids[1:2]) is None and isinstance(masks.document_mask(doc_ids[:, :256]), torch.Tensor)
    assert masks.document_spans(torch.tensor([[0, 1, 0]])) is None  # a document in two runs: dense mask only
    x = torch.randn(3, 512, mcfg.lm.d_model, requires_grad=True)
    ours = lm(x, position_ids, doc_ids)
    (grad_ours,) = torch.autograd.grad(ours.square().mean(), x)
    cos, sin = m.rope_cos_sin(position_ids, mcfg.lm.head_dim, mcfg.lm.rope_theta)
    h, dense = x, masks.doc_attention_mask(doc_ids)
    for block in lm.blocks:
        h = block(h, cos, sin, dense)
    reference = lm.output(lm.norm(h))
    (grad_ref,) = torch.autograd.grad(reference.square().mean(), x)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-5, atol=1e-7)
