"""`scaling compare` on disjoint seed sets of one sweep (``--seed-sets 0,1/2,3``): the comparison
of :mod:`scaling.compare` on each set and metric, and whether the sets' verdicts agree. One
sweep of 4 paired seeds split into {0, 1} and {2, 3} is "the comparison run twice with
different seeds" for the price of one sweep.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from mm1model import records
from mm1model.config import ConfigError
from scaling.compare import (DEFAULT_BOOTSTRAP, METRICS, CompareResult, compare_runs, json_safe, load_runs,
                             write_result)


def _shown(seeds: Sequence[int]) -> str:
    return ",".join(map(str, seeds))


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` -> [0, 1, 2]; a ConfigError for anything else."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) < len(seeds):
        raise ConfigError(f"a seed set is distinct non-negative integers separated by commas, e.g. 0,1; got {text!r}")
    return sorted(seeds)


def parse_seed_sets(text: str) -> list[list[int]]:
    """``0,1/2,3`` -> [[0, 1], [2, 3]]: disjoint seed sets; a ConfigError for overlapping ones."""
    sets = [parse_seeds(part) for part in text.split("/")]
    seen: set[int] = set()
    for s in sets:
        if seen & set(s):
            raise ConfigError(f"seed sets must be disjoint, got {text!r} (seed {sorted(seen & set(s))[0]} twice)")
        seen |= set(s)
    return sets


@dataclasses.dataclass
class SeedSetsResult:
    """The comparison on each of several disjoint seed sets, per metric, and whether their
    verdicts agree: ``results[metric]`` holds one :class:`CompareResult` per seed set."""

    results: dict[str, list[CompareResult]]
    files: list[Path] = dataclasses.field(default_factory=list)

    def agreement(self, metric: str) -> list[dict[str, Any]]:
        """Per (family, road, figure): each set's verdict (the lower road's label, or None), and
        ``agree`` (all the same, "no verdict" included) and ``contradict`` (two sets name
        different roads)."""
        rows = []
        by_set = [{(v.family, v.label, v.figure): v for v in r.verdicts} for r in self.results[metric]]
        for key in by_set[0]:
            winners = [s[key].winner if key in s else None for s in by_set]
            named = {w for w in winners if w is not None}
            rows.append({"family": key[0], "label": key[1], "figure": key[2], "verdicts": winners,
                         "agree": len(set(winners)) == 1, "contradict": len(named) > 1})
        return rows

    def summary(self) -> str:
        lines = []
        for metric, results in self.results.items():
            for result in results:
                lines += [f"=== metric {metric}, seeds {_shown(result.seeds)}", result.table(), ""]
            if len(results) < 2:
                continue
            rows = self.agreement(metric)
            sets = " vs ".join(_shown(r.seeds) for r in results)
            lines += [f"=== agreement of the verdicts, metric {metric}, seeds {sets}",
                      f"{'family':<6} {'road':<16} {'figure':<21} {'verdicts':<28} agree"]
            for row in rows:
                shown = " | ".join(w or "none" for w in row["verdicts"])
                agree = "yes" if row["agree"] else ("CONTRADICT" if row["contradict"] else "no")
                lines.append(f"{row['family']:<6} {row['label']:<16} {row['figure']:<21} {shown:<28} {agree}")
            n_agree = sum(r["agree"] for r in rows)
            n_contra = sum(r["contradict"] for r in rows)
            lines += [f"{n_agree} of {len(rows)} verdicts agree; {n_contra} contradict", ""]
        if self.files:
            lines.append(f"wrote {', '.join(map(str, self.files))}")
        return "\n".join(lines).rstrip()

    def to_json(self) -> dict[str, Any]:
        return json_safe({metric: {"seed_sets": [r.seeds for r in results],
                                "agreement": self.agreement(metric) if len(results) > 1 else None}
                       for metric, results in self.results.items()})


def compare_seed_sets(sweep_dirs: list[str | Path], seed_sets: Sequence[Sequence[int]], metrics: Sequence[str] = ("overall",),
                      select: str = "parabola", bootstrap: int = DEFAULT_BOOTSTRAP,
                      bootstrap_seed: int = 0) -> SeedSetsResult:
    """:func:`compare` on each seed set (disjoint) and metric, from one reading of the sweeps."""
    for metric in metrics:
        if metric not in METRICS:
            raise ConfigError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    runs = load_runs(sweep_dirs)
    return SeedSetsResult({metric: [compare_runs(runs, select, metric, seeds, bootstrap, bootstrap_seed)
                                    for seeds in seed_sets] for metric in metrics})



def run_compare_seed_sets(sweep_dirs: list[str | Path], seed_sets: Sequence[Sequence[int]], out: str | Path | None = None,
                          metrics: Sequence[str] = ("overall",), select: str = "parabola",
                          bootstrap: int = DEFAULT_BOOTSTRAP, bootstrap_seed: int = 0) -> SeedSetsResult:
    """``scaling compare --seed-sets``: :func:`compare_seed_sets`, then (with ``out``) each
    result in ``out/<metric>/seeds=<a,b>/`` (:func:`write_result`) and agreement.json."""
    found = compare_seed_sets(sweep_dirs, seed_sets, metrics, select, bootstrap, bootstrap_seed)
    if out is None:
        return found
    out = Path(out)
    written = {metric: [write_result(r, out / metric / f"seeds={_shown(r.seeds)}") for r in results]
               for metric, results in found.results.items()}
    done = SeedSetsResult(written)
    records.write_json(out / "agreement.json", done.to_json())
    done.files = [out / "agreement.json", *(f for rs in written.values() for r in rs for f in r.files)]
    return done
