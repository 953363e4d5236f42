"""`scaling compare` on disjoint seed sets of one sweep (``--seed-sets 0,1/2,3``): the comparison
of :mod:`scaling.compare` on each set and metric, and whether the sets' verdicts agree. One
sweep of 4 paired seeds split into {0, 1} and {2, 3} is "the comparison run twice with
different seeds" for the price of one sweep. Agreement is counted three ways: figures where
every set gives the same verdict, figures where no set gives one (an agreement of absences,
flagged when it is all there is), and figures whose verdicts differ.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from mm1model import records
from mm1model.config import ConfigError
from scaling.compare import DEFAULT_BOOTSTRAP, METRICS, compare_runs, load_runs
from scaling.compare_report import CompareResult, json_safe, seeds_text, write_result


# How the verdicts of several seed sets on one figure relate (:meth:`SeedSetsResult.agreement`).
AGREEMENT = ("same", "none", "differ")
STATUS_TEXT = {"same": "same verdict", "none": "no verdict in any", "differ": "differ"}


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
    verdicts agree (:meth:`agreement`): ``results[metric]`` holds one :class:`CompareResult` per
    seed set."""

    results: dict[str, list[CompareResult]]
    files: list[Path] = dataclasses.field(default_factory=list)

    def agreement(self, metric: str) -> dict[str, Any]:
        """Whether the seed sets' verdicts on ``metric`` agree. ``rows``, per (family, road,
        figure): each set's verdict (the lower road's label, or None for no verdict) and its
        ``status``: ``same`` (every set names the same road), ``none`` (no set gives a verdict:
        an agreement of absences, not of verdicts) or ``differ`` (a verdict some set does not
        share), with ``contradict`` where two sets name different roads. ``counts``: rows per
        status and the contradictions; ``any_verdict``: whether any set gave any verdict."""
        by_set = [{(v.family, v.label, v.figure): v for v in r.verdicts} for r in self.results[metric]]
        keys = list(dict.fromkeys(key for s in by_set for key in s))
        rows = []
        for key in keys:
            winners = [s[key].winner if key in s else None for s in by_set]
            named = {w for w in winners if w is not None}
            status = "none" if not named else ("same" if len(set(winners)) == 1 else "differ")
            rows.append({"family": key[0], "label": key[1], "figure": key[2], "verdicts": winners,
                         "status": status, "contradict": len(named) > 1})
        counts = {status: sum(r["status"] == status for r in rows) for status in AGREEMENT}
        counts["contradict"] = sum(r["contradict"] for r in rows)
        return {"rows": rows, "counts": counts, "any_verdict": counts["same"] + counts["differ"] > 0}

    def summary(self) -> str:
        lines = []
        for metric, results in self.results.items():
            for result in results:
                lines += [f"=== metric {metric}, seeds {seeds_text(result.seeds)}", result.table(), ""]
            if len(results) < 2:
                continue
            found = self.agreement(metric)
            sets = " vs ".join(seeds_text(r.seeds) for r in results)
            lines += [f"=== agreement of the verdicts, metric {metric}, seeds {sets}",
                      f"{'family':<6} {'road':<16} {'figure':<21} {'verdicts':<28} agreement"]
            for row in found["rows"]:
                shown = " | ".join(w or "none" for w in row["verdicts"])
                status = "CONTRADICT" if row["contradict"] else STATUS_TEXT[row["status"]]
                lines.append(f"{row['family']:<6} {row['label']:<16} {row['figure']:<21} {shown:<28} {status}")
            n = found["counts"]
            lines.append(f"of {len(found['rows'])} figures: {n['same']} the same verdict in every set, "
                         f"{n['none']} no verdict in any set, {n['differ']} differ ({n['contradict']} contradict)")
            if not found["any_verdict"]:
                lines.append("NO VERDICT in any set: the sets agree only in that neither tells the roads apart "
                             "at this budget")
            lines.append("")
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
    written = {metric: [write_result(r, out / metric / f"seeds={seeds_text(r.seeds)}") for r in results]
               for metric, results in found.results.items()}
    done = SeedSetsResult(written)
    records.write_json(out / "agreement.json", done.to_json())
    done.files = [out / "agreement.json", *(f for rs in written.values() for r in rs for f in r.files)]
    return done
