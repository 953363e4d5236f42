"""`scaling export`: a sharded checkpoint becomes a Llama checkpoint transformers loads (our logits)
and an MM1 safetensors file that rebuilds the same model."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from mm1model.checkpoint import checkpoint_paths
from mm1model.config import ConfigError
from mm1model.export import export_run, load_exported_mm1, load_trained_model
from mm1model.train import train

from test_train import corpus, small  # noqa: F401 (corpus is a fixture)


def _our_logits(model, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    return model.lm(model.lm.embed(ids), positions, None)


@pytest.mark.parametrize("size", ["100K", "w32"])  # a tied head and an untied one
def test_export_loads_in_llama_with_our_logits_and_rebuilds_the_mm1(corpus, tmp_path, size):  # noqa: F811
    transformers = pytest.importorskip("transformers")
    run_dir = tmp_path / "run"
    train(small(corpus, run_dir, size=size, steps=3, checkpoint_interval=2, eval_sequences=8))
    result = export_run(run_dir, tmp_path / "export")
    assert (result.step, result.world_size) == (2, 1)
    assert sorted(str(f.relative_to(result.out)) for f in result.files) == [
        "lm/config.json", "lm/model.safetensors", "mm1.safetensors", "mm1_config.json"]
    ours, path = load_trained_model(run_dir)
    assert path == checkpoint_paths(run_dir)[0]
    llama = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "export" / "lm", attn_implementation="eager")
    ids = torch.randint(5, ours.config.lm.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = llama(input_ids=ids).logits
        mine = _our_logits(ours, ids)
    torch.testing.assert_close(theirs, mine, rtol=1e-4, atol=1e-5)  # fp32 rounding of two kernels
    rebuilt = load_exported_mm1(tmp_path / "export")
    for (name, a), (_, b) in zip(ours.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), name
    assert (rebuilt.lm.output.weight is rebuilt.lm.tok_embeddings.weight) == rebuilt.config.lm.tie_embeddings


def test_export_refusals_are_one_line(corpus, tmp_path):  # noqa: F811
    from scaling.cli.export import export_command

    with pytest.raises(ConfigError, match=r"is not a trainer run directory \(no config.json\)"):
        export_run(tmp_path / "nothing", tmp_path / "out")
    mup = tmp_path / "mup"
    train(small(corpus, mup, size="w64", model={"parametrization": "mup", "base_size": "w32"}, steps=3,
                checkpoint_interval=2, eval_sequences=8))
    with pytest.raises(ConfigError, match=r"^a Llama checkpoint has no muP / CompleteP forward multipliers"):
        export_run(mup, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    train(small(corpus, empty, steps=1, checkpoint_interval=0, eval_sequences=8))
    result = CliRunner().invoke(export_command, [str(empty), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "has no checkpoint to export" in str(result.exception)
