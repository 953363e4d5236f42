"""The size table: every MM1 model this toolkit knows, small to large, in one place.

A size's name is its N, the language model's non-embedding parameter count (attention, MLP
and norm weights; not the token embedding or output head), and lands within 5% of it
(``tests/test_sizes.py`` checks every entry). Code never parses a count out of a name: use
:func:`mm1model.counting.param_counts`.

The MM1 paper gives the LR-sweep sizes (9M, 85M, 302M, 1.2B) and the final sizes (3B, 7B, 30B)
but not their shapes, so each entry borrows the shape of a public model of that size and says
which. The paper's vocabulary is not stated either: the paper sizes use 32000, the LLaMA /
Mistral SentencePiece vocabulary (a documented default; on the bundled corpus only the first
``CORPUS_VOCAB_SIZE`` rows are ever used). The CPU sizes use the bundled corpus's vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

from mm1model import paper
from mm1model.config import ConfigError, replace
from mm1model.counting import param_counts
from mm1model.model import LMConfig, MM1Config
from mm1model.vision import ConnectorConfig, ViTConfig
from mm1model.tokens import CORPUS_VOCAB_SIZE

PAPER_VOCAB_SIZE = 32000  # LLaMA / Mistral tokenizer; MM1 does not publish its vocabulary

# Image encoders (MM1 Sec. 3: ViT-L/14 at 336 px for the ablations, ViT-H/14 at 378 px for
# the final models; widths, depths and heads from CLIP / OpenCLIP).
VIT_L14_336 = ViTConfig(image_size=paper.ABLATION_IMAGE_SIZE, patch_size=14, width=1024, n_layers=24, n_heads=16, mlp_dim=4096)
VIT_H14_378 = ViTConfig(image_size=paper.IMAGE_SIZE, patch_size=14, width=1280, n_layers=32, n_heads=16, mlp_dim=5120)
# A tiny ViT for the CPU sizes: 32 px images in 8 px patches give a 4 x 4 grid, and two layers
# of width 64 keep an image's cost far below its 16 tokens' share of the LM.
VIT_TINY = ViTConfig(image_size=32, patch_size=8, width=64, n_layers=2, n_heads=4, mlp_dim=256)
# CLIP ViT-B/16 at 224 px: the GPU transfer families' encoder, so that a 10M LM is not dwarfed
# by a ViT-L (their comparison is about the LM's width and depth, not the encoder).
VIT_B16_224 = ViTConfig(image_size=224, patch_size=16, width=768, n_layers=12, n_heads=12, mlp_dim=3072)

# MM1's connector: C-Abstractor with 144 image tokens; hidden width 1024 and 3 blocks per
# stage are Honeybee's defaults.
C_ABSTRACTOR_144 = ConnectorConfig(kind="c_abstractor", image_tokens=paper.IMAGE_TOKENS, hidden=1024, depth=3)
# CPU sizes: 16 tokens (4 x 4) so a 128-256 token sequence holds several images; one block per
# stage keeps the step fast on one thread.
C_ABSTRACTOR_16 = ConnectorConfig(kind="c_abstractor", image_tokens=16, hidden=64, depth=1)


def _cpu(name: str, d_model: int, n_layers: int, n_heads: int, ffn_dim: int, source: str) -> MM1Config:
    lm = LMConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads, ffn_dim=ffn_dim,
                  vocab_size=CORPUS_VOCAB_SIZE, tie_embeddings=True)
    return MM1Config(name=name, lm=lm, vit=VIT_TINY, connector=C_ABSTRACTOR_16, source=source)


def _family(name: str, d_model: int, n_layers: int) -> MM1Config:
    lm = LMConfig(d_model=d_model, n_layers=n_layers, n_heads=4, ffn_dim=3 * d_model,
                  vocab_size=CORPUS_VOCAB_SIZE, tie_embeddings=False)
    return MM1Config(name=name, lm=lm, vit=VIT_TINY, connector=C_ABSTRACTOR_16, source=_FAMILY_SOURCE)


def _gpu_family(name: str, d_model: int, n_layers: int) -> MM1Config:
    lm = LMConfig(d_model=d_model, n_layers=n_layers, n_heads=d_model // 64, ffn_dim=3 * d_model,
                  vocab_size=PAPER_VOCAB_SIZE, tie_embeddings=False)
    return MM1Config(name=name, lm=lm, vit=VIT_B16_224, connector=C_ABSTRACTOR_144, source=_GPU_FAMILY_SOURCE)


def _paper(name: str, vit: ViTConfig, source: str, **lm: float) -> MM1Config:
    # MM1 adds its z-loss at 30B only (mm1model.paper.Z_LOSS_SIZES)
    z_loss = paper.Z_LOSS if name in paper.Z_LOSS_SIZES else 0.0
    return MM1Config(name=name, lm=LMConfig(vocab_size=PAPER_VOCAB_SIZE, tie_embeddings=False, z_loss=z_loss, **lm),
                     vit=vit, connector=C_ABSTRACTOR_144, source=source)


_CPU_FFN = ("nanoGPT-style small width and depth; SwiGLU ffn near 8/3-4 x d_model, chosen as a "
            "multiple of 8 that lands N on the name; tied embeddings as in GPT-2")

_FAMILY_SOURCE = ("transfer family (muP / CompleteP comparison): 4 heads, SwiGLU ffn 3 x d_model so every "
                  "hidden fan-in grows by the same factor; untied head so muP can zero-initialise it")

_GPU_FAMILY_SOURCE = ("GPU transfer family (sweeps/transfer-gpu.toml): heads of 64 (the head count grows, so "
                      "muP's attention scale stays SP's 1/8), SwiGLU ffn 3 x d_model, untied head, the paper's "
                      "vocabulary and connector, a ViT-B/16 encoder")

SIZES: dict[str, MM1Config] = {
    # CPU sizes (train on one 2-core machine in seconds to minutes; N spans 31x).
    # N = 97,600: d 64, 2 layers, 4 heads of 16, ffn 168.
    "100K": _cpu("100K", 64, 2, 4, 168, _CPU_FFN),
    # N = 304,800: d 96, 3 layers, 4 heads of 24, ffn 224.
    "300K": _cpu("300K", 96, 3, 4, 224, _CPU_FFN),
    # N = 1,004,928: d 128, 5 layers, 4 heads of 32, ffn 352.
    "1M": _cpu("1M", 128, 5, 4, 352, _CPU_FFN),
    # N = 3,099,072: d 192, 6 layers, 6 heads of 32, ffn 640.
    "3M": _cpu("3M", 192, 6, 6, 640, _CPU_FFN),
    # MM1's LR-sweep sizes (Sec. 5.1: grid search at 9M, 85M, 302M, 1.2B), ViT-L/14 @ 336.
    # N = 9,050,368: d 256, 12 layers (GPT-style depth at width 256), 4 heads of 64, ffn 2.5 x d.
    "9M": _paper("9M", VIT_L14_336, "MM1 sweep size; width 256 x 12 layers, ffn 640 to land N at 9M",
                 d_model=256, n_layers=12, n_heads=4, ffn_dim=640),
    # N = 84,953,856: GPT-2 small / BERT-base trunk (d 768, 12 layers, 12 heads), SwiGLU ffn 2048.
    "85M": _paper("85M", VIT_L14_336, "MM1 sweep size; GPT-2-small trunk 768 x 12, SwiGLU ffn 2048",
                  d_model=768, n_layers=12, n_heads=12, ffn_dim=2048),
    # N = 308,331,520: GPT-2 medium trunk (d 1024, 24 layers, 16 heads), SwiGLU ffn 2816 (TinyLlama's 2.75 x d).
    "302M": _paper("302M", VIT_L14_336, "MM1 sweep size; GPT-2-medium trunk 1024 x 24, SwiGLU ffn 2816",
                   d_model=1024, n_layers=24, n_heads=16, ffn_dim=2816),
    # N = 1,233,225,728: TinyLlama-1.1B (d 2048, 32 heads, ffn 5632) with 24 layers instead of
    # 22 and full multi-head attention instead of 4 KV heads.
    "1.2B": _paper("1.2B", VIT_L14_336, "MM1 sweep size / ablation LM; TinyLlama-1.1B shape, 24 layers, MHA",
                   d_model=2048, n_layers=24, n_heads=32, ffn_dim=5632),
    # MM1's final sizes (configs only), ViT-H/14 @ 378.
    # N = 2,944,564,224: Llama-3.2-3B width (d 3072, 24 heads, ffn 8192) with 26 layers and MHA.
    "3B": _paper("3B", VIT_H14_378, "MM1-3B; Llama-3.2-3B width/ffn, 26 layers, MHA",
                 d_model=3072, n_layers=26, n_heads=24, ffn_dim=8192),
    # N = 6,979,588,096: Mistral-7B exactly (d 4096, 32 layers, 32 heads, 8 KV heads, ffn 14336).
    "7B": _paper("7B", VIT_H14_378, "MM1-7B; Mistral-7B shape (GQA 8 KV heads)",
                 d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336),
    # N = 29,962,762,752: LLaMA-30B width (d 6656, 52 heads, ffn 17920) with 56 layers instead of 60.
    # The paper adds a z-loss for MM1-30B (see _paper).
    "30B": _paper("30B", VIT_H14_378, "MM1-30B; LLaMA-30B width/ffn, 56 layers; z-loss 1e-4", d_model=6656,
                  n_layers=56, n_heads=52, ffn_dim=17920),
    # Transfer families for the parametrization comparison (`scaling compare`): CPU sizes that
    # change ONE dimension. Named by what changes, not by N (N is still reported by
    # `scaling sizes`): wD = d_model D at 2 layers, dL = L layers at d_model 64. Widths 32..256 at
    # depth 2 and depths 2..8 at width 64 are the note's 17-minute CPU experiment; d16 extends
    # the depth range for the coordinate check.
    # N = 26,784 / 106,816 / 426,624 / 1,705,216 (2 layers of 4 d^2 + 3 x 3 d^2 + 2 d, plus d).
    "w32": _family("w32", 32, 2),
    "w64": _family("w64", 64, 2),
    "w128": _family("w128", 128, 2),
    "w256": _family("w256", 256, 2),
    # N = 106,816 / 213,568 / 427,072 / 854,080 (L layers of 13 x 64^2 + 128, plus 64).
    "d2": _family("d2", 64, 2),
    "d4": _family("d4", 64, 4),
    "d8": _family("d8", 64, 8),
    "d16": _family("d16", 64, 16),
    # The same comparison at GPU-cluster scale: gwD = d_model D at 12 layers, gdL = L layers at
    # d_model 1024 (gw1024 = gd12). N = 10.2M / 40.9M / 163.6M / 654.3M and 81.8M / 163.6M /
    # 327.2M / 654.3M (13 d^2 per layer).
    "gw256": _gpu_family("gw256", 256, 12),
    "gw512": _gpu_family("gw512", 512, 12),
    "gw1024": _gpu_family("gw1024", 1024, 12),
    "gw2048": _gpu_family("gw2048", 2048, 12),
    "gd6": _gpu_family("gd6", 1024, 6),
    "gd12": _gpu_family("gd12", 1024, 12),
    "gd24": _gpu_family("gd24", 1024, 24),
    "gd48": _gpu_family("gd48", 1024, 48),
}

# Which public checkpoint each size can start from (``TrainConfig.init``, mm1model.pretrained).
# The size keeps its shape and a checkpoint must match it, so each entry says whether the
# checkpoint has the size's shape exactly (then `scaling launch --init-lm / --init-vit` takes it)
# or which ``model.lm`` overrides reach its shape (then only a train config or a sweep's
# ``[train.model]`` can start from it: `scaling launch` takes a size's shape as it is and refuses
# the checkpoint in one line naming the first differing dimension). Repo ids and shapes from each
# checkpoint's published config.json; only safetensors weights load.
@dataclass(frozen=True)
class PublicCheckpoint:
    """A public Hugging Face checkpoint a size's tower can start from: ``repo`` (its Hub id),
    ``lm_overrides`` the ``model.lm`` fields (name, value) a train config must set to reach its
    shape (empty: the size's own shape), ``image_size`` the resolution a ViT checkpoint was
    learned at when it is not the size's (its position embeddings are interpolated at load; no
    override needed), ``note`` what else a user should know."""

    repo: str
    note: str = ""
    lm_overrides: tuple[tuple[str, int], ...] = ()
    image_size: int | None = None

    def describe(self, size: str) -> str:
        """One line for ``scaling sizes``: the repo, exact or the overrides it needs (and the N
        the size has with them), and the note."""
        if self.image_size is not None:
            fit = (f"the size's width, depth, heads and patch, learned at {self.image_size} px: position embeddings "
                   f"interpolated to {get_size(size).vit.image_size} at load (`scaling launch` takes it)")
        elif not self.lm_overrides:
            fit = "exact shape (`scaling launch` takes it)"
        else:
            lm = replace(get_size(size).lm, **dict(self.lm_overrides))
            n = param_counts(replace(get_size(size), lm=lm)).params
            fit = (f"needs model.lm {', '.join(f'{k} {v}' for k, v in self.lm_overrides)} (N {n / 1e9:.3g}B): a train "
                   "config or a sweep's [train.model], not `scaling launch`")
        return f"{self.repo}, {fit}" + (f"; {self.note}" if self.note else "")


NO_PUBLIC_LM = "none in Llama format at this shape: starts from scratch"
PRETRAINED_LM = {
    # hidden 2048, 22 layers, 32 heads, 4 KV heads, ffn 5632, vocab 32000, untied (TinyLlama's config.json)
    "1.2B": PublicCheckpoint("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
                             lm_overrides=(("n_layers", 22), ("n_kv_heads", 4))),
    # hidden 4096, 32 layers, 32 heads, 8 KV heads, ffn 14336, vocab 32000, untied
    "7B": PublicCheckpoint("mistralai/Mistral-7B-v0.1", "its 4096-token sliding window covers MM1's sequence"),
    # hidden 6656, 60 layers, 52 heads, ffn 17920, vocab 32000, untied
    "30B": PublicCheckpoint("huggyllama/llama-30b", "LLaMA-30B's 60 layers", lm_overrides=(("n_layers", 60),)),
}
# Sizes with no Llama-format checkpoint of their shape, and why not the obvious one.
LM_WITHOUT_CHECKPOINT = {
    "3B": "Llama-3.2-3B (d 3072, ffn 8192) uses llama3 RoPE scaling, which the LM does not compute",
}
PRETRAINED_VIT = {  # (width, n_layers, patch_size, image_size) -> a CLIP checkpoint of that shape
    (1024, 24, 14, 336): PublicCheckpoint("openai/clip-vit-large-patch14-336", "QuickGELU"),
    (1280, 32, 14, 378): PublicCheckpoint(
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "GELU; apple/DFN5B-CLIP-ViT-H-14-378 (MM1's own encoder) holds no "
        "safetensors on the Hub: not read as it is", image_size=224),
    (768, 12, 16, 224): PublicCheckpoint("openai/clip-vit-base-patch16", "QuickGELU"),
}
NO_PUBLIC_VIT = "none at this shape: starts from scratch"


def pretrained_starts(name: str) -> dict[str, str]:
    """``{"lm": ..., "vit": ...}``: the public checkpoint each tower of size ``name`` can start
    from, exact or with the overrides it needs (:class:`PublicCheckpoint`), or that there is none."""
    vit = get_size(name).vit
    lm = PRETRAINED_LM.get(name)
    vit_start = PRETRAINED_VIT.get((vit.width, vit.n_layers, vit.patch_size, vit.image_size))
    if lm is not None:
        lm_text = lm.describe(name)
    elif name in LM_WITHOUT_CHECKPOINT:
        lm_text = f"none: {LM_WITHOUT_CHECKPOINT[name]}; starts from scratch"
    else:
        lm_text = NO_PUBLIC_LM
    return {"lm": lm_text, "vit": vit_start.describe(name) if vit_start else NO_PUBLIC_VIT}


FAMILIES = ("mm1", "width", "depth")
_FAMILY_OF = {**{name: "mm1" for name in SIZES},
              **{name: "width" for name in ("w32", "w64", "w128", "w256", "gw256", "gw512", "gw1024", "gw2048")},
              **{name: "depth" for name in ("d2", "d4", "d8", "d16", "gd6", "gd12", "gd24", "gd48")}}


# The sizes that train on a CPU in seconds to minutes (the demo's and the CPU transfer families).
CPU_SIZES = ("100K", "300K", "1M", "3M", "w32", "w64", "w128", "w256", "d2", "d4", "d8", "d16")
# Their default trainer shape, global batch in sequences x tokens per sequence: the demo's
# (sweeps/cpu.toml), which keeps a cell near 0.5 GB. Every other size trains at MM1's 512 x 4096.
CPU_SHAPE = (8, 128)


def default_shape(name: str) -> tuple[int, int]:
    """(batch_size, seq_len) a size trains at unless told otherwise: the demo's on the CPU sizes,
    MM1's (512 sequences of 4096 tokens) on the others."""
    get_size(name)
    return CPU_SHAPE if name in CPU_SIZES else (paper.BATCH_SIZE, paper.SEQ_LEN)


def family_of(name: str) -> str:
    """``mm1`` (the named sizes, N in the name), ``width`` (wD, gwD) or ``depth`` (dL, gdL)."""
    get_size(name)
    return _FAMILY_OF[name]


def size_names(family: str | None = "mm1") -> list[str]:
    """The size names of one family (default ``mm1``, the named sizes), small to large;
    ``family=None`` lists every size in the table."""
    if family is not None and family not in FAMILIES:
        raise ConfigError(f"unknown size family '{family}'; valid families: {', '.join(FAMILIES)}")
    return [name for name in SIZES if family is None or _FAMILY_OF[name] == family]


def get_size(name: str) -> MM1Config:
    """The config of size ``name`` (any family); an unknown name raises ConfigError listing the
    named sizes, then the transfer families' sizes."""
    if name not in SIZES:
        families = [n for n in SIZES if _FAMILY_OF[n] != "mm1"]
        raise ConfigError(f"unknown size '{name}'; valid sizes: {', '.join(size_names())} "
                          f"(families: {', '.join(families)})")
    return SIZES[name]


def size_table(names: list[str] | None = None) -> list[dict]:
    """One JSON-ready row per size (the ``mm1`` family by default, in table order): its family and the parameter counts
    of :func:`mm1model.counting.param_counts` and the shape. ``image_tokens`` is the LM
    positions one image takes (``MM1Config.tokens_per_image``); ``pretrained_lm`` / ``pretrained_vit``
    the public checkpoints it can start from (:func:`pretrained_starts`)."""
    rows = []
    for name in names or size_names():
        cfg = get_size(name)
        row = {"name": name, "family": _FAMILY_OF[name], **vars(param_counts(cfg))}
        row.update(d_model=cfg.lm.d_model, n_layers=cfg.lm.n_layers, n_heads=cfg.lm.n_heads,
                   n_kv_heads=cfg.lm.kv_heads, ffn_dim=cfg.lm.ffn_dim, vocab_size=cfg.lm.vocab_size,
                   tie_embeddings=cfg.lm.tie_embeddings, image_tokens=cfg.tokens_per_image,
                   image_size=cfg.vit.image_size, patch_size=cfg.vit.patch_size, vit_width=cfg.vit.width,
                   vit_layers=cfg.vit.n_layers, connector=cfg.connector.kind, source=cfg.source)
        starts = pretrained_starts(name)
        row.update(pretrained_lm=starts["lm"], pretrained_vit=starts["vit"])
        rows.append(row)
    return rows
