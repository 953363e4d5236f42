"""The source mixture: which of caption / interleaved / text each packed sequence draws from.

MM1 mixes 45% image-caption, 45% interleaved and 10% text-only data, sampled per sequence. The
sampler here is a function of (seed, stream, sequence index) only, so its state is the index and
resuming is exact. It is stratified rather than i.i.d.: within each block of 64 sequences the
fractions follow a Weyl sequence (``frac(c + i * golden)``, discrepancy ~log(n)/n), then the block
is shuffled with a seeded permutation. Realised proportions are therefore within a sequence or
two of the weights at any length, while the order inside a block is random.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from mm1model import paper
from mm1model.config import ConfigError

SOURCES = ("caption", "interleaved", "text")
_BLOCK = 64
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclasses.dataclass(frozen=True)
class MixtureConfig:
    """Relative weights of the three sources (normalised to sum to 1; MM1: 45/45/10)."""

    caption: float = paper.MIXTURE["caption"]
    interleaved: float = paper.MIXTURE["interleaved"]
    text: float = paper.MIXTURE["text"]

    def __post_init__(self) -> None:
        values = self.as_tuple()
        if any(not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 for v in values):
            raise ConfigError(f"mixture weights must be finite and >= 0, got {values}")
        if sum(values) <= 0:
            raise ConfigError("mixture weights sum to 0: give at least one source a weight")

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.caption, self.interleaved, self.text)

    def probabilities(self) -> np.ndarray:
        """Weights normalised to sum to 1, in ``SOURCES`` order."""
        values = np.asarray(self.as_tuple(), dtype=np.float64)
        return values / values.sum()


class MixtureSampler:
    """``source(i)``: the source index (into ``SOURCES``) of sequence ``i`` of one stream."""

    def __init__(self, mixture: MixtureConfig, seed: int, stream: int = 0):
        self.cumulative = np.cumsum(mixture.probabilities())
        self.cumulative[-1] = 1.0
        self.seed, self.stream = seed, stream
        self._offset = np.random.default_rng([seed, stream, 7919]).random()
        self._block, self._cache = -1, np.zeros(0, dtype=np.int64)

    def source(self, index: int) -> int:
        block, within = divmod(index, _BLOCK)
        if block != self._block:
            positions = block * _BLOCK + np.arange(_BLOCK)
            fractions = (self._offset + positions * _GOLDEN) % 1.0
            # side="right": a zero-weight source owns the empty interval and is never drawn.
            picks = np.searchsorted(self.cumulative, fractions, side="right")
            order = np.random.default_rng([self.seed, self.stream, block]).permutation(_BLOCK)
            self._block, self._cache = block, picks[order]
        return int(self._cache[within])
