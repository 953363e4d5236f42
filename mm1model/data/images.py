"""Image preprocessing: decoded bytes -> a normalised (3, S, S) float tensor for the ViT.

The rule is **resize, keep the aspect ratio, pad** (never crop): the longer side is scaled to S
and the shorter side is padded symmetrically with the CLIP mean colour, which is exactly zero
after normalisation. Padding keeps the whole picture, which matters here because the captions
and the manual's text describe the whole image (a crop could cut off the object a caption
names). Transparent images (Tux Paint stamps, emoji) are composited over white first.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

# CLIP's per-channel statistics (RGB, on [0, 1] pixels), the normalisation of MM1's ViT.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def decode(data: bytes, min_side: int | None = None) -> Image.Image:
    """Decode image bytes to an RGB PIL image; raises ``OSError``/``ValueError`` when corrupt.

    ``min_side``: the JPEG decoder may downscale by 2/4/8 while decoding as long as both sides
    stay >= this (several times faster for the small ViT inputs used here). ``Image.load()``
    forces the full decode, so a truncated file fails here rather than later.
    """
    image = Image.open(io.BytesIO(data))
    if min_side is not None:
        image.draft("RGB", (min_side, min_side))
    image.load()
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited over white."""
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        canvas.alpha_composite(image)
        return canvas.convert("RGB")
    return image.convert("RGB")


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """Downscale so the longer side is at most ``max_side`` pixels, keeping the aspect ratio."""
    width, height = image.size
    scale = max_side / max(width, height)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """A (3, size, size) float32 tensor: aspect-preserving resize, pad with the mean, normalise."""
    width, height = image.size
    scale = size / max(width, height)
    resized = image.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                           Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0  # (h, w, 3)
    pixels = (pixels - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    out = torch.zeros(3, size, size)  # zero = the mean colour after normalisation
    top, left = (size - resized.height) // 2, (size - resized.width) // 2
    out[:, top:top + resized.height, left:left + resized.width] = torch.from_numpy(
        np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    return out  # (3, S, S)


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB image (the on-disk format of the bundled corpus: small, standard)."""
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
