"""The MM1 architecture in PyTorch, in the order of the paper's Figure 3.

image -> ViT (CLIP-style, patch features without CLS) -> [sub-image decomposition for high
resolution] -> vision-language connector (C-Abstractor, average pooling or attention pooling)
-> image tokens spliced into the IMAGE_ID placeholders of the text -> decoder-only LM
(RMSNorm pre-norm, RoPE from position ids, SwiGLU, SDPA attention masked causally within each
packed document) -> logits, cross-entropy on text labels and an optional z-loss.

References:
- MM1: McKinzie et al. 2024, "MM1: Methods, Analysis & Insights from Multimodal LLM
  Pre-training" (../shared/MM1-paper-notes.txt).
- CLIP ViT: Radford et al. 2021 (openai/CLIP model.py: class token, ln_pre, pre-norm blocks).
- C-Abstractor: Cha et al. 2024, "Honeybee" (kakaobrain/honeybee projectors.py, built from timm's
  RegNet Bottleneck/RegStage with LayerNorm2d and SiLU).
- LM: the LLaMA recipe (Touvron et al. 2023): RMSNorm, RoPE (Su et al. 2021), SwiGLU
  (Shazeer 2020); z-loss as in PaLM (Chowdhery et al. 2022).

The image half (ViT, connectors, their configs) is :mod:`mm1model.vision`; this file holds the
LM, the MM1 that joins them, and the configs of both. It is single-device code: FSDP,
activation checkpointing and compile are applied from outside to ``model.lm.blocks`` and
``model.vit.blocks`` (see ``mm1model/parallelize.py``), and so is the parametrization
(``mm1model/parametrization.py``).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mm1model.config import ConfigError
from mm1model.loss import linear_cross_entropy, lm_loss, row_cross_entropy
from mm1model.masks import BlockMask, Mask, attend_flex, attend_spans, document_mask
from mm1model.tokens import IMAGE_ID
from mm1model.vision import CONNECTORS, ConnectorConfig, ViT, ViTConfig, decompose, positive_ints

@dataclass
class LMConfig:
    """The decoder-only language model. ``n_kv_heads`` None means multi-head attention;
    fewer heads than ``n_heads`` is grouped-query attention. ``z_loss`` is the coefficient of
    mean(logsumexp(logits)^2) added to the loss (0 disables it).

    Forward multipliers (all neutral by default, i.e. standard parametrization; muP and
    CompleteP set them, see :mod:`mm1model.parametrization`): ``attn_scale`` multiplies q.k
    (None = 1/sqrt(head_dim)); ``readout_mult`` multiplies the final normed hidden state before
    the output head; ``residual_mult`` multiplies every residual branch, x + r F(x);
    ``input_mult`` multiplies the LM's input (token embeddings and image tokens alike)."""

    d_model: int = 2048
    n_layers: int = 24
    n_heads: int = 16
    ffn_dim: int = 5632
    vocab_size: int = 32000
    n_kv_heads: int | None = None
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    z_loss: float = 0.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    attn_scale: float | None = None
    readout_mult: float = 1.0
    residual_mult: float = 1.0
    input_mult: float = 1.0

    def __post_init__(self) -> None:
        positive_ints("lm", d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
                  ffn_dim=self.ffn_dim, vocab_size=self.vocab_size)
        if self.d_model % self.n_heads:
            raise ConfigError(f"lm.n_heads {self.n_heads} must divide lm.d_model {self.d_model}")
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"lm head dim {self.d_model // self.n_heads} must be even for rotary embeddings")
        if self.n_kv_heads is not None:
            positive_ints("lm", n_kv_heads=self.n_kv_heads)
            if self.n_heads % self.n_kv_heads:
                raise ConfigError(f"lm.n_kv_heads {self.n_kv_heads} must divide lm.n_heads {self.n_heads}")
        if self.vocab_size <= IMAGE_ID:
            raise ConfigError(f"lm.vocab_size {self.vocab_size} must include the special tokens")
        if self.z_loss < 0:
            raise ConfigError(f"lm.z_loss must be >= 0, got {self.z_loss}")
        for key in ("attn_scale", "readout_mult", "residual_mult", "input_mult"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ConfigError(f"lm.{key} must be a positive number, got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads


@dataclass
class MM1Config:
    """One MM1 model: the LM, the image encoder and the connector between them.

    ``name`` is the size name (e.g. ``"85M"``, N = the LM's non-embedding parameters);
    ``source`` says where the shape comes from. ``image_id``: the token id of an image
    placeholder, the bundled tokenizer's IMAGE_ID by default; a pretrained LM's is the first row
    its vocabulary grew by (:func:`mm1model.tokens.checkpoint_special_ids`).

    ``parametrization``: ``sp`` (standard), ``mup`` (width transfer) or ``completep`` (width and
    depth transfer), relative to the size named ``base_size`` (required for mup / completep,
    ignored by sp); ``alpha`` is CompleteP's depth exponent (1 = CompleteP, 0.5 = Depth-muP).
    These three fields are data here: the model is single-parametrization code. The rule is
    applied from outside, like parallelism: :func:`mm1model.parametrization.parametrize` sets
    the LM's forward multipliers (``lm.attn_scale``, ``lm.readout_mult``, ``lm.residual_mult``,
    ``lm.input_mult``) on the config, and :func:`mm1model.parametrization.init_parametrized`
    re-draws the init of a built model. :class:`MM1` refuses a mup / completep config whose
    multipliers were never set, so a rule cannot be skipped silently."""

    name: str = "custom"
    lm: LMConfig = field(default_factory=LMConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    source: str = ""
    parametrization: str = "sp"
    base_size: str | None = None
    alpha: float = 1.0
    image_id: int = IMAGE_ID

    def __post_init__(self) -> None:
        if not 0 <= self.image_id < self.lm.vocab_size:
            raise ConfigError(f"image_id {self.image_id} must be a token id of the vocabulary (lm.vocab_size "
                              f"{self.lm.vocab_size})")
        if self.connector.kind == "attention_pool" and self.vit.width % self.connector.n_heads:
            raise ConfigError(f"connector.n_heads {self.connector.n_heads} must divide vit.width {self.vit.width}")

    @property
    def tokens_per_image(self) -> int:
        """IMAGE_ID placeholders one image takes in the text: ``image_tokens``, or 5x that
        (overview + 4 tiles) with sub-image decomposition."""
        return self.connector.image_tokens * (5 if self.vit.sub_images else 1)


# ----------------------------------------------------------------------------------------------
# Decoder-only LM
# ----------------------------------------------------------------------------------------------
def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary angles for each position id: cos and sin, each (B, 1, T, head_dim), float32."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    angles = position_ids[..., None].float() * inv_freq  # (B, T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, hd)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, hd) by the angles (rotate-half layout, as in LLaMA/HF)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.scale = cfg.attn_scale  # None: SDPA's 1/sqrt(head_dim)
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Mask) -> torch.Tensor:
        b, t, _ = x.shape  # (B, T, C)
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = self.wv(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        gqa = self.kv_heads != self.n_heads
        if mask is None:  # one document per row: the fused causal path
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=gqa)
        elif isinstance(mask, list):  # document spans (see document_mask)
            y = attend_spans(q, k, v, mask, self.scale, gqa)
        elif isinstance(mask, BlockMask):  # flex_attention: only the blocks the mask keeps are computed
            y = attend_flex(q, k, v, mask, self.scale, gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))  # (B, T, C)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm block: x + r attention(norm(x)), then x + r ffn(norm(x)), r = ``residual_mult``
    (1 except under CompleteP / Depth-muP, where it is (L / L_base)^-alpha)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.residual_mult = cfg.residual_mult
        self.attention_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Mask) -> torch.Tensor:
        if self.residual_mult == 1.0:  # the standard parametrization: no multiply, forward or backward
            x = x + self.attention(self.attention_norm(x), cos, sin, mask)
            return x + self.feed_forward(self.ffn_norm(x))  # (B, T, C)
        r = self.residual_mult
        x = x + r * self.attention(self.attention_norm(x), cos, sin, mask)
        return x + r * self.feed_forward(self.ffn_norm(x))  # (B, T, C)


class LM(nn.Module):
    """Decoder-only transformer. ``embed`` maps ids to (B, T, C); ``forward`` maps embeddings
    to logits (B, T, V) so that image tokens can be spliced in between."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # How attention keeps packed documents apart (mm1model.masks.MASK_KINDS): "auto" is
        # flex_attention on CUDA and the measured CPU choice on CPU. Whoever compiles the blocks
        # sets it (mm1model.parallelize): a compiled block would recompile for every new list of
        # per-document spans.
        self.mask_kind = "auto"

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.tok_embeddings(input_ids)  # (B, T, C)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.features(x, position_ids, doc_ids))  # (B, T, V)

    def features(self, x: torch.Tensor, position_ids: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
        """The output head's input (B, T, C): the blocks, the final norm, the readout multiplier."""
        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        mask = None if doc_ids is None else document_mask(doc_ids, self.mask_kind)
        if self.cfg.input_mult != 1.0:  # muP's input multiplier (see mm1model.parametrization)
            x = x * self.cfg.input_mult
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        x = self.norm(x)
        if self.cfg.readout_mult != 1.0:  # muP's readout: the multiplier on the head's input (MuReadout)
            x = x * self.cfg.readout_mult
        return x


# ----------------------------------------------------------------------------------------------
# MM1
# ----------------------------------------------------------------------------------------------
@dataclass
class MM1Output:
    """``logits`` (B, T, V), None when the loss was computed without them; ``loss`` = ``ce_loss``
    + ``z_loss`` (scalars, None without labels). ``ce_loss`` is the mean cross-entropy (nats) over
    labels != IGNORE_INDEX."""

    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    z_loss: torch.Tensor | None = None
    row_ce_sum: torch.Tensor | None = None  # (B,) summed cross-entropy per row (``per_row``)
    row_tokens: torch.Tensor | None = None  # (B,) labelled positions per row (``per_row``)


def check_image_placeholders(input_ids: torch.Tensor, n_images: int, tokens_per_image: int,
                             image_id: int = IMAGE_ID) -> None:
    """ValueError unless ``input_ids`` (B, T) hold ``n_images x tokens_per_image`` ``image_id``
    placeholders. Reads the ids: call it where they are on the host (a trainer, on the batch
    before it goes to the GPU); :meth:`MM1.forward` calls it for CPU ids only."""
    n_slots = int((input_ids == image_id).sum())
    if n_slots != n_images * tokens_per_image:
        raise ValueError(f"{n_slots} image placeholders for {n_images} images of {tokens_per_image} tokens each")


# How MM1.init_weights (and mm1model.parametrization.init_parametrized) reach a parameter:
# draw(param, fill) applies `fill`, an in-place nn.init function of one tensor.
Draw = Callable[[torch.Tensor, Callable[[torch.Tensor], object]], None]


def fill_in_place(param: torch.Tensor, fill: Callable[[torch.Tensor], object]) -> None:
    """The default :data:`Draw`: ``fill`` the parameter itself (a single-device model)."""
    fill(param)


class MM1(nn.Module):
    """The multimodal LM: images -> ViT -> connector -> tokens that replace the IMAGE_ID
    placeholders of ``input_ids`` in order -> LM -> logits and loss.

    ``forward(input_ids (B, T) long, images, labels, doc_ids, position_ids)``:
    ``images`` is a list of normalized (3, H, W) float tensors, one per run of
    ``config.tokens_per_image`` placeholders, in row-major (b, t) order; resolutions may differ.
    ``labels`` (B, T) are already shifted (the label at t is token t+1), IGNORE_INDEX where no
    loss is taken. ``doc_ids`` (B, T) restrict attention to the same document; ``position_ids``
    (B, T) restart at 0 per document. None means one document with positions 0..T-1. With
    ``labels`` the loss comes from the fused chunked head (:mod:`mm1model.loss`) and ``logits`` is
    None, unless ``return_logits``; without labels the logits are returned. ``per_row`` (with
    labels, for evaluation) gives each row's summed cross-entropy and labelled-token count instead
    of the mean, from the same chunked head.
    """

    def __init__(self, config: MM1Config):
        super().__init__()
        if config.parametrization != "sp" and config.lm.input_mult == 1.0:
            # mup and completep always set the input multiplier: a config that has 1 never went
            # through the rule, and would build an SP model under another name.
            raise ConfigError(f"parametrization {config.parametrization} was not applied to this config: build "
                              "it with mm1model.parametrization.parametrize(config)")
        self.config = config
        self.vit = ViT(config.vit)
        self.connector = CONNECTORS[config.connector.kind](config.connector, config.vit, config.lm.d_model)
        self.lm = LM(config.lm)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, draw: Draw = fill_in_place) -> None:
        """(Re)initialize every parameter from the current torch seed. The constructor calls it;
        call it again after building on the meta device and ``to_empty``.

        Linear, embedding and position weights N(0, init_std); the LM's residual output
        projections N(0, init_std / sqrt(2 n_layers)) (GPT-2); norms to identity; convolutions
        Kaiming normal (fan_out), as timm's RegNet. This is SP's init; under mup / completep
        :func:`mm1model.parametrization.init_parametrized` re-draws the matrices it changes.
        ``draw(param, fill)`` applies each rule (``fill``, an in-place ``nn.init`` function) to a
        parameter, always in this order: by default to the parameter itself;
        :func:`mm1model.parallelize.init_sharded` draws the full tensor and keeps a rank's shard."""
        if self.config.lm.tie_embeddings:  # `to_empty` after a meta build unties shared parameters
            self.lm.output.weight = self.lm.tok_embeddings.weight
        std = self.config.lm.init_std
        normal = functools.partial(nn.init.normal_, std=std)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                draw(module.weight, normal)
                if getattr(module, "bias", None) is not None:
                    draw(module.bias, nn.init.zeros_)
            elif isinstance(module, nn.Conv2d):
                draw(module.weight, functools.partial(nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu"))
                if module.bias is not None:
                    draw(module.bias, nn.init.zeros_)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):  # identity, as their reset_parameters
                if module.weight is not None:
                    draw(module.weight, nn.init.ones_)
                if getattr(module, "bias", None) is not None:
                    draw(module.bias, nn.init.zeros_)
        for name, param in self.named_parameters():
            if name.endswith(("pos_embed", "class_embedding", "queries")):
                draw(param, normal)
        residual = functools.partial(nn.init.normal_, std=std / math.sqrt(2 * self.config.lm.n_layers))
        for block in self.lm.blocks:
            draw(block.attention.wo.weight, residual)
            draw(block.feed_forward.w2.weight, residual)

    def image_features(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Encode images (each (3, H, W)) -> (n_images * tokens_per_image, d_model), in order.

        Images of equal resolution run through the ViT as one batch."""
        if self.config.vit.sub_images:
            crops = [c for image in images for c in decompose(image)]
        else:
            crops = list(images)
        p = self.config.vit.patch_size
        groups: dict[tuple[int, int], list[int]] = {}
        for i, crop in enumerate(crops):
            if crop.ndim != 3 or crop.shape[0] != 3 or crop.shape[1] % p or crop.shape[2] % p:
                raise ValueError(f"image {i}: expected (3, H, W) with H and W multiples of {p}, "
                                 f"got {tuple(crop.shape)}")
            groups.setdefault(tuple(crop.shape[1:]), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(crops)
        dtype = self.vit.patch_embed.weight.dtype
        for (h, w), idx in groups.items():
            features = self.vit(torch.stack([crops[i] for i in idx]).to(dtype))  # (n, P, C_vit)
            tokens = self.connector(features, (h // p, w // p))  # (n, image_tokens, d_model)
            for j, i in enumerate(idx):
                out[i] = tokens[j]
        return torch.cat(out)  # (n_crops * image_tokens, d_model)

    def forward(self, input_ids: torch.Tensor, images: list[torch.Tensor] | None = None,
                labels: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, return_logits: bool = False,
                per_row: bool = False) -> MM1Output:
        b, t = input_ids.shape
        x = self.lm.embed(input_ids)  # (B, T, C)
        placeholders = input_ids == self.config.image_id  # (B, T)
        images = [] if images is None else list(images)
        if input_ids.device.type == "cpu":  # free here; on a GPU it would be a host sync per forward
            check_image_placeholders(input_ids, len(images), self.config.tokens_per_image, self.config.image_id)
        if images:
            tokens = self.image_features(images).to(x.dtype)  # (n_images * tokens_per_image, C)
            x = x.masked_scatter(placeholders[..., None], tokens)  # row-major order = placeholder order
        else:
            # A text-only batch still runs the image path on one blank image at zero weight, so
            # every forward uses every parameter: FSDP2 ranks stay in step and DDP sees no unused
            # parameters, whatever mix of sources a micro-batch draws.
            side = self.config.vit.image_size * (2 if self.config.vit.sub_images else 1)
            blank = x.new_zeros(3, side, side)
            x = x + 0.0 * self.image_features([blank]).sum()
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device).expand(b, t)
        if labels is None:
            return MM1Output(logits=self.lm(x, position_ids, doc_ids))  # (B, T, V)
        features = self.lm.features(x, position_ids, doc_ids)  # (B, T, C)
        if return_logits:
            logits = self.lm.output(features)
            return MM1Output(logits, *lm_loss(logits, labels, self.config.lm.z_loss))
        if per_row:  # evaluation: cross-entropy sums per row (per source), still without (B, T, V) logits
            sums, counts = row_cross_entropy(features, self.lm.output.weight, labels)
            return MM1Output(None, row_ce_sum=sums, row_tokens=counts)
        # Training: the head and its loss in one chunked pass, no (B, T, V) logits (mm1model.loss).
        return MM1Output(None, *linear_cross_entropy(features, self.lm.output.weight, labels, self.config.lm.z_loss))
