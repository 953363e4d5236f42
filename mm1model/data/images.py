"""Image preprocessing: decoded bytes -> uint8 pixels (what the stream caches and sends) -> a
normalised (3, S, S) float tensor for the ViT, made on the device (:func:`normalise`).

The rule is **resize, keep the aspect ratio, pad** (never crop): the longer side is scaled to S
and the shorter side is padded symmetrically with the CLIP mean colour, which is exactly zero
after normalisation. Padding keeps the whole picture, which matters here because the captions
and the manual's text describe the whole image (a crop could cut off the object a caption
names). Transparent images (Tux Paint stamps, emoji) are composited over white first.
"""
from __future__ import annotations

import functools
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


def resize(image: Image.Image, size: int) -> torch.Tensor:
    """The pixels the stream keeps: a (3, h, w) uint8 tensor, the image resized keeping its aspect
    ratio so that its longer side is ``size`` (``max(h, w) == size``). 1 byte per pixel and
    channel, a quarter of the float32 input the ViT takes, and no padding: :func:`normalise`
    makes that input, on whatever device the tensor is."""
    width, height = image.size
    scale = size / max(width, height)
    resized = image.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                           Image.Resampling.BICUBIC)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)))


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """The ViT's (3, S, S) float32 input from :func:`resize`'s (3, h, w) uint8 pixels, S = max(h, w),
    on the pixels' device: CLIP-normalised, centred, padded with zeros (the mean colour)."""
    _, height, width = pixels.shape
    size = max(height, width)
    mean, std = _clip_statistics(pixels.device)
    out = torch.zeros(3, size, size, device=pixels.device)
    top, left = (size - height) // 2, (size - width) // 2
    out[:, top:top + height, left:left + width] = (pixels.float() / 255.0 - mean) / std
    return out  # (3, S, S)


@functools.lru_cache(maxsize=8)
def _clip_statistics(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # made once per device: building them per image would be a blocking host-to-GPU copy each
    return (torch.tensor(CLIP_MEAN, dtype=torch.float32, device=device).view(3, 1, 1),
            torch.tensor(CLIP_STD, dtype=torch.float32, device=device).view(3, 1, 1))


def normalise_images(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """A :data:`~mm1model.data.Batch`'s ``images`` as the model takes them: uint8 pixels
    normalised (:func:`normalise`), float images (already normalised) as they are."""
    return [normalise(i) if i.dtype == torch.uint8 else i for i in images]


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """A (3, size, size) float32 tensor: aspect-preserving resize, pad with the mean, normalise."""
    return normalise(resize(image, size))


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB image (the on-disk format of the bundled corpus: small, standard)."""
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
