"""Does the horizon term pay? A held-out test of an (N, D) law against MM1's practice.

MM1 fits ln lr* on ln N from sweeps at one horizon and reads the optimum off at the target's N,
whatever the target trains for. An (N, D) law also fits how the optimum moves with the horizon.
The test that decides between them on one sweep: hold out the cell a user cares about most,
the largest size at its longest horizon (the nearest thing to a 30B run in the sweep), and
predict its optimum

* with the (N, D) law fitted to every other (N, D) cell (``features="params,tokens"``), and
* with the N-only law fitted to the shortest horizon of every size (MM1's practice: sweep short,
  transfer the LR to a long run),

each scored by its error in octaves (log2 predicted / observed lr*, the observed optimum
selected as `scaling fit` selects it) and its regret in nats: the held-out cell's own loss at the
predicted LR, interpolated in log2 LR between its swept points, minus its best loss
(:func:`scaling.compare.regret_at`; NaN outside the swept LRs). Where batch size was swept, both
laws use the batch every size shares, so the test is about the horizon alone.

:func:`holdout` returns a :class:`HoldoutResult`; nothing here writes a file.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from mm1model.config import ConfigError
from scaling.compare import regret_at
from scaling.fit import clean_runs, fit_runs
from scaling.optima import select_optima


@dataclasses.dataclass(frozen=True)
class HoldoutPrediction:
    """One law's prediction of the held-out cell's optimum."""

    name: str  # "N,D law" or "N-only at the shortest horizon"
    formula: str
    lr: float
    error_octaves: float  # log2(predicted / observed lr*)
    regret_nats: float  # loss at the predicted LR minus the cell's best (NaN outside its grid)


@dataclasses.dataclass(frozen=True)
class HoldoutResult:
    """The held-out cell, its observed optimum and each law's prediction of it."""

    size: str
    params: float
    tokens: float
    batch_size: float | None
    observed_lr: float
    best_loss: float
    predictions: tuple[HoldoutPrediction, ...]

    @property
    def winner(self) -> str:
        """The prediction nearer the observed optimum (in octaves)."""
        return min(self.predictions, key=lambda p: abs(p.error_octaves)).name

    def summary(self) -> str:
        lines = [f"held out: {self.size} at D = {self.tokens:.3g} tokens"
                 + (f", batch {self.batch_size:g}" if self.batch_size else "")
                 + f": observed lr* {self.observed_lr:.3g}, best loss {self.best_loss:.4f}",
                 f"{'law':<32} {'lr':>9} {'octaves':>8} {'regret':>8}"]
        for p in self.predictions:
            lines.append(f"{p.name:<32} {p.lr:>9.3g} {p.error_octaves:>+8.2f} {p.regret_nats:>8.4f}")
            lines.append(f"  {p.formula}")
        lines.append(f"nearer the observed optimum: {self.winner}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["winner"] = self.winner
        return out


def _shared_batch(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs at the one batch size every size was swept at (the largest such), or all runs
    when batch size did not vary."""
    if "batch_size" not in runs or runs["batch_size"].nunique(dropna=True) <= 1:
        return runs
    per_size = [set(g["batch_size"].dropna()) for _, g in runs.groupby("params")]
    shared = set.intersection(*per_size)
    if not shared:
        raise ConfigError("no batch size is shared by every size: the hold-out compares laws at one batch")
    return runs[runs["batch_size"] == max(shared)]


def holdout(runs: pd.DataFrame, select: str = "parabola") -> HoldoutResult:
    """Hold out the largest size's longest horizon; predict its optimum with the (N, D) law of
    the other cells and the N-only law of the shortest horizons (see the module docstring).

    ``runs``: a runs table (:func:`scaling.fit.read_runs`) with at least two sizes and, at the
    largest, two horizons (ConfigError otherwise)."""
    runs = _shared_batch(clean_runs(runs))
    if "tokens" not in runs or runs["tokens"].isna().any():
        raise ConfigError("the hold-out needs each run's tokens (its horizon)")
    largest = runs["params"].max()
    horizons = sorted(runs.loc[runs["params"] == largest, "tokens"].unique())
    if runs["params"].nunique() < 2 or len(horizons) < 2:
        raise ConfigError("the hold-out needs two or more sizes and two or more horizons at the largest")
    held = (runs["params"] == largest) & (runs["tokens"] == horizons[-1])
    (target,), _, _ = select_optima(runs[held], select, ("params", "tokens"))
    shortest = runs.groupby("params")["tokens"].transform("min") == runs["tokens"]
    laws = (("N,D law", fit_runs(runs[~held], select, "params,tokens")),
            ("N-only at the shortest horizon", fit_runs(runs[shortest], select, "params")))
    curve = [(p["lr"], p["loss"]) for p in target["points"]]
    predictions = []
    for name, law in laws:
        lr = law.predict(largest, horizons[-1])
        predictions.append(HoldoutPrediction(
            name=name, formula=law.formula(), lr=lr, error_octaves=math.log2(lr / target["lr_opt"]),
            regret_nats=regret_at(curve, target["loss_best"], lr)))
    batch = runs.loc[held, "batch_size"].iloc[0] if "batch_size" in runs else None
    size = str(runs.loc[held, "size"].iloc[0]) if "size" in runs else f"N={largest:.3g}"
    return HoldoutResult(size=size, params=float(largest), tokens=float(horizons[-1]),
                         batch_size=float(batch) if batch is not None and np.isfinite(batch) else None,
                         observed_lr=target["lr_opt"], best_loss=target["loss_best"],
                         predictions=tuple(predictions))
