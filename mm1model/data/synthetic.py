"""The procedural fallback corpus, used where the Debian packages cannot be fetched.

Every picture is drawn from a known scene (shapes with a colour, a size and a position), so its
caption is exactly true. Interleaved documents put several scenes in a row with a sentence about
each scene right after it; text-only documents describe scenes in prose without pictures. The
language is templated, which is why this is a fallback and is always labelled ``synthetic``.
"""
from __future__ import annotations

import random
from typing import Iterator

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (235, 210, 40), "purple": (140, 60, 180), "orange": (240, 140, 30),
           "black": (20, 20, 20), "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = {"small": 0.18, "medium": 0.28, "large": 0.4}
PLACES = {"top left": (0.25, 0.25), "top right": (0.75, 0.25), "centre": (0.5, 0.5),
          "bottom left": (0.25, 0.75), "bottom right": (0.75, 0.75)}


def _scene(rng: random.Random) -> list[tuple[str, str, str, str]]:
    """One to three (size, colour, shape, place) objects at distinct places."""
    places = rng.sample(list(PLACES), rng.randint(1, 3))
    return [(rng.choice(list(SIZES)), rng.choice(list(COLOURS)), rng.choice(SHAPES), p)
            for p in places]


def draw_scene(scene: list[tuple[str, str, str, str]], side: int = 96) -> Image.Image:
    """Render a scene on a white square of ``side`` pixels."""
    image = Image.new("RGB", (side, side), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for size, colour, shape, place in scene:
        cx, cy = (v * side for v in PLACES[place])
        r = SIZES[size] * side / 2
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        elif shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        else:
            w = r / 3
            draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
            draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    return image


def caption(scene: list[tuple[str, str, str, str]]) -> str:
    """The exact caption of a scene, e.g. "A small red circle in the top left."."""
    phrases = [f"a {size} {colour} {shape} in the {place}" for size, colour, shape, place in scene]
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return text[0].upper() + text[1:] + "."


def caption_pairs(n: int, seed: int = 0) -> Iterator[tuple[str, Image.Image, str]]:
    """``n`` (key, image, caption) pairs."""
    rng = random.Random(seed)
    for i in range(n):
        scene = _scene(rng)
        yield f"shape-{i:06d}", draw_scene(scene), caption(scene)


def _description(scene: list[tuple[str, str, str, str]], rng: random.Random) -> str:
    count = len(scene)
    lead = rng.choice(["Here we see", "This picture shows", "The next figure has",
                       "Look closely at"])
    colours = sorted({c for _, c, _, _ in scene})
    sentence = f"{lead} {count} shape{'s' if count > 1 else ''}. {caption(scene)}"
    if len(colours) == 1:
        return sentence + f" Everything in it is {colours[0]}."
    return sentence + f" It uses {len(colours)} colours: {', '.join(colours)}."


def interleaved_documents(n: int, seed: int = 1) -> Iterator[tuple[str, list[str | Image.Image]]]:
    """``n`` constructed documents: an intro line, then 1-5 (picture, its description) pairs."""
    rng = random.Random(seed)
    for i in range(n):
        parts: list[str | Image.Image] = [
            rng.choice(["A lesson on shapes and colours.", "Counting shapes in pictures.",
                        "Where is each shape? A short exercise."])]
        for _ in range(rng.randint(1, 5)):
            scene = _scene(rng)
            parts.append(draw_scene(scene))
            parts.append(_description(scene, rng))
        yield f"lesson-{i:06d}", parts


def text_documents(n: int, seed: int = 2) -> Iterator[tuple[str, str]]:
    """``n`` prose documents, each describing 5-20 scenes in words only."""
    rng = random.Random(seed)
    for i in range(n):
        sentences = [_description(_scene(rng), rng) for _ in range(rng.randint(5, 20))]
        yield f"story-{i:06d}", " ".join(sentences)
