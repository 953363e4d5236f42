"""The size table, the analytic counts against built models, FLOPs, and `scaling sizes`."""
from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mm1model.config import ConfigError, replace
from mm1model.counting import flops_per_token, image_flops, param_counts
from mm1model.model import MM1
from mm1model.sizes import SIZES, get_size, size_names
from mm1model.tokens import CORPUS_VOCAB_SIZE, IMAGE_ID
from scaling.cli import main

torch.set_num_threads(1)

CPU_SIZES = ["100K", "300K", "1M", "3M"]
NOMINAL = {"100K": 1e5, "300K": 3e5, "1M": 1e6, "3M": 3e6, "9M": 9e6, "85M": 85e6, "302M": 302e6,
           "1.2B": 1.2e9, "3B": 3e9, "7B": 7e9, "30B": 30e9}


def test_table_order_and_names():
    assert size_names() == list(NOMINAL)
    ns = [param_counts(SIZES[name]).params for name in size_names()]
    assert ns == sorted(ns)


@pytest.mark.parametrize("name", list(NOMINAL))
def test_size_builds_and_matches_analytic_count(name):
    cfg = get_size(name)
    # Paper sizes on the meta device: shapes without memory, so 30B builds in a second.
    with torch.device("cpu" if name in CPU_SIZES else "meta"):
        model = MM1(cfg)
    counts = param_counts(cfg)
    n = sum(p.numel() for p in model.lm.blocks.parameters()) + model.lm.norm.weight.numel()
    assert counts.params == n
    assert counts.params_lm_total == sum(p.numel() for p in model.lm.parameters())
    assert counts.params_lm_embedding == counts.params_lm_total - n
    assert counts.params_vision == sum(p.numel() for p in model.vit.parameters())
    assert counts.params_connector == sum(p.numel() for p in model.connector.parameters())
    assert counts.params_total == sum(p.numel() for p in model.parameters())
    assert abs(counts.params / NOMINAL[name] - 1) < 0.05
    assert cfg.name == name and cfg.source


def test_pinned_counts():
    """Hand-checkable: 1M = 5 layers x (4 x 128^2 + 3 x 128 x 352 + 2 x 128) + 128."""
    assert param_counts(get_size("1M")).params == 5 * (4 * 128**2 + 3 * 128 * 352 + 2 * 128) + 128 == 1_004_928
    assert param_counts(get_size("7B")).params == 6_979_588_096  # Mistral-7B's non-embedding count
    vit_l = param_counts(get_size("85M")).params_vision
    # OpenAI CLIP ViT-L/14@336's visual tower (304.29M) less ln_post and the 1024 x 768
    # projection, which act on the class token only.
    assert vit_l == 304_293_888 - 2 * 1024 - 1024 * 768


def test_cpu_sizes_span_and_shape():
    ns = [param_counts(get_size(name)).params for name in CPU_SIZES]
    assert ns[-1] / ns[0] >= 30
    for name in CPU_SIZES:
        cfg = get_size(name)
        assert cfg.lm.vocab_size == CORPUS_VOCAB_SIZE
        assert cfg.tokens_per_image == 16 and cfg.vit.image_size == 32


def test_paper_encoders():
    for name in ["9M", "85M", "302M", "1.2B"]:
        vit = get_size(name).vit
        assert (vit.image_size, vit.patch_size, vit.width, vit.n_layers) == (336, 14, 1024, 24)
    for name in ["3B", "7B", "30B"]:
        vit = get_size(name).vit
        assert (vit.image_size, vit.patch_size, vit.width, vit.n_layers) == (378, 14, 1280, 32)
    assert all(get_size(n).connector.kind == "c_abstractor" and get_size(n).tokens_per_image == 144
               for n in NOMINAL if n not in CPU_SIZES)


def test_unknown_size():
    with pytest.raises(ConfigError, match=r"unknown size '2M'; valid sizes: 100K, 300K, 1M, 3M, 9M, .*, 30B \(families: w32, .*, d16, gw256, .*, gd48\)$"):
        get_size("2M")


def _training_flops(cfg, batch, t, images):
    # The math SDPA backend runs attention as bmm, which FlopCounterMode counts; the fused CPU
    # kernel is not counted at all.
    model = MM1(cfg)
    labels = torch.roll(batch, -1, 1)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(batch, images, labels, doc_ids=torch.zeros_like(batch)).loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("kind, sub_images, rel", [
    # Exact: every matmul, conv and attention product is in the formula.
    ("avg_pool", False, 1e-9),
    ("avg_pool", True, 1e-9),
    # The formula counts the queries' projection once per image; a batch of 5 crops shares it.
    ("attention_pool", True, 1e-3),
    # FlopCounterMode counts the depthwise conv's input gradient as a dense conv (it ignores
    # groups), so it reads higher than the formula, by the C-Abstractor's small share.
    ("c_abstractor", False, 5e-3),
])
def test_flops_against_flop_counter(kind, sub_images, rel):
    cfg = replace(get_size("1M"), connector={"kind": kind, "depth": 2}, vit={"sub_images": sub_images})
    b, t = 2, 128
    batch = torch.randint(5, CORPUS_VOCAB_SIZE, (b, t), generator=torch.Generator().manual_seed(0))
    batch[0, 5:5 + cfg.tokens_per_image] = IMAGE_ID
    side = 64 if sub_images else 32
    counted = _training_flops(cfg, batch, t, [torch.randn(3, side, side)])
    predicted = flops_per_token(cfg, t) * b * t + image_flops(cfg)
    assert predicted == pytest.approx(counted, rel=rel)


def test_flops_per_token_pinned():
    """1M at T=128: 3 x (2 x (5 x 200,704 + 4096 x 128) + 5 x 4 x 128 x 128) = 10,149,888."""
    assert flops_per_token(get_size("1M"), 128) == 10_149_888
    # Kaplan's 6N rule of thumb holds for 7B at 4096 tokens within 20% (attention + head on top).
    ratio = flops_per_token(get_size("7B"), 4096) / (6 * param_counts(get_size("7B")).params)
    assert 1.0 < ratio < 1.2


def test_cli_json():
    result = CliRunner().invoke(main, ["sizes", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == list(NOMINAL)
    keys = {"name", "params", "params_lm_total", "params_vision", "params_connector", "params_total",
            "d_model", "n_layers", "n_heads", "image_tokens", "params_lm_embedding", "source"}
    assert all(keys <= set(r) for r in rows)
    one = json.loads(CliRunner().invoke(main, ["sizes", "--json", "--size", "3M"]).output)
    assert one[0]["params"] == 3_099_072 and one[0]["image_tokens"] == 16


def test_cli_table():
    result = CliRunner().invoke(main, ["sizes"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["size", "family", "N"]
    assert re.match(r"^7B\s+mm1\s+6\.98B\s+7\.24B\s+631M", lines[10])


def test_cli_families():
    width = json.loads(CliRunner().invoke(main, ["sizes", "--json", "--family", "width"]).output)
    assert [(r["name"], r["params"], r["n_layers"]) for r in width] == [
        ("w32", 26_784, 2), ("w64", 106_816, 2), ("w128", 426_624, 2), ("w256", 1_705_216, 2),
        # 12 layers of 13 d^2 (4 attention + 3 x 3 SwiGLU) and 2 norms, plus the final norm
        *[(f"gw{d}", 12 * (13 * d * d + 2 * d) + d, 12) for d in (256, 512, 1024, 2048)]]
    assert width[-1]["params"] == 654_362_624
    depth = json.loads(CliRunner().invoke(main, ["sizes", "--json", "--family", "depth"]).output)
    assert [(r["name"], r["d_model"], r["n_layers"], r["n_heads"]) for r in depth][-4:] == [
        ("gd6", 1024, 6, 16), ("gd12", 1024, 12, 16), ("gd24", 1024, 24, 16), ("gd48", 1024, 48, 16)]
    every = json.loads(CliRunner().invoke(main, ["sizes", "--json", "--family", "all"]).output)
    assert {r["family"] for r in every} == {"mm1", "width", "depth"} and len(every) == 27


def test_cli_unknown_size_exits_2():
    result = CliRunner().invoke(main, ["sizes", "--size", "2M"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: unknown size '2M'; valid sizes: 100K, 300K, 1M, 3M, 9M, 85M, 302M, 1.2B, 3B, 7B, 30B "
        "(families: w32, w64, w128, w256, d2, d4, d8, d16, gw256, gw512, gw1024, gw2048, gd6, gd12, gd24, gd48)"]
