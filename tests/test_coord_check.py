"""The coordinate check on real corpus batches: mup flat over 4 widths, sp not; completep flat
over 3 depths, sp and Depth-muP not; the CLI's exit codes, files and bad input."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from mm1model.config import ConfigError
from scaling.cli import main
from scaling.coord_check import CoordCheckConfig, coord_check

torch.set_num_threads(1)
WIDTHS = ("w32", "w64", "w128", "w256")


@pytest.fixture(scope="module")
def corpus() -> str:
    from mm1model.data import default_corpus_dir, prepare_corpus

    prepare_corpus()
    return str(default_corpus_dir())


def test_mup_passes_over_four_widths(corpus, tmp_path):
    out = tmp_path / "mup"
    cli = CliRunner().invoke(main, ["coord-check", "--sizes", ",".join(WIDTHS), "--parametrization", "mup",
                                    "--corpus", corpus, "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    assert cli.output.startswith("coordinate check PASSED: mup over width 32, 64, 128, 256")
    result = json.loads((out / "coord_check.json").read_text())
    assert (out / "coord_check.png").stat().st_size > 10_000
    assert result["axis"] == "width" and result["passed"] is True
    # measured: 0.066 (16 seeds, 1 x 32 tokens, lr 3e-3); the bar is mup's 0.13
    assert result["max_slope"] < 0.1
    slopes = result["slopes"]
    # the zero-initialised query and head have no slope at step 1 only
    assert slopes["lm.blocks.0.attention.wq"][0] is None and slopes["lm.output"][0] is None
    assert all(s is not None for s in slopes["lm.output"][1:])
    assert {"lm.tok_embeddings", "lm.blocks.1.feed_forward.w2", "lm.norm", "connector.readout.2",
            "vit.blocks.0.qkv"} <= set(slopes)


def test_sp_fails_over_widths_and_says_so(corpus):
    result = coord_check(CoordCheckConfig(sizes=WIDTHS, parametrization="sp", seeds=2, corpus=corpus))
    assert not result.passed
    # one Adam step moves each hidden output by ~lr x fan_in: slope ~1 or more by step 3
    assert result.max_slope > 1.0 and result.worst[1] >= 2
    assert result.slopes["lm.output"][2] > 0.5
    assert "sp is expected to fail" in result.summary()


def test_completep_passes_over_three_depths_where_sp_and_depth_mup_fail(corpus):
    """d2, d4, d8 over base d2, blocks compared at equal relative depth. CompleteP (alpha 1)
    keeps every coordinate flat; sp's final residual stream grows with depth; Depth-muP
    (alpha 0.5) passes the stream but its blocks' updates shrink like 1/sqrt(depth), the
    'lazy' regime CompleteP's paper names."""
    kwargs = dict(sizes=("d2", "d4", "d8"), corpus=corpus)
    cp = coord_check(CoordCheckConfig(parametrization="completep", **kwargs))
    sp = coord_check(CoordCheckConfig(parametrization="sp", **kwargs))
    lazy = coord_check(CoordCheckConfig(parametrization="completep", alpha=0.5, **kwargs))
    assert cp.axis == "depth" and cp.x == [2, 4, 8]
    # block 1 of 2, 2 of 4 and 4 of 8 are one coordinate; the last block's output is stream@1
    assert {"lm.blocks@0.attention.wq", "lm.blocks@1/2.feed_forward.w2", "lm.stream@1/2", "lm.stream@1"} <= set(cp.slopes)
    assert not any(m.startswith(("lm.blocks.", "lm.blocks@1/4", "lm.stream@1/4")) for m in cp.slopes)
    assert cp.passed, cp.summary()
    assert cp.max_slope < 0.1  # measured 0.072 (16 seeds)
    assert not sp.passed and sp.slopes["lm.stream@1"][2] > 0.2  # measured +0.31
    assert not lazy.passed and lazy.slopes["lm.blocks@1/2.attention.wq"][2] < -0.3  # measured -0.50


def test_cli_exit_codes_and_files(corpus, tmp_path):
    runner = CliRunner()
    out = tmp_path / "sp"
    failed = runner.invoke(main, ["coord-check", "--sizes", "w32,w64", "--parametrization", "sp", "--seeds", "1",
                                  "--steps", "2", "--corpus", "synthetic", "--out", str(out)])
    assert failed.exit_code == 1, failed.output
    assert "coordinate check FAILED: sp over width 32, 64" in failed.output
    record = json.loads((out / "coord_check.json").read_text())
    assert record["passed"] is False and record["axis"] == "width"
    assert (out / "coord_check.png").stat().st_size > 10_000


@pytest.mark.parametrize("args, message", [
    (["--sizes", "w32,d4"], "the sizes must differ in width only (same depth) or depth only (same width), got "
     "w32 (d_model 32, 2 layers), d4 (d_model 64, 4 layers)"),
    (["--sizes", "w32"], "the coordinate check needs at least 2 sizes, got 1"),
    (["--sizes", "w32,w64", "--base-size", "w128"],
     "base size w128 (d_model 128, 2 layers) is larger than the target w32 (d_model 32, 2 layers)"),
    (["--sizes", "w32,w64", "--seeds", "0"], "seeds must be a positive integer, got 0"),
])
def test_cli_bad_input_is_one_line_exit_2(args, message, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["coord-check", "--corpus", "synthetic", "--out", str(out), *args])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {message}"]
    assert not out.exists()


def test_config_rejects_unknown_parametrization():
    with pytest.raises(ConfigError, match="^unknown parametrization 'ntk'; valid: sp, mup, completep$"):
        CoordCheckConfig(sizes=WIDTHS, parametrization="ntk")
