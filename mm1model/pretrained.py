"""Pretrained starts: the LM and the image encoder from public checkpoints, as MM1 starts.

MM1 initialises both towers from pretrained models and then trains everything (unfrozen):
``../shared/MM1-paper-notes.txt``, "Final Model and Training Recipe". This module reads the
formats users hold:

* **the LM** from a Hugging Face Llama-format directory (``config.json`` and ``model.safetensors``
  or a sharded ``model.safetensors.index.json``; ``model_type`` llama, or mistral, whose sliding
  window is not applied: full causal attention, the same as Mistral's at sequences up to its
  window). Our LM is LLaMA's architecture (RMSNorm, rotate-half RoPE, SwiGLU, grouped-query
  heads), so the weights map by name (:data:`LLAMA_BLOCK_NAMES`, which the export uses the other
  way). The tokenizer comes with it (:mod:`mm1model.data.tokenizer`).
* **the ViT** from a Hugging Face ``CLIPVisionModel`` directory, or a ``CLIPModel`` one (its
  ``vision_model``): patch embedding, class token, position embeddings interpolated bicubically
  to the configured resolution (what CLIP's own ``interpolate_pos_encoding`` does), ``pre_layrnorm``
  into ``ln_pre``, q / k / v concatenated into our ``qkv``, the activation the checkpoint used
  (QuickGELU for OpenAI's CLIP). Our patch features then equal ``CLIPVisionModel``'s last hidden
  state without the class token.

**Vocabulary growth.** A checkpoint's ids are all taken, so the image placeholder and the image
start / end tokens are appended as new rows ``V, V+1, V+2`` after its ``V`` embedding rows
(:func:`mm1model.tokens.checkpoint_special_ids`; the end of document is its eos). The embedding
and an untied head grow by those three rows, each initialised as the mean of the checkpoint's
rows: a new token then starts as the average token, its head logit the average logit, instead of
a random vector of another scale (the placeholder's row is never read: image tokens replace it).

**Sharded loading.** :func:`load_pretrained` loads tensor by tensor with ``safe_open`` slices into
whatever each parameter holds: a whole tensor, or under FSDP2 (a model built on the meta device,
sharded, then materialised) this rank's rows of a ``Shard(0)`` DTensor, read from the file as a
slice (:mod:`mm1model.shard_loading`). No rank ever holds the whole model; its
:class:`~mm1model.shard_loading.LoadReport` counts the bytes each rank read.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mm1model.config import ConfigError
from mm1model.model import LMConfig
from mm1model.shard_loading import LoadReport, Rows, SafetensorsCheckpoint, Source, check_sources, load_sources
from mm1model.tokens import ADDED_IMAGE_TOKENS, SpecialIds, checkpoint_special_ids
from mm1model.vision import ViTConfig, interpolate_pos_embed

HF_CONFIG_FILE = "config.json"
LLAMA_MODEL_TYPES = ("llama", "mistral")
CLIP_MODEL_TYPES = ("clip_vision_model", "clip")
CLIP_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}  # HF hidden_act -> ViTConfig.activation

# Our LM block's parameter names -> transformers' LlamaDecoderLayer's (each ``.weight``).
LLAMA_BLOCK_NAMES = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
                     "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
                     "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
                     "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm",
                     "ffn_norm": "post_attention_layernorm"}
# Our ViT block's modules -> transformers' CLIPEncoderLayer's (``.weight`` and ``.bias``); ``qkv``
# is the concatenation of q_proj, k_proj, v_proj.
CLIP_BLOCK_NAMES = {"ln_1": "layer_norm1", "proj": "self_attn.out_proj", "ln_2": "layer_norm2",
                    "fc": "mlp.fc1", "out": "mlp.fc2"}


# ----------------------------------------------------------------------------------------------
# Reading a checkpoint directory
# ----------------------------------------------------------------------------------------------
def read_hf_config(path: str | Path, where: str) -> dict:
    """``config.json`` of a Hugging Face checkpoint directory; ConfigError (naming ``where``, e.g.
    ``init.lm``) when ``path`` is not one."""
    path = Path(path)
    if not (path / HF_CONFIG_FILE).is_file():
        raise ConfigError(f"{where} {path} is not a Hugging Face checkpoint directory (no {HF_CONFIG_FILE})")
    try:
        return json.loads((path / HF_CONFIG_FILE).read_text())
    except ValueError as err:
        raise ConfigError(f"{where} {path / HF_CONFIG_FILE} is not valid JSON: {err}") from None


# ----------------------------------------------------------------------------------------------
# What a checkpoint is: its LM or ViT shape, and its tokens
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PretrainedLM:
    """A Llama-format checkpoint's shape. ``embedding_rows`` is its ``vocab_size`` (rows of the
    embedding, possibly more than its tokenizer's tokens); ``eos_id`` / ``bos_id`` / ``pad_id`` its
    config's (the first of a list)."""

    path: Path
    d_model: int
    n_layers: int
    n_heads: int
    kv_heads: int
    ffn_dim: int
    embedding_rows: int
    tie_embeddings: bool
    rope_theta: float
    norm_eps: float
    eos_id: int
    bos_id: int | None
    pad_id: int | None

    @property
    def special(self) -> SpecialIds:
        """The special ids a run from this checkpoint packs and reads (image tokens appended)."""
        return checkpoint_special_ids(self.embedding_rows, self.eos_id, self.pad_id)

    def lm_fields(self) -> dict:
        """The LMConfig fields the checkpoint decides (the size keeps the shape, checked by
        :func:`check_lm_shape`): the grown vocabulary, tied head, rope theta, norm epsilon."""
        return {"vocab_size": self.embedding_rows + len(ADDED_IMAGE_TOKENS), "tie_embeddings": self.tie_embeddings,
                "rope_theta": self.rope_theta, "norm_eps": self.norm_eps}


def required(cfg: dict, key: str, where: str, path: str | Path):
    """``cfg[key]`` of a checkpoint's config.json; ConfigError (one line naming the key and the
    file) when it is missing."""
    if key not in cfg or cfg[key] is None:
        raise ConfigError(f"{where} {Path(path) / HF_CONFIG_FILE} has no {key} (a Llama-format config.json names it)")
    return cfg[key]


def rope_kind(cfg: dict) -> str | None:
    """The RoPE variant a Llama-format config.json asks for: ``default`` (plain RoPE, what our LM
    computes), another ``rope_type`` (``linear``, ``dynamic``, ``yarn``, ``llama3``, ...), or
    None when it names none. Read from ``rope_parameters`` (transformers >= 5) and
    ``rope_scaling`` (older), each under ``rope_type`` or the older ``type`` key; a non-null
    ``rope_scaling`` that names no type is a scaling of unknown kind (None)."""
    scaling = cfg.get("rope_scaling")
    if scaling:
        return scaling.get("rope_type") or scaling.get("type")
    parameters = cfg.get("rope_parameters") or {}
    return parameters.get("rope_type") or parameters.get("type") or "default"


def _first_id(value) -> int | None:
    if isinstance(value, list):  # Llama 3 lists several eos ids: the first is end of text
        return value[0] if value else None
    return value


def read_llama(path: str | Path, where: str = "init.lm") -> PretrainedLM:
    """The shape of the Llama-format checkpoint in ``path``; ConfigError (one line) for a
    directory that is not one, a config.json missing a key the shape needs, special ids outside
    the embedding, or a Llama variant our LM does not compute (biases, any RoPE scaling:
    :func:`rope_kind`, another activation or head dim)."""
    cfg = read_hf_config(path, where)
    if cfg.get("model_type") not in LLAMA_MODEL_TYPES:
        raise ConfigError(f"{where} {path}: model_type {cfg.get('model_type')!r} is not a Llama-format LM "
                          f"({', '.join(LLAMA_MODEL_TYPES)})")
    d_model, heads = (required(cfg, key, where, path) for key in ("hidden_size", "num_attention_heads"))
    head_dim = cfg.get("head_dim") or d_model // heads
    rope = cfg.get("rope_parameters") or {}  # transformers >= 5 nests rope_theta here
    kind = rope_kind(cfg)
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    unsupported = [f"hidden_act {cfg.get('hidden_act', 'silu')}" * (cfg.get("hidden_act", "silu") != "silu"),
                   "attention_bias" * bool(cfg.get("attention_bias")), "mlp_bias" * bool(cfg.get("mlp_bias")),
                   f"RoPE scaling {json.dumps(scaling)} (rope type {kind})" * (kind != "default"),
                   f"head_dim {head_dim} != hidden_size / heads" * (head_dim * heads != d_model)]
    unsupported = [u for u in unsupported if u]
    if unsupported:
        raise ConfigError(f"{where} {path}: our LM does not compute {', '.join(unsupported)}")
    rows = required(cfg, "vocab_size", where, path)
    eos = _first_id(cfg.get("eos_token_id"))
    if eos is None:
        raise ConfigError(f"{where} {path}: config.json names no eos_token_id (the end of document)")
    bos, pad = _first_id(cfg.get("bos_token_id")), _first_id(cfg.get("pad_token_id"))
    outside = [f"{name} {value}" for name, value in (("eos_token_id", eos), ("bos_token_id", bos),
                                                      ("pad_token_id", pad))
               if value is not None and not 0 <= value < rows]
    if outside:
        raise ConfigError(f"{where} {path}: config.json's {', '.join(outside)} is not a row of its {rows} "
                          "embedding rows")
    return PretrainedLM(path=Path(path), d_model=d_model, n_layers=required(cfg, "num_hidden_layers", where, path),
                        n_heads=heads, kv_heads=cfg.get("num_key_value_heads") or heads,
                        ffn_dim=required(cfg, "intermediate_size", where, path), embedding_rows=rows,
                        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                        rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
                        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), eos_id=eos, bos_id=bos, pad_id=pad)


def check_lm_shape(lm: LMConfig, pretrained: PretrainedLM, where: str = "init.lm", size: str = "",
                   overridable: bool = True) -> None:
    """ConfigError (one line, naming the field and both values) unless ``lm`` has the checkpoint's
    shape: width, depth, heads, KV heads, ffn and the grown vocabulary. ``overridable``: the line
    suggests a ``model.lm`` override (False where none can be given: `scaling launch`)."""
    pairs = (("d_model", lm.d_model, "hidden_size", pretrained.d_model),
             ("n_layers", lm.n_layers, "num_hidden_layers", pretrained.n_layers),
             ("n_heads", lm.n_heads, "num_attention_heads", pretrained.n_heads),
             ("n_kv_heads", lm.kv_heads, "num_key_value_heads", pretrained.kv_heads),
             ("ffn_dim", lm.ffn_dim, "intermediate_size", pretrained.ffn_dim),
             ("vocab_size", lm.vocab_size, "vocab_size + 3 image tokens",
              pretrained.embedding_rows + len(ADDED_IMAGE_TOKENS)))
    _refuse_mismatch("lm", pairs, pretrained.path, where, size, overridable)


@dataclass(frozen=True)
class PretrainedViT:
    """A CLIP vision checkpoint's shape; ``prefix`` is its tensors' (``vision_model.`` in a
    ``CLIPModel``), ``image_size`` the resolution its position embeddings were learned at."""

    path: Path
    prefix: str
    width: int
    n_layers: int
    n_heads: int
    mlp_dim: int
    patch_size: int
    image_size: int
    activation: str
    norm_eps: float

    def vit_fields(self) -> dict:
        """The ViTConfig fields the checkpoint decides (the size keeps the shape and resolution)."""
        return {"activation": self.activation, "norm_eps": self.norm_eps}


def read_clip(path: str | Path, where: str = "init.vit") -> PretrainedViT:
    """The shape of the CLIP vision checkpoint in ``path`` (a ``CLIPVisionModel`` or a whole
    ``CLIPModel``); ConfigError (one line) for anything else."""
    cfg = read_hf_config(path, where)
    if cfg.get("model_type") not in CLIP_MODEL_TYPES:
        raise ConfigError(f"{where} {path}: model_type {cfg.get('model_type')!r} is not a CLIP vision model "
                          f"({', '.join(CLIP_MODEL_TYPES)})")
    vision = cfg.get("vision_config", {}) if cfg["model_type"] == "clip" else cfg
    act = vision.get("hidden_act", "quick_gelu")
    if act not in CLIP_ACTIVATIONS:
        raise ConfigError(f"{where} {path}: hidden_act {act!r} is not one our ViT computes "
                          f"({', '.join(CLIP_ACTIVATIONS)})")
    if vision.get("num_channels", 3) != 3:
        raise ConfigError(f"{where} {path}: num_channels {vision['num_channels']}, our ViT reads RGB (3)")
    tensors = SafetensorsCheckpoint(path, where)
    prefix = "vision_model." if "vision_model.embeddings.patch_embedding.weight" in tensors.files else ""
    return PretrainedViT(path=Path(path), prefix=prefix, width=vision.get("hidden_size", 768),
                         n_layers=vision.get("num_hidden_layers", 12), n_heads=vision.get("num_attention_heads", 12),
                         mlp_dim=vision.get("intermediate_size", 3072), patch_size=vision.get("patch_size", 32),
                         image_size=vision.get("image_size", 224), activation=CLIP_ACTIVATIONS[act],
                         norm_eps=float(vision.get("layer_norm_eps", 1e-5)))


def check_vit_shape(vit: ViTConfig, pretrained: PretrainedViT, where: str = "init.vit", size: str = "",
                    overridable: bool = True) -> None:
    """ConfigError (one line) unless ``vit`` has the checkpoint's width, depth, heads, MLP and
    patch size (the resolution may differ: position embeddings are interpolated)."""
    pairs = (("width", vit.width, "hidden_size", pretrained.width),
             ("n_layers", vit.n_layers, "num_hidden_layers", pretrained.n_layers),
             ("n_heads", vit.n_heads, "num_attention_heads", pretrained.n_heads),
             ("mlp_dim", vit.mlp_dim, "intermediate_size", pretrained.mlp_dim),
             ("patch_size", vit.patch_size, "patch_size", pretrained.patch_size))
    _refuse_mismatch("vit", pairs, pretrained.path, where, size, overridable)


def _refuse_mismatch(tower: str, pairs: tuple, path: Path, where: str, size: str, overridable: bool) -> None:
    """The first (ours, value, theirs, checkpoint) pair whose values differ, as one ConfigError line."""
    for ours, value, theirs, checkpoint in pairs:
        if value != checkpoint:
            fix = (f"use the size of the checkpoint's shape or override model.{tower}.{ours}" if overridable else
                   f"`scaling launch` takes the size's shape as it is: launch the size of the checkpoint's shape, or "
                   f"train from a config that overrides model.{tower}.{ours} (python -m mm1model.train)")
            raise ConfigError(f"{where} {path}: the checkpoint's {theirs} is {checkpoint}, the model's "
                              f"{tower}.{ours} {value}{f' (size {size})' if size else ''}: {fix}")


# ----------------------------------------------------------------------------------------------
# Name maps: each of our parameters <- rows from checkpoint tensors (or computed rows)
# ----------------------------------------------------------------------------------------------
def llama_sources(model: nn.Module, tensors: SafetensorsCheckpoint) -> dict[str, Source]:
    """Our LM's parameter names (``lm.*``) -> their sources in a Llama checkpoint; rows the
    vocabulary grows by are the mean of the checkpoint's rows."""
    lm_cfg = model.config.lm
    out: dict[str, Source] = {}

    def grown(name: str, key: str) -> Source:
        tensors.require(key, name)
        extra = lm_cfg.vocab_size - tensors.shape(key)[0]
        blocks = [Rows(key)]
        if extra > 0:
            blocks.append(Rows(mean_of=key, count=extra))
        return Source(blocks)

    out["lm.tok_embeddings.weight"] = grown("lm.tok_embeddings.weight", "model.embed_tokens.weight")
    if not lm_cfg.tie_embeddings:  # a tied checkpoint's head is its embedding
        head = "lm_head.weight" if "lm_head.weight" in tensors.files else "model.embed_tokens.weight"
        out["lm.output.weight"] = grown("lm.output.weight", head)
    out["lm.norm.weight"] = Source([Rows("model.norm.weight")])
    for i in range(lm_cfg.n_layers):
        for ours, theirs in LLAMA_BLOCK_NAMES.items():
            out[f"lm.blocks.{i}.{ours}.weight"] = Source([Rows(f"model.layers.{i}.{theirs}.weight")])
    return out


def clip_sources(model: nn.Module, tensors: SafetensorsCheckpoint, prefix: str) -> dict[str, Source]:
    """Our ViT's parameter names (``vit.*``) -> their sources in a CLIP vision checkpoint (only
    headers are read here: the position embeddings are read and interpolated at load)."""
    vit_cfg = model.config.vit
    p = prefix
    pos_key = f"{p}embeddings.position_embedding.weight"
    tensors.require(pos_key, "vit.pos_embed")
    positions, width = tensors.shape(pos_key)  # (1 + g*g, C): the class slot, then the checkpoint's grid
    resize = positions - 1 != vit_cfg.grid ** 2 and math.isqrt(positions - 1) ** 2 == positions - 1

    def pos_embed() -> torch.Tensor:  # small: read whole to interpolate, on the rank that holds it
        pos = tensors.read(pos_key).float()[None]  # (1, 1 + g*g, C)
        if resize:
            pos = torch.cat([pos[:, :1], interpolate_pos_embed(pos[:, 1:], (vit_cfg.grid, vit_cfg.grid))], dim=1)
        return pos

    pos_shape = (1, 1 + vit_cfg.grid ** 2 if resize else positions, width)
    out = {"vit.patch_embed.weight": Source([Rows(f"{p}embeddings.patch_embedding.weight")]),
           "vit.class_embedding": Source([Rows(f"{p}embeddings.class_embedding")]),
           "vit.pos_embed": Source([Rows(computed=pos_embed, computed_shape=pos_shape)]),
           "vit.ln_pre.weight": Source([Rows(f"{p}pre_layrnorm.weight")]),
           "vit.ln_pre.bias": Source([Rows(f"{p}pre_layrnorm.bias")])}
    for i in range(vit_cfg.n_layers):
        layer = f"{p}encoder.layers.{i}"
        for kind in ("weight", "bias"):
            out[f"vit.blocks.{i}.qkv.{kind}"] = Source([Rows(f"{layer}.self_attn.{x}_proj.{kind}") for x in "qkv"])
            for ours, theirs in CLIP_BLOCK_NAMES.items():
                out[f"vit.blocks.{i}.{ours}.{kind}"] = Source([Rows(f"{layer}.{theirs}.{kind}")])
    return out


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def pretrained_sources(model: nn.Module, lm: str | Path | None = None,
                       vit: str | Path | None = None) -> list[tuple[str, SafetensorsCheckpoint, dict[str, Source]]]:
    """``(tower, tensors, name map)`` for each checkpoint given, after checking its config.json's
    shape against ``model``'s (:func:`check_lm_shape`, :func:`check_vit_shape`). Reads headers only."""
    towers = []
    if lm is not None:
        check_lm_shape(model.config.lm, read_llama(lm))
        tensors = SafetensorsCheckpoint(lm, "init.lm")
        towers.append(("lm", tensors, llama_sources(model, tensors)))
    if vit is not None:
        pretrained = read_clip(vit)
        check_vit_shape(model.config.vit, pretrained)
        tensors = SafetensorsCheckpoint(vit, "init.vit")
        towers.append(("vit", tensors, clip_sources(model, tensors, pretrained.prefix)))
    return towers


def check_pretrained(model: nn.Module, lm: str | Path | None = None, vit: str | Path | None = None) -> None:
    """What :func:`load_pretrained` checks, from the checkpoints' config.json and safetensors
    headers only (no tensor data read; ``model`` may be on the meta device): each tower's
    parameters all covered by its name map, every tensor present, every shape equal. A ConfigError
    (one line) names the first problem. ``scaling launch`` runs it before writing anything."""
    for tower, tensors, sources in pretrained_sources(model, lm, vit):
        check_sources(model, sources, tensors, tower)


def load_pretrained(model: nn.Module, lm: str | Path | None = None, vit: str | Path | None = None,
                    report: LoadReport | None = None) -> LoadReport:
    """Load a Llama-format LM (``lm``) and / or a CLIP vision model (``vit``) into ``model`` (an
    MM1, possibly sharded by :mod:`mm1model.parallelize` and materialised), in place.

    The model's config must already have the checkpoints' shapes and the grown vocabulary
    (:func:`check_lm_shape`, :func:`check_vit_shape`; the trainer builds it so from
    ``TrainConfig.init``). Every tower is checked before any of its parameters is overwritten
    (:func:`check_pretrained`'s checks): a parameter the name map does not cover, a missing
    tensor, or a tensor of another shape is a ConfigError naming it. The connector keeps its
    init. Returns this rank's :class:`LoadReport` (``report``, filled, if one is given)."""
    report = report if report is not None else LoadReport()
    for tower, tensors, sources in pretrained_sources(model, lm, vit):
        load_sources(model, sources, tensors, report, tower)
    return report
