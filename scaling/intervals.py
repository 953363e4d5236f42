"""Intervals over seeds and what they settle: :class:`Interval` (a figure, its 95% bootstrap
interval widened for few seeds), :func:`small_sample_factor` and :func:`seeds_to_settle` (the
power estimate of an unsettled difference). Used by :mod:`scaling.compare`.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from scipy.stats import t as student_t

Z95 = 1.959964  # two-sided 5%
Z_POWER = 0.841621  # 80% power
# A figure undefined (a prediction outside the swept LRs, a size whose every LR diverged) in more
# than this share of the draws has no interval to judge by.
UNDEFINED_LIMIT = 0.05


@dataclasses.dataclass(frozen=True)
class Interval:
    """A figure from all seeds (``value``) and its 95% percentile interval over the bootstrap's
    draws (``lo``, ``hi``; NaN without draws), the draws' sd (finite draws) and the share of
    draws where the figure is undefined (NaN)."""

    value: float
    lo: float = math.nan
    hi: float = math.nan
    sd: float = math.nan
    undefined: float = 0.0

    @classmethod
    def of(cls, value: float, draws: np.ndarray, n_seeds: int | None = None) -> Interval:
        """From the draws' 2.5% and 97.5% order statistics (a draw may be +inf: a regret across a
        diverged LR). With ``n_seeds`` (seeds per size), each side's distance from ``value`` is
        widened by t(0.975, n - 1) / z(0.975): with few seeds a percentile interval is too
        narrow (for a mean of 2 seeds it covers about 70% of the time, of 4 about 85%), and the
        t quantile is what restores 95% for a normal mean; one seed gives no interval."""
        draws = np.asarray(draws, dtype=float)
        defined = np.sort(draws[~np.isnan(draws)])
        undefined = 1.0 - len(defined) / len(draws) if len(draws) else 0.0
        if len(defined) < 2 or (n_seeds is not None and n_seeds < 2):
            return cls(float(value), undefined=undefined)
        lo = defined[int(math.floor(0.025 * (len(defined) - 1)))]
        hi = defined[int(math.ceil(0.975 * (len(defined) - 1)))]
        if n_seeds is not None and math.isfinite(value):
            widen = small_sample_factor(n_seeds)
            with np.errstate(invalid="ignore"):
                lo, hi = value - (value - lo) * widen, value + (hi - value) * widen
        finite = defined[np.isfinite(defined)]
        sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
        return cls(float(value), float(lo), float(hi), sd, undefined)

    @property
    def degenerate(self) -> bool:
        """One end of the interval is the figure itself and the other is not: the draws never
        fell on one side of it. Few seeds do that (a size with 2 seeds has 3 distinct
        resamples), and a t widening of a zero distance stays zero, so such an interval measures
        no spread on that side. (Draws that all equal the figure are a figure without noise.)"""
        return (self.lo == self.value) != (self.hi == self.value)

    @property
    def excludes_zero(self) -> bool:
        """The interval lies wholly on one side of 0, is not :attr:`degenerate`, and the figure
        is defined in enough draws."""
        return (self.undefined <= UNDEFINED_LIMIT and not self.degenerate
                and (self.lo > 0 or self.hi < 0))

    def text(self, spec: str = "+.3f") -> str:
        """``+0.350 [+0.101, +0.622]``; ``-`` for an undefined value."""
        if math.isnan(self.value):
            return "-"
        if math.isnan(self.lo):
            return format_number(self.value, spec)
        return f"{format_number(self.value, spec)} [{format_number(self.lo, spec)}, {format_number(self.hi, spec)}]"


@functools.lru_cache(maxsize=None)
def small_sample_factor(n_seeds: int) -> float:
    """t(0.975, n_seeds - 1) / z(0.975): how much wider than a normal interval one over
    ``n_seeds`` seeds must be (12.7 / 1.96 = 6.5 at 2 seeds, 1.62 at 4, 1.15 at 10)."""
    return float(student_t.ppf(0.975, n_seeds - 1)) / Z95


def seeds_to_settle(difference: Interval, n_seeds: int, limit: int = 1000) -> int | None:
    """Seeds per size at which a difference of this size would, with 80% power, have an interval
    (:meth:`Interval.of`'s, widened for ``n_seeds`` seeds per size) that excludes zero, if its
    spread shrinks as 1/sqrt(seeds): the fewest m with
    (t(0.975, m - 1) + z(0.8)) spread sqrt(n / m) <= |value|.

    The spread is read off the interval's side towards zero, the side a verdict has to clear:
    the distance from the figure to the bound nearer zero, over the quantile that side was drawn
    at (t(0.975, n - 1)). A percentile interval can be skewed, so the draws' sd may say a
    difference is settled when the side towards zero says it is not. Where that side measures no
    spread (a :attr:`~Interval.degenerate` interval) the other side's distance is used. The
    answer is more than ``n_seeds`` whenever the interval gives no verdict (it does not
    :attr:`~Interval.excludes_zero`): an interval spanning zero gives that by construction, a
    degenerate one or one undefined in too many draws by a floor of ``n_seeds + 1``.
    None without an interval (no draws, fewer than 2 seeds, an infinite bound), with a zero
    difference, or beyond ``limit``."""
    value = difference.value
    if n_seeds < 2 or not math.isfinite(value) or value == 0 or math.isnan(difference.lo):
        return None
    near, far = (difference.lo, difference.hi) if value > 0 else (difference.hi, difference.lo)
    distance = abs(value - near) if abs(value - near) > 0 else abs(far - value)
    if not (math.isfinite(distance) and distance > 0):
        return None
    spread = distance / float(student_t.ppf(0.975, n_seeds - 1))
    m = np.arange(2, limit + 1)
    settled = (_t975(limit) + Z_POWER) * spread * np.sqrt(n_seeds / m) <= abs(value)
    if not settled.any():
        return None
    needed = int(m[np.argmax(settled)])
    return needed if difference.excludes_zero else max(needed, n_seeds + 1)


@functools.lru_cache(maxsize=None)
def _t975(limit: int) -> np.ndarray:
    """t(0.975, df) for df = 1 .. limit - 1 (m = 2 .. limit seeds)."""
    return student_t.ppf(0.975, np.arange(1, limit))


def format_number(v: float, spec: str) -> str:
    """``v`` in ``spec``; ``-`` for NaN, ``+inf`` / ``-inf`` for infinities."""
    if math.isnan(v):
        return "-"
    return ("+inf" if v > 0 else "-inf") if math.isinf(v) else format(v, spec)
