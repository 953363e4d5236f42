"""The image side of MM1: the image -> ViT -> connector half of the paper's Figure 3.

A CLIP-style ViT (patch features without CLS, sub-image decomposition for high resolution) and
the vision-language connectors (C-Abstractor, average pooling, attention pooling) that turn
(B, P, C_vit) patch features on an (h, w) grid into (B, image_tokens, d_lm) LM tokens; with their
configs. :mod:`mm1model.model` splices those tokens into the LM.

References: CLIP ViT, Radford et al. 2021 (openai/CLIP model.py: class token, ln_pre, pre-norm
blocks); C-Abstractor, Cha et al. 2024, "Honeybee" (kakaobrain/honeybee projectors.py, built
from timm's RegNet Bottleneck/RegStage with LayerNorm2d and SiLU); MM1's average and attention
pooling connectors (McKinzie et al. 2024, Sec. 3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mm1model.config import ConfigError

CONNECTOR_KINDS = ("c_abstractor", "avg_pool", "attention_pool")
# The ViT MLP's activation: exact GELU, or CLIP's QuickGELU x sigmoid(1.702 x), which OpenAI's
# CLIP checkpoints (ViT-L/14 included) were trained with; OpenCLIP's LAION models use GELU.
VIT_ACTIVATIONS = ("gelu", "quick_gelu")


def positive_ints(where: str, **values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{where}.{key} must be a positive integer, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------
@dataclass
class ViTConfig:
    """A CLIP-style ViT. ``image_size`` (pixels) is the resolution its position embeddings were
    learned at; other resolutions interpolate them bicubically. With ``sub_images`` an image of
    side S is encoded as one downscaled overview plus 4 tiles, each of side S/2. ``activation``:
    the MLP's, one of :data:`VIT_ACTIVATIONS` (a pretrained start takes its checkpoint's)."""

    image_size: int = 336
    patch_size: int = 14
    width: int = 1024
    n_layers: int = 24
    n_heads: int = 16
    mlp_dim: int = 4096
    sub_images: bool = False
    norm_eps: float = 1e-5
    activation: str = "gelu"

    def __post_init__(self) -> None:
        if self.activation not in VIT_ACTIVATIONS:
            raise ConfigError(f"unknown vit.activation {self.activation!r}; valid: {', '.join(VIT_ACTIVATIONS)}")
        positive_ints("vit", image_size=self.image_size, patch_size=self.patch_size, width=self.width,
                  n_layers=self.n_layers, n_heads=self.n_heads, mlp_dim=self.mlp_dim)
        if self.image_size % self.patch_size:
            raise ConfigError(f"vit.patch_size {self.patch_size} must divide vit.image_size {self.image_size}")
        if self.width % self.n_heads:
            raise ConfigError(f"vit.n_heads {self.n_heads} must divide vit.width {self.width}")

    @property
    def grid(self) -> int:
        """Patches per side at the native resolution."""
        return self.image_size // self.patch_size


@dataclass
class ConnectorConfig:
    """The vision-language connector. ``image_tokens`` (a perfect square) tokens per (sub-)image.

    ``hidden`` and ``depth`` (RegNet bottleneck blocks per stage) apply to the C-Abstractor only;
    ``n_heads`` to attention pooling only (it must divide the ViT width)."""

    kind: str = "c_abstractor"
    image_tokens: int = 144
    hidden: int = 1024
    depth: int = 3
    n_heads: int = 8

    def __post_init__(self) -> None:
        if self.kind not in CONNECTOR_KINDS:
            raise ConfigError(f"unknown connector kind '{self.kind}'; valid kinds: {', '.join(CONNECTOR_KINDS)}")
        positive_ints("connector", image_tokens=self.image_tokens, hidden=self.hidden, n_heads=self.n_heads)
        side = math.isqrt(self.image_tokens)
        if side * side != self.image_tokens:
            raise ConfigError("connector.image_tokens must be a perfect square (64, 144, ...), "
                              f"got {self.image_tokens}")
        if not isinstance(self.depth, int) or self.depth < 0:
            raise ConfigError(f"connector.depth must be an integer >= 0, got {self.depth!r}")

    @property
    def side(self) -> int:
        """Image tokens per side of the connector's output grid."""
        return math.isqrt(self.image_tokens)


# ----------------------------------------------------------------------------------------------
# Image encoder: CLIP-style ViT
# ----------------------------------------------------------------------------------------------
def interpolate_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize grid position embeddings (1, h*w, C) of a square grid to ``grid`` (h', w') with
    bicubic interpolation, as CLIP/MM1 do to run a ViT at a new resolution. Returns (1, h'*w', C)."""
    n, c = pos.shape[1], pos.shape[2]
    side = math.isqrt(n)
    x = pos.reshape(1, side, side, c).permute(0, 3, 1, 2)  # (1, C, h, w)
    x = F.interpolate(x.float(), size=grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return x.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], c)  # (1, h'*w', C)


class ViTBlock(nn.Module):
    """CLIP residual attention block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.quick_gelu = cfg.activation == "quick_gelu"
        self.ln_1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.ln_2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.fc = nn.Linear(cfg.width, cfg.mlp_dim)
        self.out = nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape  # (B, P+1, C)
        qkv = self.qkv(self.ln_1(x)).view(b, n, 3, self.n_heads, c // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, P+1, hd)
        y = F.scaled_dot_product_attention(q, k, v)  # image patches attend both ways
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, c))
        h = self.fc(self.ln_2(x))  # (B, P+1, mlp_dim)
        h = h * torch.sigmoid(1.702 * h) if self.quick_gelu else F.gelu(h)
        return x + self.out(h)


class ViT(nn.Module):
    """CLIP image encoder. ``forward(pixels (B, 3, H, W))`` -> patch features (B, P, C) of the last
    block, without the class token and without ln_post (CLIP applies ln_post to the class token
    only; Honeybee/MM1 read the last hidden state's patch tokens)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid**2, cfg.width))  # class slot first
        self.ln_pre = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(cfg.n_layers))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch_size
        h, w = pixels.shape[-2] // p, pixels.shape[-1] // p
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # (B, P, C)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, C)
        x = torch.cat([cls, x], dim=1)  # (B, 1+P, C)
        pos = torch.cat([self.pos_embed[:, :1], interpolate_pos_embed(self.pos_embed[:, 1:], (h, w))], dim=1)
        x = self.ln_pre(x + pos)
        for block in self.blocks:
            x = block(x)
        return x[:, 1:]  # (B, P, C)


def decompose(image: torch.Tensor) -> torch.Tensor:
    """MM1's sub-image decomposition: (3, S, S) -> (5, 3, S/2, S/2), in the fixed order
    overview (the whole image downscaled bicubically), then the tiles row-major
    (top-left, top-right, bottom-left, bottom-right)."""
    _, height, width = image.shape
    if height % 2 or width % 2:
        raise ValueError(f"sub-image decomposition needs even image sides, got {height}x{width}")
    h, w = height // 2, width // 2
    overview = F.interpolate(image[None], size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    tiles = [image[:, i * h:(i + 1) * h, j * w:(j + 1) * w] for i in range(2) for j in range(2)]
    return torch.cat([overview, torch.stack(tiles)])  # (5, 3, S/2, S/2)


# ----------------------------------------------------------------------------------------------
# Vision-language connectors: (B, P, C_vit) on an (h, w) patch grid -> (B, image_tokens, d_lm)
# ----------------------------------------------------------------------------------------------
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (timm's LayerNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Bottleneck(nn.Module):
    """timm's RegNet bottleneck as Honeybee configures it: bottleneck ratio 1, depthwise 3x3
    (group size 1), squeeze-excite 0.25 of the block's input channels, SiLU, LayerNorm2d,
    convolutions without bias, a 1x1 conv + norm shortcut when channels change, SiLU after the add."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        se = int(round(c_in * 0.25))
        self.conv1 = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.norm1 = LayerNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, groups=c_out, bias=False)
        self.norm2 = LayerNorm2d(c_out)
        self.se_reduce = nn.Conv2d(c_out, se, 1)
        self.se_expand = nn.Conv2d(se, c_out, 1)
        self.conv3 = nn.Conv2d(c_out, c_out, 1, bias=False)
        self.norm3 = LayerNorm2d(c_out)
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), LayerNorm2d(c_out))
                         if c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, h, w)
        y = F.silu(self.norm1(self.conv1(x)))
        y = F.silu(self.norm2(self.conv2(y)))
        gate = self.se_expand(F.silu(self.se_reduce(y.mean((2, 3), keepdim=True))))  # (B, C, 1, 1)
        y = self.norm3(self.conv3(y * gate.sigmoid()))
        return F.silu(y + self.shortcut(x))  # (B, C_out, h, w)


class CAbstractor(nn.Module):
    """Honeybee's C-Abstractor: + learned positions -> stage s1 (``depth`` bottlenecks) ->
    adaptive average pool to side x side -> stage s2 -> readout Linear -> SiLU -> Linear.
    With depth 0 it is pool + readout MLP."""

    def __init__(self, cfg: ConnectorConfig, vit: ViTConfig, d_lm: int):
        super().__init__()
        self.side = cfg.side
        self.pos_embed = nn.Parameter(torch.zeros(1, vit.grid**2, vit.width))
        c = cfg.hidden if cfg.depth else vit.width
        self.s1 = nn.Sequential(*(Bottleneck(vit.width if i == 0 else c, c) for i in range(cfg.depth)))
        self.s2 = nn.Sequential(*(Bottleneck(c, c) for _ in range(cfg.depth)))
        self.readout = nn.Sequential(nn.Linear(c, d_lm), nn.SiLU(), nn.Linear(d_lm, d_lm))

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, _, c = x.shape  # (B, P, C_vit)
        x = x + interpolate_pos_embed(self.pos_embed, grid)
        x = x.transpose(1, 2).reshape(b, c, *grid)  # (B, C_vit, h, w)
        x = self.s2(F.adaptive_avg_pool2d(self.s1(x), self.side))  # (B, hidden, side, side)
        return self.readout(x.flatten(2).transpose(1, 2))  # (B, side*side, d_lm)


class AvgPool(nn.Module):
    """MM1's average pooling connector: n x n average pooling of the patch grid, then a linear map."""

    def __init__(self, cfg: ConnectorConfig, vit: ViTConfig, d_lm: int):
        super().__init__()
        self.side = cfg.side
        self.proj = nn.Linear(vit.width, d_lm)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, _, c = x.shape  # (B, P, C_vit)
        x = F.adaptive_avg_pool2d(x.transpose(1, 2).reshape(b, c, *grid), self.side)  # (B, C, side, side)
        return self.proj(x.flatten(2).transpose(1, 2))  # (B, side*side, d_lm)


class AttentionPool(nn.Module):
    """MM1's attention pooling connector: k learnable queries cross-attend to the patch
    features, then a linear map into the LM's embedding space."""

    def __init__(self, cfg: ConnectorConfig, vit: ViTConfig, d_lm: int):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.queries = nn.Parameter(torch.zeros(cfg.image_tokens, vit.width))
        self.norm = nn.LayerNorm(vit.width)
        self.q = nn.Linear(vit.width, vit.width)
        self.k = nn.Linear(vit.width, vit.width)
        self.v = nn.Linear(vit.width, vit.width)
        self.o = nn.Linear(vit.width, vit.width)
        self.proj = nn.Linear(vit.width, d_lm)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, p, c = x.shape  # (B, P, C_vit)
        heads = lambda t: t.view(b, -1, self.n_heads, c // self.n_heads).transpose(1, 2)  # noqa: E731
        x = self.norm(x)
        q = heads(self.q(self.queries).expand(b, -1, -1))  # (B, H, k, hd)
        y = F.scaled_dot_product_attention(q, heads(self.k(x)), heads(self.v(x)))  # (B, H, k, hd)
        return self.proj(self.o(y.transpose(1, 2).reshape(b, -1, c)))  # (B, k, d_lm)


CONNECTORS = {"c_abstractor": CAbstractor, "avg_pool": AvgPool, "attention_pool": AttentionPool}
