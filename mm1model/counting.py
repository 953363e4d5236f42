"""Analytic parameter and FLOP counts of an MM1 config, without building the model.

Parameter counts equal ``sum(p.numel())`` of the built :class:`mm1model.model.MM1` exactly (a test
checks every size). FLOPs count multiply-adds as 2 FLOPs and only matrix products
(linear layers, convolutions, attention scores and values): norms, activations, softmax,
RoPE, pooling and interpolation are left out, as in Kaplan et al. (2020) and PaLM's MFU.
"""
from __future__ import annotations

from dataclasses import dataclass

from mm1model.model import LMConfig, MM1Config
from mm1model.vision import ConnectorConfig, ViTConfig


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of one MM1 config.

    ``params`` is N, the LM's non-embedding parameters (every block plus the final norm; the
    convention of Kaplan et al. and Step Law, and the default N of the LR law).
    ``params_lm_embedding`` is the token embedding plus the output head (counted once when
    tied); ``params_lm_total`` = the two together. ``params_vision`` is the ViT,
    ``params_connector`` the vision-language connector, ``params_total`` everything.
    """

    params: int
    params_lm_embedding: int
    params_lm_total: int
    params_vision: int
    params_connector: int
    params_total: int


def _lm_layer(lm: LMConfig) -> int:
    q = lm.n_heads * lm.head_dim
    kv = lm.kv_heads * lm.head_dim
    attention = lm.d_model * q + 2 * lm.d_model * kv + q * lm.d_model
    return 2 * lm.d_model + attention + 3 * lm.d_model * lm.ffn_dim  # two RMSNorms, attention, SwiGLU


def _vit_block(vit: ViTConfig) -> int:
    c, m = vit.width, vit.mlp_dim
    return 4 * c + (3 * c * c + 3 * c) + (c * c + c) + (c * m + m) + (m * c + c)  # two LNs, qkv, proj, MLP


def _vit(vit: ViTConfig) -> int:
    c = vit.width
    embed = 3 * vit.patch_size**2 * c + c + (1 + vit.grid**2) * c + 2 * c  # patch conv, class, positions, ln_pre
    return embed + vit.n_layers * _vit_block(vit)


def _bottleneck(c_in: int, c_out: int) -> int:
    se = int(round(c_in * 0.25))
    params = c_in * c_out + 9 * c_out + c_out * c_out + 3 * 2 * c_out  # conv1, depthwise conv2, conv3, 3 LN2d
    params += (c_out * se + se) + (se * c_out + c_out)  # squeeze-excite
    if c_in != c_out:
        params += c_in * c_out + 2 * c_out  # 1x1 projection shortcut + LN2d
    return params


def _abstractor_stages(con: ConnectorConfig, vit: ViTConfig) -> list[tuple[int, int, bool]]:
    """(c_in, c_out, after_pool) per bottleneck of the C-Abstractor."""
    h = con.hidden
    s1 = [(vit.width if i == 0 else h, h, False) for i in range(con.depth)]
    return s1 + [(h, h, True) for _ in range(con.depth)]


def _connector(con: ConnectorConfig, vit: ViTConfig, d_lm: int) -> int:
    c = vit.width
    if con.kind == "c_abstractor":
        c_out = con.hidden if con.depth else c
        blocks = sum(_bottleneck(c_in, c_o) for c_in, c_o, _ in _abstractor_stages(con, vit))
        return vit.grid**2 * c + blocks + (c_out * d_lm + d_lm) + (d_lm * d_lm + d_lm)
    if con.kind == "avg_pool":
        return c * d_lm + d_lm
    return con.image_tokens * c + 2 * c + 4 * (c * c + c) + (c * d_lm + d_lm)  # attention_pool


def param_counts(cfg: MM1Config) -> ParamCounts:
    """Per-component parameter counts of ``cfg`` (see :class:`ParamCounts`)."""
    lm = cfg.lm
    n = lm.n_layers * _lm_layer(lm) + lm.d_model
    embedding = lm.vocab_size * lm.d_model * (1 if lm.tie_embeddings else 2)
    vision = _vit(cfg.vit)
    connector = _connector(cfg.connector, cfg.vit, lm.d_model)
    return ParamCounts(params=n, params_lm_embedding=embedding, params_lm_total=n + embedding,
                       params_vision=vision, params_connector=connector,
                       params_total=n + embedding + vision + connector)


def flops_per_token(cfg: MM1Config, seq_len: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) per LM position at sequence length
    ``seq_len``: 2 x the LM's matrix parameters (blocks and output head; the embedding lookup
    is free) plus attention 2 x 2 x seq_len x d per layer (scores and weighted values).

    Attention is counted over the full T x T, not halved for causality or shrunk for packed
    documents: the convention of PaLM's MFU and of ``torch.utils.flop_counter``, which counts
    SDPA the same way. Image placeholder positions cost the same as text positions; the image
    encoder is :func:`image_flops`.
    """
    lm = cfg.lm
    matrices = lm.n_layers * (_lm_layer(lm) - 2 * lm.d_model) + lm.vocab_size * lm.d_model
    attention = lm.n_layers * 2 * 2 * seq_len * lm.n_heads * lm.head_dim
    return 3.0 * (2 * matrices + attention)


def image_flops(cfg: MM1Config) -> float:
    """Training FLOPs (forward + backward) of the ViT and connector for one image at the ViT's
    native resolution (5 crops at that resolution with sub-image decomposition, i.e. an input
    of twice the side). The patch embedding takes 2 x forward, not 3 x: pixels need no gradient.
    """
    vit, con, d = cfg.vit, cfg.connector, cfg.lm.d_model
    c, m, p = vit.width, vit.mlp_dim, vit.grid**2
    n = p + 1  # patches and the class token
    patch = 2 * p * 3 * vit.patch_size**2 * c
    blocks = vit.n_layers * (2 * n * (4 * c * c + 2 * c * m) + 2 * 2 * n * n * c)
    k = con.image_tokens
    if con.kind == "c_abstractor":
        connector = 0
        for c_in, c_out, after_pool in _abstractor_stages(con, vit):
            locations = k if after_pool else p
            per_location = c_in * c_out + 9 * c_out + c_out * c_out + (c_in * c_out if c_in != c_out else 0)
            se = int(round(c_in * 0.25))
            connector += 2 * locations * per_location + 2 * 2 * c_out * se
        c_out = con.hidden if con.depth else c
        connector += 2 * k * (c_out * d + d * d)
    elif con.kind == "avg_pool":
        connector = 2 * k * c * d
    else:  # attention_pool: q and o on k queries, k and v on p patches, scores and values
        connector = 2 * k * 2 * c * c + 2 * p * 2 * c * c + 2 * 2 * k * p * c + 2 * k * c * d
    crops = 5 if vit.sub_images else 1
    return float(crops * (2 * patch + 3 * (blocks + connector)))


def step_flops(cfg: MM1Config, batch_size: int, seq_len: int, images_per_sequence: float) -> float:
    """Training FLOPs of one optimizer step: ``batch_size`` sequences of ``seq_len`` LM positions
    (:func:`flops_per_token`) with ``images_per_sequence`` images each (:func:`image_flops`).
    Activation checkpointing's recompute is not in it (the planner multiplies it in)."""
    return batch_size * seq_len * flops_per_token(cfg, seq_len) + batch_size * images_per_sequence * image_flops(cfg)
