"""Parallelism applied to a finished MM1: activation checkpointing, torch.compile, FSDP2.

``mm1model.model`` is single-device code; everything that makes it run on many devices lives
here, in torchtitan's order: activation checkpointing wraps each transformer block, compile
compiles each block, then FSDP2 (``torch.distributed.fsdp.fully_shard``) shards each LM block
and each ViT block (one all-gather per block in forward and backward, freed after use) and
finally the root, which holds the embeddings, the connector, the norms and the output head.
A model built on the meta device and sharded is then initialised by :func:`init_sharded`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from mm1model.parametrization import init_parametrized


def transformer_blocks(model: nn.Module) -> list[tuple[nn.ModuleList, int]]:
    """(container, index) of every LM and ViT block, so a wrapper can replace it in place."""
    return [(blocks, i) for blocks in (model.lm.blocks, model.vit.blocks) for i in range(len(blocks))]


def parallelize(model: nn.Module, *, device_type: str = "cpu", activation_checkpointing: bool = False,
                compile: bool = False, compile_backend: str | None = None, bf16_params: bool | None = None,
                fsdp: bool | None = None) -> nn.Module:
    """Apply AC, compile and FSDP2 to ``model`` (an MM1) in place, and return it.

    ``fsdp`` None (the trainer's default): FSDP2 when a process group of more than one rank is
    initialised; True: also over a group of one (the benchmark measures the sharded code path on
    one GPU). The mesh is 1-D over all ranks (pure data parallelism with sharded parameters,
    gradients and optimizer state). ``bf16_params`` (default: on for CUDA) makes FSDP2
    all-gather bf16 parameters and reduce gradients in fp32; the sharded master weights stay
    fp32. ``compile_backend``: torch.compile's backend (default inductor).
    """
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for blocks, i in transformer_blocks(model):
            blocks[i] = checkpoint_wrapper(blocks[i])
    if compile:
        # Tensor masks only: a compiled block would recompile for every new list of per-document
        # spans. On CUDA flex_attention's BlockMask (traced into the block's graph), else dense.
        model.lm.mask_kind = "flex" if device_type == "cuda" else "dense"
        for blocks, i in transformer_blocks(model):
            # in place: parameter names (and checkpoints) stay unchanged
            blocks[i].compile(**({"backend": compile_backend} if compile_backend else {}))
    grouped = dist.is_available() and dist.is_initialized()
    if fsdp is None:
        fsdp = grouped and dist.get_world_size() > 1
    if fsdp:
        if not grouped:
            raise RuntimeError("FSDP2 needs an initialised process group (torch.distributed.init_process_group)")
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
        if bf16_params is None:
            bf16_params = device_type == "cuda"
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if bf16_params else MixedPrecisionPolicy())
        for blocks, i in transformer_blocks(model):
            fully_shard(blocks[i], mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def draw_full(param: torch.Tensor, fill: Callable[[torch.Tensor], object]) -> None:
    """The :data:`mm1model.model.Draw` of a sharded or GPU model: ``fill`` a full float tensor
    of the parameter's global shape on the CPU (the generator and order of a 1-rank CPU init,
    so every rank draws the same numbers), then copy in what this rank holds: its shard of a
    DTensor (``distribute_tensor(..., src_data_rank=None)`` cuts it locally, no communication),
    or all of a plain tensor. One parameter at a time: no rank ever holds the whole model."""
    full = torch.empty(param.shape, dtype=param.dtype, device="cpu")
    fill(full)
    if isinstance(param, DTensor):
        shard = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
        param.to_local().copy_(shard.to_local())
    else:
        param.copy_(full)


@torch.no_grad()
def replay_constructor_draws(model: nn.Module) -> None:
    """Advance the CPU generator exactly as building ``model`` on the host did: each Linear,
    Conv2d and Embedding's ``reset_parameters`` (the only draws of MM1's constructor before its
    ``init_weights``) runs, in module order, on a full CPU tensor of its parameters' shapes,
    one module at a time, then the module gets its own parameters back. A model built on the
    meta device drew nothing, so this is what it needs before :meth:`MM1.init_weights` to land
    on the host build's weights."""
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
            continue
        own = dict(module._parameters)
        module._parameters.update({name: nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=False)
                                   for name, p in own.items() if p is not None})
        try:
            module.reset_parameters()
        finally:
            module._parameters.update(own)


@torch.no_grad()
def init_sharded(model: nn.Module, seed: int, as_constructed: bool = False) -> nn.Module:
    """Initialise ``model`` (an MM1, possibly wrapped and sharded by :func:`parallelize`, its
    parameters materialised, e.g. by ``to_empty``) to exactly the weights of
    ``torch.manual_seed(seed); model.init_weights(); init_parametrized(model)`` on one CPU
    process, whatever the world size and device: SP's init, then the parametrization's, each
    parameter drawn whole by :func:`draw_full`. ``as_constructed``: first replay the
    constructor's draws (:func:`replay_constructor_draws`), so the weights are those of the
    trainer's host build, ``torch.manual_seed(seed); MM1(config); init_parametrized(model)``
    (:func:`mm1model.train.build_model` uses it: a run's weights do not depend on its world
    size). Leaves the CPU generator as that init does. Returns the model.

    Tied embeddings: a meta build keeps the tie, ``to_empty`` breaks it and ``init_weights``
    ties the head to the embedding's materialised (sharded) parameter again; FSDP2 sets its
    gathered parameter on both modules (tested on 2 gloo ranks in tests/test_pretrained.py).

    Cost: every rank draws every parameter on the CPU generator, which is sequential (about
    120M normals/s on this project's CPU): ~10 s at 1.2B, ~4 min at 30B, once per run (a resume
    loads a checkpoint instead); ``as_constructed`` adds the constructor's uniform draws of the
    matrices (of the order of the normals' time again)."""
    torch.manual_seed(seed)
    if as_constructed:
        replay_constructor_draws(model)
    model.init_weights(draw=draw_full)
    return init_parametrized(model, draw=draw_full)
