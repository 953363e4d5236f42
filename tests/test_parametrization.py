"""Parametrizations (sp, mup, completep): forward multipliers, init, AdamW groups, bad input,
checkpoint round trips and 2-process FSDP2.

Models are the transfer-family CPU sizes (w32 ... w256, d2 ... d8) on synthetic token batches;
the coordinate check on real corpus batches is in test_coord_check.py.
"""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mm1model.config import ConfigError, from_dict, replace, to_dict
from mm1model.model import MM1, MM1Config
from mm1model.parametrization import init_parametrized, param_groups, param_rules, parametrize, set_group_lrs
from mm1model.sizes import FAMILIES, family_of, get_size, size_names, size_table
from scaling.cli import main
from test_train import run_on_loopback

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent


def config(size: str, parametrization: str = "sp", base: str | None = None, **extra) -> MM1Config:
    return parametrize(replace(get_size(size), parametrization=parametrization, base_size=base, **extra))


def build(cfg: MM1Config) -> MM1:
    """An MM1 initialised as the trainer initialises it: SP's init, then the parametrization's."""
    return init_parametrized(MM1(cfg))


def batch(vocab: int = 4096, b: int = 4, t: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, t + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


# ------------------------------------------------------------------------------------ config
def test_forward_multipliers_pinned():
    mup = config("w128", "mup", "w32")
    # m = 4: readout 1/4; head_dim 8 -> 32 at 4 heads: sqrt(8) / 32; no depth scaling.
    assert (mup.lm.readout_mult, mup.lm.attn_scale, mup.lm.residual_mult) == (0.25, math.sqrt(8) / 32, 1.0)
    cp = config("d8", "completep", "d2")
    assert (cp.lm.readout_mult, cp.lm.attn_scale, cp.lm.residual_mult) == (1.0, 0.25, 0.25)
    depth_mup = config("d8", "completep", "d2", alpha=0.5)
    assert depth_mup.lm.residual_mult == 0.5
    # The base is SP's neutral point but for the input multiplier (10 at every size).
    same = config("w32", "mup", "w32")
    multipliers = (same.lm.readout_mult, same.lm.attn_scale, same.lm.residual_mult, same.lm.input_mult)
    assert multipliers == pytest.approx((1.0, 1 / math.sqrt(8), 1.0, 10.0))
    assert (mup.lm.input_mult, cp.lm.input_mult, get_size("w32").lm.input_mult) == (10.0, 10.0, 1.0)
    assert get_size("w128").lm.readout_mult == 1.0  # the size table's shared LMConfig is untouched


def test_config_json_round_trip_keeps_the_rule():
    cfg = config("w256", "completep", "w32", alpha=0.5)
    back = from_dict(MM1Config, json.loads(json.dumps(to_dict(cfg))))
    assert back == cfg and back.lm.readout_mult == 0.125


@pytest.mark.parametrize("make, message", [
    (lambda: config("w32", "mup", "w128"),
     r"^base size w128 \(d_model 128, 2 layers\) is larger than the target w32 \(d_model 32, 2 layers\)$"),
    (lambda: config("d2", "completep", "d8"), r"^base size d8 .* is larger than the target d2"),
    (lambda: config("w128", "mup", None), r"^parametrization mup needs base_size"),
    (lambda: config("w128", "mup", "100K"), r"^base size 100K differs from w128 in more than width and depth"),
    (lambda: config("w128", "mup", "w33"), r"^unknown size 'w33'"),
    (lambda: config("w128", "ntk", "w32"), r"^unknown parametrization 'ntk'; valid: sp, mup, completep$"),
    (lambda: config("d8", "completep", "d2", alpha=2.0), r"^alpha must be in \[0, 1\]"),
    (lambda: parametrize(replace(config("w128", "mup", "w32"), lm={"readout_mult": 0.5})),
     r"^lm.readout_mult=0.5 conflicts with parametrization mup \(which sets 0.25\); leave it unset$"),
])
def test_bad_parametrization_is_one_clear_line(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


# ------------------------------------------------------------------------------------ init
def test_mup_init_zero_query_and_readout_and_hidden_std():
    torch.manual_seed(0)
    model = build(config("w256", "mup", "w32"))
    lm = model.lm
    assert all(b.attention.wq.weight.abs().max() == 0 for b in lm.blocks)
    assert lm.output.weight.abs().max() == 0
    # hidden: 0.02 / sqrt(8); residual out projections also / sqrt(2 L) = / 2
    assert lm.blocks[0].feed_forward.w1.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.02)
    assert lm.blocks[1].attention.wo.weight.std().item() == pytest.approx(0.01 / math.sqrt(8), rel=0.02)
    assert lm.tok_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.02)  # input layer: constant
    # the connector's d x d layer is hidden, its projection into the LM an input layer
    assert model.connector.readout[2].weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.02)
    assert model.connector.readout[0].weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_completep_residual_init_uses_the_base_depth():
    torch.manual_seed(0)
    model = build(config("d8", "completep", "d2"))
    # sigma / sqrt(2 L_base) = 0.02 / 2 at every depth; SP would give 0.02 / 4 at 8 layers
    w2 = torch.cat([b.feed_forward.w2.weight.flatten() for b in model.lm.blocks])
    assert w2.std().item() == pytest.approx(0.01, rel=0.02)


def test_sp_is_untouched_golden_loss():
    """sp draws exactly what the model always drew (test_model pins the same number at 100K)."""
    torch.manual_seed(0)
    a = build(get_size("w64"))
    torch.manual_seed(0)
    b = build(config("w64", "sp", "w32"))  # base_size is ignored by sp
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ------------------------------------------------------------------------------------ groups
def _trainer_split(model):
    """The trainer's own decay split before parametrizations existed (mm1model/train.py's
    ``param_groups``, now replaced by this module's), kept here as the reference."""
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding)
                     for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.ndim < 2 or id(param) in embedding_ids or "embed" in name.split(".")[-1]:
            no_decay.append(param)
        else:
            decay.append(param)
    return decay, no_decay


def test_sp_groups_are_the_trainers_split():
    model = build(get_size("100K"))
    ours = param_groups(model, None, lr=1e-3, weight_decay=0.1, eps=1e-8)
    decay, no_decay = _trainer_split(model)
    assert [g["name"] for g in ours] == ["decay", "no_decay"]
    assert [id(p) for p in ours[0]["params"]] == [id(p) for p in decay]
    assert [id(p) for p in ours[1]["params"]] == [id(p) for p in no_decay]
    assert (len(decay), len(no_decay)) == (35, 45)
    assert [(g["weight_decay"], g["lr_mult"], g["lr"], g["eps"]) for g in ours] == [(0.1, 1.0, 1e-3, 1e-8),
                                                                                 (0.0, 1.0, 1e-3, 1e-8)]
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in ours[1]["params"]}
    assert {"lm.tok_embeddings.weight", "vit.pos_embed", "connector.pos_embed", "lm.norm.weight",
            "vit.blocks.0.qkv.bias"} <= no_decay_names
    assert "vit.patch_embed.weight" not in no_decay_names


def test_mup_groups_pinned():
    model = build(config("w128", "mup", "w32"))
    groups = {g["name"]: g for g in param_groups(model, None, lr=1e-2, weight_decay=0.1, eps=1e-8)}
    hidden = groups["hidden/decay/lr_x0.25/eps_x0.25"]
    # 7 matrices per block x 2 blocks + the connector's d x d layer
    assert len(hidden["params"]) == 15
    assert (hidden["lr"], hidden["weight_decay"], hidden["eps"]) == (2.5e-3, 0.4, 2.5e-9)
    assert hidden["lr"] * hidden["weight_decay"] == pytest.approx(1e-2 * 0.1)  # lr x wd as SP
    assert {g["lr_mult"] for n, g in groups.items() if n != hidden["name"]} == {1.0}
    rules = param_rules(model)
    assert rules["lm.output.weight"].kind == "readout" and rules["lm.tok_embeddings.weight"].kind == "input"
    assert rules["lm.blocks.1.ffn_norm.weight"].kind == "vector"
    assert rules["vit.blocks.0.qkv.weight"].kind == "fixed"
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_completep_groups_pinned():
    model = build(config("d8", "completep", "d2", alpha=0.5))
    groups = param_groups(model, None, lr=1e-2, weight_decay=0.1, eps=1e-8)
    by_name = {g["name"]: g for g in groups}
    # m = 1, m_L = 4, alpha 1/2: block matrices LR x 4^-1/2, eps x 4^-1/2; norms in blocks alike
    hidden = by_name["hidden/decay/lr_x0.5/eps_x0.5"]
    assert len(hidden["params"]) == 8 * 7 + 1 - 1  # 56 block matrices; the connector's is outside
    assert hidden["lr"] == 5e-3 and hidden["eps"] == 5e-9 and hidden["weight_decay"] == 0.1
    assert len(by_name["vector/no_decay/lr_x0.5/eps_x0.5"]["params"]) == 16
    assert len({g["name"] for g in groups}) == len(groups)


def _train_steps(model, optimizer, steps: range, peak: float) -> list[float]:
    losses = []
    ids, labels = batch()
    for step in steps:
        set_group_lrs(optimizer, peak * (step + 1) / 4)  # a warmup: the schedule is relative
        optimizer.zero_grad()
        loss = model(ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _optimizer(model, peak=1e-2):
    return torch.optim.AdamW(param_groups(model, None, peak, 0.1, 1e-8), lr=peak, betas=(0.9, 0.95))


def test_schedule_keeps_group_factors_and_checkpoint_round_trip(tmp_path):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    cfg = config("w64", "mup", "w32")
    torch.manual_seed(0)
    model = build(cfg)
    opt = _optimizer(model)
    straight = _train_steps(model, opt, range(4), 1e-2)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["hidden/decay/lr_x0.5/eps_x0.5"] == pytest.approx(1e-2 * 0.5) and lrs["decay"] == pytest.approx(1e-2)

    torch.manual_seed(0)
    first = build(cfg)
    opt = _optimizer(first)
    resumed = _train_steps(first, opt, range(2), 1e-2)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd, optim_sd = get_state_dict(first, opt, options=options)
    torch.save({"model": model_sd, "optimizer": optim_sd}, tmp_path / "ckpt.pt")

    torch.manual_seed(1)  # different weights: everything must come from the checkpoint
    second = build(from_dict(MM1Config, to_dict(cfg)))
    opt2 = _optimizer(second)
    for group in opt2.param_groups:  # a wrong factor is overwritten by the saved one
        group["lr_mult"] = 7.0
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    set_state_dict(second, opt2, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    assert sorted(g["lr_mult"] for g in opt2.param_groups) == [0.5, 1.0, 1.0]
    resumed += _train_steps(second, opt2, range(2, 4), 1e-2)
    assert resumed == straight
    # golden: synthetic batch, seed 0, 4 steps of mup w64 over base w32 (this test's own output)
    assert straight == pytest.approx([8.31776, 8.24740, 8.05954, 7.70750], abs=1e-4)


_FSDP_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
    from mm1model.config import replace
    from mm1model.distributed import init_distributed
    from mm1model.model import MM1
    from mm1model.parallelize import parallelize
    from mm1model.parametrization import init_parametrized, param_groups, parametrize, set_group_lrs
    from mm1model.sizes import get_size

    torch.set_num_threads(1)
    init_distributed("cpu")  # on a store bound to 127.0.0.1
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = parametrize(replace(get_size("w64"), parametrization="mup", base_size="w32"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 4096, (4, 33), generator=g)
    ids, labels = ids[rank::world, :-1], ids[rank::world, 1:]

    def build(seed):
        torch.manual_seed(seed)
        model = parallelize(init_parametrized(MM1(cfg)))
        opt = torch.optim.AdamW(param_groups(model, None, 1e-2, 0.1, 1e-8), lr=1e-2, betas=(0.9, 0.95))
        return model, opt

    def steps(model, opt, span, losses):
        for step in span:
            set_group_lrs(opt, 1e-2 * (step + 1) / 4)
            opt.zero_grad()
            loss = model(ids, labels=labels).loss
            loss.backward()
            opt.step()
            total = loss.detach().clone()
            dist.all_reduce(total)
            losses.append(total.item() / world)

    losses = []
    model, opt = build(0)
    steps(model, opt, range(2), losses)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd, osd = get_state_dict(model, opt, options=options)  # full on rank 0, empty elsewhere
    if rank == 0:
        torch.save({"model": msd, "optimizer": osd}, sys.argv[1])
    dist.barrier()
    model, opt = build(1)
    ckpt = torch.load(sys.argv[1], weights_only=True)
    set_state_dict(model, opt, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    steps(model, opt, range(2, 4), losses)
    if rank == 0:
        mults = sorted(g["lr_mult"] for g in opt.param_groups)
        print("RESULT " + json.dumps({"losses": losses, "lr_mult": mults}), flush=True)
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()
''')


def test_two_process_fsdp2_keeps_group_lrs_and_follows_one_process(tmp_path):
    """mup w64 over w32: 2 steps, full-state save, rebuild (another seed), load, 2 more steps on
    2 gloo processes with FSDP2, against one process on the whole batch. Same tolerance as the
    trainer's FSDP2 test (1e-4 absolute, floating-point order only)."""
    torch.manual_seed(0)
    model = build(config("w64", "mup", "w32"))
    one = _train_steps(model, _optimizer(model), range(4), 1e-2)
    script = tmp_path / "fsdp_mup.py"
    script.write_text(_FSDP_SCRIPT)
    proc = run_on_loopback(2, [str(script), str(tmp_path / "ckpt.pt")], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    two = json.loads(line[len("RESULT "):])
    assert two["lr_mult"] == [0.5, 1.0, 1.0]
    assert two["losses"] == pytest.approx(one, abs=1e-4, rel=0)


# ------------------------------------------------------------------------------------ sizes
def test_families():
    assert FAMILIES == ("mm1", "width", "depth")
    assert size_names("width") == ["w32", "w64", "w128", "w256", "gw256", "gw512", "gw1024", "gw2048"]
    assert size_names("depth") == ["d2", "d4", "d8", "d16", "gd6", "gd12", "gd24", "gd48"]
    assert size_names(None)[:4] == ["100K", "300K", "1M", "3M"] and len(size_names(None)) == 27
    for name in size_names("width"):
        cfg = get_size(name)
        heads = 4 if name.startswith("w") else cfg.lm.d_model // 64
        depth = 2 if name.startswith("w") else 12
        assert (cfg.lm.n_layers, cfg.lm.n_heads, cfg.lm.ffn_dim) == (depth, heads, 3 * cfg.lm.d_model)
    assert [get_size(n).lm.n_layers for n in size_names("depth")] == [2, 4, 8, 16, 6, 12, 24, 48]
    assert [get_size(n).lm.d_model for n in size_names("depth")] == [64] * 4 + [1024] * 4
    # a GPU family's base is valid for its larger members: same vocabulary, encoder, connector
    assert config("gw2048", "mup", "gw256").lm.readout_mult == 1 / 8
    assert family_of("w32") == "width" and family_of("d8") == "depth" and family_of("1M") == "mm1"
    rows = size_table(["w32", "d8", "100K"])
    assert [(r["family"], r["params"]) for r in rows] == [("width", 26_784), ("depth", 427_072), ("mm1", 97_600)]
    with pytest.raises(ConfigError, match="^unknown size family 'big'; valid families: mm1, width, depth$"):
        size_names("big")


def test_sizes_cli_json_has_family():
    result = CliRunner().invoke(main, ["sizes", "--json", "--size", "w256", "--size", "d4"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["name"], r["family"], r["params"]) for r in rows] == [("w256", "width", 1_705_216),
                                                                      ("d4", "depth", 213_568)]
    assert all(r["family"] == "mm1" for r in json.loads(CliRunner().invoke(main, ["sizes", "--json"]).output))
