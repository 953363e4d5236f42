"""Consolidated exports of a trained run, in the formats users load elsewhere.

``export_run(RUN_DIR, OUT)`` reads the newest sharded checkpoint of a run (saved by any number of
processes: DCP reshards it into one) and writes:

* ``OUT/lm/``: the language model as a Hugging Face Llama checkpoint, ``config.json`` and
  ``model.safetensors``, loadable with ``transformers.LlamaForCausalLM.from_pretrained`` and
  giving our LM's logits (the LM is LLaMA's architecture: RMSNorm, rotate-half RoPE, SwiGLU;
  tests/test_export.py holds the two to float rounding). Image placeholder ids keep their rows;
  the image encoder and connector are not part of a Llama.
* ``OUT/mm1.safetensors`` and ``OUT/mm1_config.json``: the whole MM1 (ViT, connector, LM) under
  our parameter names, with the model config to rebuild it (``MM1(from_dict(MM1Config, ...))``,
  then ``load_state_dict``). A tied output head is stored once (safetensors refuses shared
  tensors) and named in the file's metadata.

Only the standard parametrization exports to Llama: muP's forward multipliers have no Llama
equivalent, so a mup / completep run is refused in one line. The model is built on the host, one
process, so the export needs the model's fp32 weights in host memory (120 GB at 30B), not its
optimizer state. Files are written to a temporary directory and moved in when all exist.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from safetensors.torch import save_file

from mm1model import records
from mm1model.checkpoint import SafeReader, checkpoint_paths, read_trainer_state
from mm1model.config import ConfigError, from_dict, to_dict
from mm1model.model import MM1, LMConfig, MM1Config
from mm1model.pretrained import LLAMA_BLOCK_NAMES
from mm1model.train_config import load_config, model_config


def llama_config(lm: LMConfig, max_position_embeddings: int) -> dict:
    """The ``config.json`` of a ``LlamaForCausalLM`` with the shape of ``lm``."""
    if lm.attn_scale is not None or lm.readout_mult != 1.0 or lm.residual_mult != 1.0 or lm.input_mult != 1.0:
        raise ConfigError("a Llama checkpoint has no muP / CompleteP forward multipliers: only a "
                          "standard-parametrization (sp) run exports to Llama")
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": lm.vocab_size,
            "hidden_size": lm.d_model, "intermediate_size": lm.ffn_dim, "num_hidden_layers": lm.n_layers,
            "num_attention_heads": lm.n_heads, "num_key_value_heads": lm.kv_heads, "head_dim": lm.head_dim,
            "hidden_act": "silu", "rms_norm_eps": lm.norm_eps, "rope_theta": lm.rope_theta,
            "tie_word_embeddings": lm.tie_embeddings, "max_position_embeddings": max_position_embeddings,
            "attention_bias": False, "mlp_bias": False, "initializer_range": lm.init_std,
            "torch_dtype": "float32", "use_cache": True}


def llama_state_dict(model: MM1) -> dict[str, torch.Tensor]:
    """Our LM's weights under ``LlamaForCausalLM``'s names (no copy of a tied head)."""
    out = {"model.embed_tokens.weight": model.lm.tok_embeddings.weight, "model.norm.weight": model.lm.norm.weight}
    for i, block in enumerate(model.lm.blocks):
        for ours, theirs in LLAMA_BLOCK_NAMES.items():
            out[f"model.layers.{i}.{theirs}.weight"] = block.get_submodule(ours).weight
    if not model.config.lm.tie_embeddings:
        out["lm_head.weight"] = model.lm.output.weight
    return {k: v.detach().contiguous() for k, v in out.items()}


def load_trained_model(run_dir: str | Path) -> tuple[MM1, Path]:
    """The MM1 of a run's newest checkpoint, on the host (resharded from however many processes
    wrote it), and that checkpoint's path. ConfigError when the run has none."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise ConfigError(f"{run_dir} is not a trainer run directory (no config.json)")
    paths = checkpoint_paths(run_dir)
    if not paths:
        raise ConfigError(f"{run_dir} has no checkpoint to export (checkpoints/step_*/)")
    mcfg = model_config(load_config(run_dir / "config.json"))
    with torch.device("meta"):
        model = MM1(mcfg)
    model.to_empty(device="cpu")
    if mcfg.lm.tie_embeddings:  # to_empty unties shared parameters
        model.lm.output.weight = model.lm.tok_embeddings.weight
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # DCP says it assumes one process: it does
        warnings.filterwarnings("ignore", message="torch.distributed is .*single process")
        dcp.load(state, storage_reader=SafeReader(str(paths[0])), no_dist=True)
    model.load_state_dict(state["model"])
    return model.eval(), paths[0]


@dataclass
class ExportResult:
    """What ``scaling export`` wrote: the files, the step they come from, and the checkpoint's world size."""

    out: Path
    step: int
    world_size: int
    files: list[Path]

    def summary(self) -> str:
        return (f"exported step {self.step} (a checkpoint of {self.world_size} process(es)) to {self.out}: "
                + ", ".join(str(f.relative_to(self.out)) for f in self.files))


def export_run(run_dir: str | Path, out: str | Path) -> ExportResult:
    """Write the Llama LM and the whole MM1 of a run's newest checkpoint into ``out`` (see the module)."""
    model, path = load_trained_model(run_dir)
    trainer = read_trainer_state(path)
    config = load_config(Path(run_dir) / "config.json")
    llama = llama_config(model.config.lm, config.data.seq_len)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "lm").mkdir()
        records.write_json(tmp / "lm" / "config.json", llama)
        save_file(llama_state_dict(model), str(tmp / "lm" / "model.safetensors"), metadata={"format": "pt"})
        tied = {"lm.output.weight": "lm.tok_embeddings.weight"} if model.config.lm.tie_embeddings else {}
        tensors = {name: t.contiguous() for name, t in model.state_dict().items() if name not in tied}
        save_file(tensors, str(tmp / "mm1.safetensors"),
                  metadata={"format": "pt", "tied": json.dumps(tied), "step": str(trainer["step"])})
        records.write_json(tmp / "mm1_config.json", to_dict(model.config))
        files = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
        for rel in files:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, out / rel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out=out, step=int(trainer["step"]), world_size=int(trainer["world_size"]),
                        files=[out / rel for rel in files])


def load_exported_mm1(out: str | Path) -> MM1:
    """An MM1 rebuilt from an export's ``mm1_config.json`` and ``mm1.safetensors``."""
    out = Path(out)
    config = from_dict(MM1Config, records.read_json(out / "mm1_config.json"))
    with torch.device("meta"):
        model = MM1(config)
    model.to_empty(device="cpu")
    with safe_open(str(out / "mm1.safetensors"), framework="pt") as handle:
        tied = json.loads(handle.metadata().get("tied", "{}"))
        state = {name: handle.get_tensor(name) for name in handle.keys()}
    for name, source in tied.items():
        state[name] = state[source]
    model.load_state_dict(state)
    if config.lm.tie_embeddings:
        model.lm.output.weight = model.lm.tok_embeddings.weight
    return model.eval()
