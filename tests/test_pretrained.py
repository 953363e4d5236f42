"""Pretrained starts: tiny random Hugging Face checkpoints, built offline, load into our towers.

The checkpoints are made here from configs (``LlamaForCausalLM``, ``CLIPVisionModel``, a
byte-level BPE trained on a few lines) and saved with ``save_pretrained``; one LM is saved in
shards with an index. Their shapes are the 100K size's (d 64, 2 layers, 4 heads, ffn 168; the ViT
of width 64, 2 layers, 8 px patches) with grouped-query heads (2 KV heads), rope theta 5e5, RMSNorm
eps 1e-6 and QuickGELU, so every field the loader carries over differs from our defaults. The
LM's init std is 0.2 (not 0.02): its logits are far from uniform, so a run that starts at the
loaded model's loss is told apart from one at ln(vocab).
"""
from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace as dataclass_replace

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from mm1model import records
from mm1model.config import ConfigError, from_dict, to_dict
from mm1model.data import PackedStream
from mm1model.data.images import normalise_images
from mm1model.data.tokenizer import load_tokenizer
from mm1model.model import MM1
from mm1model.parametrization import freeze_towers, param_groups, unwrapped_name
from mm1model.pretrained import llama_sources, load_pretrained, read_llama
from mm1model.shard_loading import MEAN_CHUNK_ROWS, LoadReport, SafetensorsCheckpoint, load_sources
from mm1model.train import build_model, resolve, train
from mm1model.train_config import InitConfig, TrainConfig, model_config
from scaling.fit import fit_runs
from scaling.law import FitResult
from scaling.runs import run_row

from test_train import corpus, run_on_loopback, small  # noqa: F401 (corpus is a fixture)

transformers = pytest.importorskip("transformers")

EMBEDDING_ROWS = 320  # more rows than the tokenizer's 300 tokens, as real checkpoints pad their vocabulary
LINES = ["In the beginning God created the heaven and the earth.", "Emma Woodhouse, handsome, clever, and rich.",
         "The GIMP crop tool removes the edges of an image.", "A photo of a cat sitting on a red chair."] * 20
GQA = {"lm": {"n_kv_heads": 2}}  # the 100K size with the checkpoints' 2 KV heads


def llama(path, tie: bool, shard: bool, kv_heads: int = 2):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    config = transformers.LlamaConfig(vocab_size=EMBEDDING_ROWS, hidden_size=64, intermediate_size=168,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv_heads,
                                      rope_theta=5e5, rms_norm_eps=1e-6, tie_word_embeddings=tie,
                                      initializer_range=0.2, eos_token_id=2, bos_token_id=1)
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(path, **({"max_shard_size": "40KB"} if shard else {}))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(LINES, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                             show_progress=False))
    tokenizer.save(str(path / "tokenizer.json"))
    return model.eval()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """Two LMs (tied, one file; untied, sharded with an index) and a CLIP ViT at 16 px; and an LM
    of exactly the 100K size's shape (multi-head) for `scaling launch`, which takes no model overrides."""
    root = tmp_path_factory.mktemp("hf")
    tied, untied = llama(root / "tied", tie=True, shard=False), llama(root / "untied", tie=False, shard=True)
    llama(root / "mha", tie=True, shard=False, kv_heads=4)
    vision = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=16, patch_size=8,
                                           hidden_act="quick_gelu", layer_norm_eps=1e-6)
    torch.manual_seed(2)
    clip = transformers.CLIPVisionModel(vision).eval()
    clip.save_pretrained(root / "clip")
    return {"root": root, "tied": tied, "untied": untied, "clip": clip}


def edited(checkpoint, path, **changes):
    """A copy of ``checkpoint`` at ``path`` (replaced if there) whose config.json has ``changes``
    (None removes a key)."""
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(checkpoint, path)
    cfg = {**json.loads((path / "config.json").read_text()), **changes}
    (path / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    return path


def loaded(hf, lm: str, **model) -> MM1:
    config = TrainConfig(size="100K", model={**GQA, **model}, init=InitConfig(lm=str(hf["root"] / lm),
                                                                              vit=str(hf["root"] / "clip")))
    mm1 = MM1(model_config(config))
    torch.manual_seed(0)
    mm1.init_weights()  # what init_sharded draws on a meta-built model, for the 2-rank comparison
    load_pretrained(mm1, config.init.lm, config.init.vit)
    return mm1.eval()


@pytest.mark.parametrize("lm", ["tied", "untied"])  # one safetensors file / a sharded index
def test_our_lm_gives_llama_logits_with_three_image_rows_grown_as_the_mean(hf, lm):
    assert (lm == "untied") == (hf["root"] / lm / "model.safetensors.index.json").is_file()
    ours = loaded(hf, lm)
    cfg = ours.config.lm
    assert (cfg.vocab_size, cfg.kv_heads, cfg.rope_theta, cfg.norm_eps) == (EMBEDDING_ROWS + 3, 2, 5e5, 1e-6)
    assert cfg.tie_embeddings == (lm == "tied") and ours.config.image_id == EMBEDDING_ROWS
    ids = torch.randint(0, EMBEDDING_ROWS, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = hf[lm](input_ids=ids).logits
        mine = ours.lm(ours.lm.embed(ids), torch.arange(24).expand(2, 24), None)
    assert mine.shape[-1] == EMBEDDING_ROWS + 3
    torch.testing.assert_close(mine[..., :EMBEDDING_ROWS], theirs, rtol=1e-5, atol=1e-5)  # fp32 rounding
    assert (theirs.std() > 1.0)  # init std 0.2: far from uniform logits
    emb = hf[lm].model.embed_tokens.weight
    new = ours.lm.tok_embeddings.weight[EMBEDDING_ROWS:]
    torch.testing.assert_close(new, emb.mean(0).expand(3, -1), rtol=1e-6, atol=1e-7)
    head = hf[lm].lm_head.weight
    torch.testing.assert_close(ours.lm.output.weight[EMBEDDING_ROWS:], head.mean(0).expand(3, -1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("side", [16, 32])  # the checkpoint's resolution, and twice it (interpolated)
def test_our_vit_gives_clip_patch_features(hf, side):
    ours = loaded(hf, "tied", vit={"image_size": side})
    assert (ours.config.vit.activation, ours.config.vit.norm_eps) == ("quick_gelu", 1e-6)
    pixels = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = hf["clip"](pixel_values=pixels, interpolate_pos_encoding=side != 16).last_hidden_state[:, 1:]
        mine = ours.vit(pixels)
    assert mine.shape == (2, (side // 8) ** 2, 64)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_training_from_the_loaded_weights_starts_at_their_loss_and_freezing_keeps_a_tower(
        hf, corpus, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    init = {"lm": str(hf["root"] / "tied"), "vit": str(hf["root"] / "clip"), "freeze_vit": True}
    config = small(corpus, run_dir, model=GQA, init=init, steps=3, warmup_steps=1, checkpoint_interval=2,
                   eval_interval=0, eval_sequences=8)
    resolved = resolve(config)
    assert resolved.data.tokenizer == init["lm"]
    # the first batch the trainer draws, tokenized with the checkpoint's tokenizer
    batch = PackedStream(resolved.data, rank=0, world_size=1, split="train").next_batch(config.batch_size)
    assert int((batch["input_ids"] == EMBEDDING_ROWS).sum()) == 16 * len(batch["images"]) > 0
    assert int((batch["input_ids"] == 2).sum()) > 0  # documents end with the checkpoint's eos </s>
    model, _ = build_model(resolved, torch.device("cpu"))
    groups = param_groups(model, model.config, 1e-3, 0.1, 1e-8)
    trained = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in trained for p in model.vit.parameters())  # frozen: in no optimizer group
    assert all(id(p) in trained for p in model.lm.parameters())
    with torch.no_grad():
        expected = model(batch["input_ids"], normalise_images(batch["images"]), batch["labels"], batch["doc_ids"],
                         batch["position_ids"]).loss.item()
    result = train(config)
    assert result.status == "ok"
    first = next(r for r in records.read_jsonl(run_dir / "metrics.jsonl") if "loss" in r)
    assert first["loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(first["loss"] - math.log(EMBEDDING_ROWS + 3)) > 1.0  # not a random init's ln(vocab)
    recorded = records.read_json(run_dir / "config.json")
    assert recorded["init"] == {**init, "freeze_lm": False} and recorded["data"]["tokenizer"] == init["lm"]
    assert run_row(run_dir)["init"] == "lm+vit"  # the runs table's column, which a fit records as its init
    from mm1model.export import load_trained_model

    after, _ = load_trained_model(run_dir)  # step 2: two updates
    for (name, a), b in zip(after.vit.state_dict().items(), model.vit.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(after.lm.blocks[0].attention.wq.weight, model.lm.blocks[0].attention.wq.weight)


def test_bad_checkpoints_are_one_line_each(hf, corpus, tmp_path):  # noqa: F811
    tied = hf["root"] / "tied"

    def model_of(lm=None, vit=None, size="100K", model=GQA):
        return model_config(TrainConfig(size=size, model=model, init=InitConfig(lm=lm, vit=vit)))

    def one_line(match, call, *args):
        with pytest.raises(ConfigError, match=match) as err:
            call(*args)
        assert "\n" not in str(err.value)

    one_line(r"the checkpoint's hidden_size is 64, the model's lm.d_model 96 \(size 300K\)", model_of,
             str(tied), None, "300K")
    one_line(r"the checkpoint's num_key_value_heads is 2, the model's lm.n_kv_heads 4", model_of, str(tied), None,
             "100K", {})
    one_line(r"the checkpoint's hidden_size is 64, the model's vit.width 1024", model_of, None,
             str(hf["root"] / "clip"), "9M", {})
    one_line(r"is not a Hugging Face checkpoint directory \(no config.json\)", model_of, str(tmp_path))
    one_line(r"model.lm.vocab_size=4096 disagrees with init.lm's 323", model_of, str(tied), None, "100K",
             {"lm": {"n_kv_heads": 2, "vocab_size": 4096}})
    one_line(r"parametrization mup would change what it computes", model_of, str(tied), None, "w64",
             {"lm": {"n_kv_heads": 2, "ffn_dim": 168}, "parametrization": "mup", "base_size": "w32"})
    # tensors: one missing, one of another shape (a config.json that lies about the file)
    weights = load_file(tied / "model.safetensors")
    for name, change in (("missing", lambda w: w.pop("model.layers.1.self_attn.k_proj.weight")),
                         ("reshaped", lambda w: w.update({"model.layers.0.mlp.up_proj.weight": torch.zeros(160, 64)}))):
        broken = tmp_path / name
        shutil.copytree(tied, broken)
        changed = dict(weights)
        change(changed)
        save_file(changed, broken / "model.safetensors", metadata={"format": "pt"})
    mm1 = MM1(model_of(str(tied)))
    one_line(r"tensor model.layers.1.self_attn.k_proj.weight \(for lm.blocks.1.attention.wk.weight\) is missing",
             load_pretrained, mm1, tmp_path / "missing")
    one_line(r"model.layers.0.mlp.up_proj.weight has shape \(160, 64\) in the checkpoint, "
             r"lm.blocks.0.feed_forward.w3.weight is \(168, 64\) in the model", load_pretrained, mm1,
             tmp_path / "reshaped")
    # a tokenizer of another model: more tokens than the checkpoint's embedding rows
    small_vocab = tmp_path / "small_vocab"
    shutil.copytree(tied, small_vocab)
    cfg = json.loads((small_vocab / "config.json").read_text())
    (small_vocab / "config.json").write_text(json.dumps({**cfg, "vocab_size": 200}))
    one_line(r"tokenizer.json has 300 tokens, more than the checkpoint's 200 embedding rows", load_tokenizer,
             corpus, small_vocab)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(tied / "config.json", no_weights)
    one_line(r"holds no model.safetensors or model.safetensors.index.json", load_pretrained, mm1, no_weights)
    # a tokenizer whose tokens do not include the checkpoint's eos (or bos): ids of another model
    for name, ids, match in (("far_eos", {"eos_token_id": 310}, r"config.json's eos_token_id 310 is not a token of "
                              r"tokenizer.json \(300 tokens; eos_token_id 310 -> None, bos_token_id 1 -> '<s>'\)"),
                             ("far_bos", {"bos_token_id": 305}, r"config.json's bos_token_id 305 is not a token of "
                              r"tokenizer.json \(300 tokens; eos_token_id 2 -> '</s>', bos_token_id 305 -> None\)")):
        edited(tied, tmp_path / name, **ids)
        one_line(match + ": the tokenizer is not this model's$", load_tokenizer, corpus, tmp_path / name)
    # config.json: a key the shape needs, missing; RoPE scaling in any spelling; ids outside the embedding
    edited(tied, tmp_path / "no_ffn", intermediate_size=None)
    one_line(rf"^init.lm {tmp_path / 'no_ffn' / 'config.json'} has no intermediate_size", read_llama,
             tmp_path / "no_ffn")
    for scaling, kind in (({"type": "linear", "factor": 2.0}, "linear"), ({"rope_type": "llama3", "factor": 8.0},
                                                                          "llama3"), ({"factor": 2.0}, "None")):
        edited(tied, tmp_path / "scaled", rope_scaling=scaling)
        one_line(rf"our LM does not compute RoPE scaling {re.escape(json.dumps(scaling))} \(rope type {kind}\)$",
                 read_llama, tmp_path / "scaled")
    edited(tied, tmp_path / "scaled", rope_scaling={"type": "default"})
    assert read_llama(tmp_path / "scaled").rope_theta == 5e5  # default RoPE, spelt out, is plain RoPE
    edited(tied, tmp_path / "v5_scaled", rope_parameters={"rope_theta": 5e5, "rope_type": "yarn", "factor": 4.0})
    one_line(r"RoPE scaling .* \(rope type yarn\)$", read_llama, tmp_path / "v5_scaled")
    edited(tied, tmp_path / "far_pad", pad_token_id=400)
    one_line(r"config.json's pad_token_id 400 is not a row of its 320 embedding rows$", read_llama,
             tmp_path / "far_pad")
    # a name map that leaves a parameter of the tower uncovered: one line, before anything is copied
    tensors = SafetensorsCheckpoint(tied, "init.lm")
    sources = llama_sources(mm1, tensors)
    del sources["lm.norm.weight"]
    before = mm1.lm.tok_embeddings.weight.clone()
    one_line(r"the lm name map gives no source for 1 parameter\(s\) of the model, first lm.norm.weight: the "
             r"checkpoint would leave them at their random init$", load_sources, mm1, sources, tensors, LoadReport(),
             "lm")
    assert torch.equal(mm1.lm.tok_embeddings.weight, before)
    # the bundled tokenizer keeps its ids
    assert load_tokenizer(corpus).special == load_tokenizer(corpus, None).special
    assert (load_tokenizer(corpus).special.image, read_llama(tied).special.image) == (2, EMBEDDING_ROWS)


# The trainer's own sharded build (build_model on 2 gloo ranks: meta build, freeze, activation
# checkpointing, FSDP2, to_empty, init_sharded, load) for each config; per rank: the peak RSS
# growth during build_model (VmHWM reset just before it), the LoadReport, the gathered weights
# against the 1-process build, and a forward / backward on one batch.
SHARDED_BUILD = """
import json, sys
import torch
from safetensors.torch import load_file, save_file
from mm1model.config import from_dict
from mm1model.distributed import init_distributed
from mm1model.parametrization import unwrapped_name
from mm1model.shard_loading import LoadReport
from mm1model.train import build_model
from mm1model.train_config import TrainConfig

def status_bytes(field):  # /proc/self/status: VmRSS now, VmHWM the peak since the last reset
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))

ddp = init_distributed("cpu")
torch.set_num_threads(1)
results = {}
for name, config, reference, out in json.loads(sys.argv[1]):
    config = from_dict(TrainConfig, config)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = status_bytes("VmRSS")
    report = LoadReport()
    model, _ = build_model(config, torch.device("cpu"), report)
    growth = status_bytes("VmHWM") - before
    fsdp = hasattr(model.lm.tok_embeddings.weight, "full_tensor")
    full = lambda t: t.full_tensor() if fsdp else t
    expected = load_file(reference)
    params = {unwrapped_name(n): p for n, p in model.named_parameters()}
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(4))
    loss = model(ids, labels=ids).loss
    loss.backward()
    result = {"fsdp": fsdp, "rss_growth": growth, "bytes_read": report.bytes_read,
              "largest_read": report.largest_read_bytes, "checkpoint_bytes": report.checkpoint_bytes,
              "local_param_bytes": sum((p.to_local() if fsdp else p).numel() * p.element_size()
                                       for p in params.values()),
              "names": sorted(params) == sorted(expected),
              "mismatched": [n for n, p in params.items() if not torch.equal(full(p), expected.get(n, p.new_zeros(0)))],
              "tied": model.lm.output.weight is model.lm.tok_embeddings.weight,
              "loss": loss.item()}
    grads = {n: full(p.grad).contiguous() for n, p in params.items() if p.grad is not None}
    if ddp.rank == 0:
        save_file(grads, out)
    results[name] = result
    del model, params, loss, grads
json.dump(results, open(f"{sys.argv[2]}.{ddp.rank}", "w"))
"""

DEEP = {"n_layers": 24, "d_model": 256, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 688}  # 70 MB of fp32 LM


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """An untied Llama of 24 layers of width 256 (17.6M parameters, 70 MB in fp32, no tensor over
    0.7 MB), saved in shards: big enough that a rank holding half of it is told apart from one
    holding all of it above the runtime's noise."""
    from tokenizers import Tokenizer, models

    path = tmp_path_factory.mktemp("deep")
    config = transformers.LlamaConfig(vocab_size=EMBEDDING_ROWS, hidden_size=256, intermediate_size=688,
                                      num_hidden_layers=24, num_attention_heads=4, num_key_value_heads=2,
                                      rope_theta=5e5, rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=2)
    torch.manual_seed(5)
    transformers.LlamaForCausalLM(config).save_pretrained(path, max_shard_size="20MB")
    return path


def test_two_fsdp2_ranks_build_the_trainers_model_from_their_rows_only(hf, deep, tmp_path):
    """build_model itself on 2 gloo ranks with activation checkpointing (the trainer's sharded
    path, taken on CPU because init loads a checkpoint): the 100K shape's tied LM (with a frozen
    ViT), then the 70 MB untied LM. Gathered, every parameter (connector included) equals the
    1-process build_model's exactly; the tie survives the meta build; a forward / backward
    matches the 1-process one. Memory, per rank: the parameters it holds, the bytes it reads, and
    its peak RSS growth during build_model of the 70 MB LM (the first build paid the imports and
    the mesh) are each about half the model's, where 1 process grows by the whole model."""
    clip = str(hf["root"] / "clip")
    configs = {"tied": TrainConfig(size="100K", model=GQA, activation_checkpointing=True,  # first: imports, mesh
                                   init=InitConfig(lm=str(hf["root"] / "tied"), vit=clip, freeze_vit=True)),
               "deep": TrainConfig(size="100K", model={"lm": DEEP}, activation_checkpointing=True,
                                   init=InitConfig(lm=str(deep), vit=clip))}
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(4))
    expected, runs = {}, []
    for name, config in configs.items():
        model, _ = build_model(config, torch.device("cpu"))  # 1 process: the host path
        save_file({unwrapped_name(n): p.detach().contiguous() for n, p in model.named_parameters()},
                  tmp_path / f"{name}.safetensors")
        loss = model(ids, labels=ids).loss
        loss.backward()
        grads = {unwrapped_name(n): p.grad for n, p in model.named_parameters() if p.grad is not None}
        expected[name] = {"loss": loss.item(), "grads": grads,
                          "full": sum(p.numel() * p.element_size() for p in model.parameters())}
        runs.append([name, to_dict(config), str(tmp_path / f"{name}.safetensors"), str(tmp_path / f"{name}.grads")])
        del model
    proc = run_on_loopback(2, ["-c", SHARDED_BUILD, json.dumps(runs), str(tmp_path / "r")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"r.{rank}").read_text()) for rank in range(2)]
    alone = run_on_loopback(1, ["-c", SHARDED_BUILD, json.dumps([[*run[:3], str(tmp_path / f"one.{run[0]}")]
                                                                 for run in runs]), str(tmp_path / "one")])
    assert alone.returncode == 0, alone.stderr[-3000:]
    one = json.loads((tmp_path / "one.0").read_text())["deep"]
    assert not one["fsdp"]
    row_bytes = 64 * 4
    for name in configs:
        full = expected[name]["full"]
        grads = load_file(tmp_path / f"{name}.grads")
        assert set(grads) == set(expected[name]["grads"])
        for key, grad in expected[name]["grads"].items():
            torch.testing.assert_close(grads[key], grad, rtol=1e-5, atol=1e-7)
        for i, rank in enumerate(ranks):
            run = rank[name]
            assert run["fsdp"] and run["names"] and run["mismatched"] == [], run["mismatched"]
            assert run["tied"] == (name == "tied")
            assert run["loss"] == pytest.approx(expected[name]["loss"], rel=1e-6)
            assert run["local_param_bytes"] < 0.51 * full + 64 * 1024  # its half, and rows rounded up
            # its half of every tensor, plus the position embeddings (read whole to interpolate) and,
            # on the rank that holds the three new vocabulary rows, the embedding and head once more
            # (in chunks) for their mean: 2 x 320 rows of 256 floats, 0.66 MB at most
            assert run["bytes_read"] < 0.5 * run["checkpoint_bytes"] + 2 * EMBEDDING_ROWS * 256 * 4 + 64 * 1024
            if name == "tied":  # rank 0 reads at most its 162 of the 323 rows at once; rank 1 the mean's chunks
                largest = math.ceil((EMBEDDING_ROWS + 3) / 2) if i == 0 else min(MEAN_CHUNK_ROWS, EMBEDDING_ROWS)
                assert run["largest_read"] == largest * row_bytes
    deep_full = expected["deep"]["full"]
    for rank in ranks:  # half the model plus a constant (measured: see the printout)
        assert rank["deep"]["rss_growth"] < 0.5 * deep_full + 8 * 2**20
    assert one["rss_growth"] > 0.9 * deep_full and one["bytes_read"] > one["checkpoint_bytes"]  # 1 process: all
    mib = lambda b: round(b / 2**20, 1)  # noqa: E731
    print(f"deep: model {mib(deep_full)} MiB;", "; ".join(
        f"rank {i}: holds {mib(r['deep']['local_param_bytes'])}, reads {mib(r['deep']['bytes_read'])}, "
        f"RSS +{mib(r['deep']['rss_growth'])}" for i, r in enumerate(ranks)),
        f"; 1 process: reads {mib(one['bytes_read'])}, RSS +{mib(one['rss_growth'])} MiB")


def test_freezing_leaves_a_tower_out_of_the_optimizer(hf):
    model = freeze_towers(loaded(hf, "tied"), lm=True)
    groups = param_groups(model, model.config, 1e-3, 0.1, 1e-8)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted({names[id(p)].split(".")[0] for g in groups for p in g["params"]}) == ["connector", "vit"]
    assert from_dict(InitConfig, {"vit": "v", "freeze_vit": True}).origin() == {"lm": "random", "vit": "v",
                                                                               "connector": "random"}
    # a tower frozen at its random init would never train (and the sharded build would init it otherwise)
    for tower in ("lm", "vit"):
        with pytest.raises(ConfigError, match=rf"^init.freeze_{tower} needs init.{tower}: freezing a tower keeps the "
                                              rf"checkpoint's weights, and there is none") as err:
            from_dict(TrainConfig, {"init": {f"freeze_{tower}": True}})
        assert "\n" not in str(err.value)


def test_a_fit_records_its_sweeps_start_and_refuses_a_mix():
    """fit.json's init: the one value of the runs' init column (None without it); a mix is one line."""
    lrs = [1e-3, 2e-3, 4e-3, 8e-3]
    runs = pd.DataFrame({"params": [1e6] * 4 + [1e7] * 4, "lr": lrs * 2, "init": "lm",
                         "loss": [3.0 + (math.log(lr) - math.log(4e-3)) ** 2 for lr in lrs]
                         + [2.5 + (math.log(lr) - math.log(2e-3)) ** 2 for lr in lrs]})
    fit = fit_runs(runs)
    assert fit.init == "lm" and FitResult.from_json(fit.to_json()).init == "lm"
    assert fit_runs(runs.drop(columns="init")).init is None
    with pytest.raises(ConfigError, match=r"^runs mix pretrained starts \(init lm, none\): a law holds for the regime "
                                          r"it was swept in \(from scratch, or from pretrained towers\); fit each "
                                          r"separately$"):
        fit_runs(runs.assign(init=["lm"] * 7 + ["none"]))


def test_launch_records_the_weights_and_says_the_law_was_fitted_from_scratch(hf, corpus, tmp_path):  # noqa: F811
    from click.testing import CliRunner

    from scaling.cli import main

    lm, vit = str(hf["root"] / "mha"), str(hf["root"] / "clip")
    args = ["launch", "--size", "100K", "--reference", "mm1", "--executor", "local", "--corpus", corpus,
            "--steps", "10", "--batch-size", "8", "--seq-len", "128", "--out", str(tmp_path / "l")]
    result = CliRunner().invoke(main, [*args, "--init-lm", lm, "--init-vit", vit, "--freeze-vit", "--dry-run",
                                       "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["weights"] == {"lm": lm, "vit": vit, "connector": "random"} == summary["recipe"]["weights"]
    assert [n for n in summary["recipe"]["notes"] if n.startswith("weights:")] == [
        "weights: this launch starts from a pretrained lm and vit, but the peak LR comes from MM1's published law, "
        "which does not record whether its LR sweeps started pretrained (usually from scratch): applied here it is an "
        "extrapolation to another regime (sweep small pretrained checkpoints to fit a law for this start; README, "
        "'Pretrained starts')"]
    text = CliRunner().invoke(main, [*args, "--init-lm", lm, "--dry-run"]).stdout
    assert f"weights    lm {lm}, vit random, connector random" in text
    scratch = CliRunner().invoke(main, [*args, "--dry-run"]).stdout
    assert "weights    lm random, vit random, connector random" in scratch and "note       weights:" not in scratch
    # a fitted law records its sweeps' start (fit.json's init): the launch notes a mismatch, either way, and only then
    fit_args = [a if a != "--reference" else "--fit" for a in args]
    for law_init, launch_init, note in (("none", ["--init-lm", lm], "starts from a pretrained lm, but the peak LR "
                                         "comes from a `scaling fit` law, fitted on LR sweeps that started from scratch"),
                                        ("lm", ["--init-lm", lm], None),
                                        ("lm", [], "starts from scratch, but the peak LR comes from a `scaling fit` law, "
                                         "fitted on LR sweeps that started from a pretrained lm"),
                                        ("none", [], None)):
        FitResult(coefficients={"intercept": -0.5535, "ln_params": -0.4214}, init=law_init).save(tmp_path / "fit.json")
        law_args = [str(tmp_path / "fit.json") if a == "mm1" else a for a in fit_args]
        out = CliRunner().invoke(main, [*law_args, *launch_init, "--dry-run", "--json"])
        assert out.exit_code == 0, out.output
        notes = [n for n in json.loads(out.stdout)["recipe"]["notes"] if n.startswith("weights:")]
        sweep = "small pretrained checkpoints" if launch_init else "from scratch"
        assert notes == ([] if note is None else [
            f"weights: this launch {note}: applied here it is an extrapolation to another regime (sweep {sweep} to fit "
            "a law for this start; README, 'Pretrained starts')"])
    # the safetensors headers are checked against the name maps too (no tensor data read)
    weights = load_file(hf["root"] / "mha" / "model.safetensors")
    for name, change in (("missing", lambda w: w.pop("model.layers.1.mlp.down_proj.weight")),
                         ("reshaped", lambda w: w.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(32, 64)}))):
        shutil.copytree(hf["root"] / "mha", tmp_path / name)
        changed = dict(weights)
        change(changed)
        save_file(changed, tmp_path / name / "model.safetensors", metadata={"format": "pt"})
    for checkpoint, message in ((tmp_path, "no config.json"), (hf["root"] / "tied", "num_key_value_heads is 2"),
                                (tmp_path / "missing", "tensor model.layers.1.mlp.down_proj.weight (for "
                                 "lm.blocks.1.feed_forward.w2.weight) is missing from the checkpoint"),
                                (tmp_path / "reshaped", "model.layers.0.self_attn.k_proj.weight has shape (32, 64) in "
                                 "the checkpoint, lm.blocks.0.attention.wk.weight is (64, 64) in the model")):
        for dry in (["--dry-run"], []):  # refused before the plan is written, whether or not it would submit
            bad = CliRunner().invoke(main, [*args, "--init-lm", str(checkpoint), *dry])
            assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr
    assert not (tmp_path / "l").exists()


# The config.json values of the size table's public checkpoints, as published on the Hugging Face
# Hub (each repo's config.json; the LMs' all have vocab_size 32000, eos 2, untied heads).
PUBLISHED_LM = {
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": {
        "model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32,
        "num_key_value_heads": 4, "intermediate_size": 5632, "rope_theta": 10000.0, "rms_norm_eps": 1e-5},
    "mistralai/Mistral-7B-v0.1": {
        "model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 14336, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
        "sliding_window": 4096},
    "huggyllama/llama-30b": {
        "model_type": "llama", "hidden_size": 6656, "num_hidden_layers": 60, "num_attention_heads": 52,
        "intermediate_size": 17920, "rms_norm_eps": 1e-6, "pad_token_id": 0},
}
PUBLISHED_VIT = {  # vision_config of each CLIPModel
    "openai/clip-vit-large-patch14-336": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                                          "intermediate_size": 4096, "patch_size": 14, "image_size": 336,
                                          "hidden_act": "quick_gelu"},
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
                                              "intermediate_size": 5120, "patch_size": 14, "image_size": 224,
                                              "hidden_act": "gelu"},
    "openai/clip-vit-base-patch16": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                     "intermediate_size": 3072, "patch_size": 16, "image_size": 224,
                                     "hidden_act": "quick_gelu"},
}


def test_the_size_table_says_which_checkpoints_fit_exactly_and_which_need_overrides(tmp_path):
    """Each public LM of the table, at its published config.json: with the overrides its entry
    names it fits the size; `scaling launch` (no overrides) takes the exact ones and refuses the
    others in one line naming the first differing dimension. Each CLIP fits its sizes' ViT."""
    from mm1model.pretrained import check_lm_shape, check_vit_shape, read_clip
    from mm1model.sizes import PRETRAINED_LM, PRETRAINED_VIT, get_size, pretrained_starts, size_names, size_table
    from scaling.launch import check_launch_checkpoints

    assert set(PUBLISHED_LM) == {entry.repo for entry in PRETRAINED_LM.values()}
    for size, entry in PRETRAINED_LM.items():
        path = tmp_path / entry.repo.replace("/", "--")
        path.mkdir()
        (path / "config.json").write_text(json.dumps({**PUBLISHED_LM[entry.repo], "vocab_size": 32000,
                                                      "eos_token_id": 2, "tie_word_embeddings": False}))
        checkpoint = read_llama(path)
        grown = {"vocab_size": 32003}
        check_lm_shape(dataclass_replace(get_size(size).lm, **dict(entry.lm_overrides), **grown), checkpoint)
        described = pretrained_starts(size)["lm"]
        if not entry.lm_overrides:
            assert described.startswith(f"{entry.repo}, exact shape (`scaling launch` takes it)")
            check_lm_shape(dataclass_replace(get_size(size).lm, **grown), checkpoint, overridable=False)
            continue
        assert described.startswith(f"{entry.repo}, needs model.lm ") and "not `scaling launch`" in described
        field, value = entry.lm_overrides[0]
        with pytest.raises(ConfigError, match=rf"the model's lm.{field} {getattr(get_size(size).lm, field)} "
                                              rf"\(size {size}\): `scaling launch` takes the size's shape as it is") as err:
            check_launch_checkpoints(TrainConfig(size=size, init=InitConfig(lm=str(path))))
        assert f"is {value}, " in str(err.value) and "\n" not in str(err.value)
    assert pretrained_starts("1.2B")["lm"].startswith("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T, needs "
                                                      "model.lm n_layers 22, n_kv_heads 4 (N 0.969B)")
    assert pretrained_starts("30B")["lm"].startswith("huggyllama/llama-30b, needs model.lm n_layers 60 (N 32.1B)")
    assert pretrained_starts("3B")["lm"].startswith("none: Llama-3.2-3B")

    assert set(PUBLISHED_VIT) == {entry.repo for entry in PRETRAINED_VIT.values()}
    for repo, vision in PUBLISHED_VIT.items():
        path = tmp_path / repo.replace("/", "--")
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": vision}))
        save_file({"vision_model.embeddings.patch_embedding.weight": torch.zeros(1)}, path / "model.safetensors")
        checkpoint = read_clip(path)
        assert (checkpoint.prefix, checkpoint.activation) == ("vision_model.", vision["hidden_act"])
        sizes = [n for n in size_names(None) if pretrained_starts(n)["vit"].startswith(repo)]
        assert sizes
        for size in sizes:
            check_vit_shape(get_size(size).vit, checkpoint, overridable=False)
    rows = {r["name"]: r for r in size_table()}
    assert rows["9M"]["pretrained_vit"].startswith("openai/clip-vit-large-patch14-336, exact shape")
    assert rows["30B"]["pretrained_vit"].startswith("laion/CLIP-ViT-H-14-laion2B-s32B-b79K, the size's width, depth, "
                                                    "heads and patch, learned at 224 px: position embeddings "
                                                    "interpolated to 378")
    assert rows["85M"]["pretrained_lm"].startswith("none")


def test_a_sweep_starts_every_cell_from_the_checkpoints(hf, corpus):  # noqa: F811
    from scaling.sweep_plan import load_sweep_config, plan_sweep

    lm = str(hf["root"] / "mha")
    flags = dict(lrs=(1e-3, 3e-3), steps=2, shape={"batch_size": 8, "seq_len": 128}, init={"lm": lm})
    plan = plan_sweep(load_sweep_config(sizes=("100K",), **flags))
    assert [plan.cell_train(c)["init"]["lm"] for c in plan.cells()] == [lm, lm]
    with pytest.raises(ConfigError, match=r"hidden_size is 64, the model's lm.d_model 96 \(size 300K\)"):
        plan_sweep(load_sweep_config(sizes=("100K", "300K"), **flags))  # one checkpoint cannot start two sizes
