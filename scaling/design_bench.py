"""Benchmark: how many runs each sweep strategy needs, on a simulated world and on a recorded sweep.

    python -m scaling.design_bench --simulate 5 --sizes w32,w64,w128,w256,3M   # 5 simulated worlds, default noise
    python -m scaling.design_bench --simulate 5 --noise-from tests/data/cpu-dense-runs.csv   # the CPU sweep's noise
    python -m scaling.design_bench --replay tests/data/cpu-dense-runs.csv

Four strategies, each a real ``scaling sweep`` on the replay executor (:mod:`scaling.replay`),
with the dense CPU sweep's settings (``sweeps/cpu-dense.toml``: 2 seeds per LR; 1 on the replay):

* ``adaptive``: :mod:`scaling.adaptive` (target +/-0.15 in ln lr, at most 9 LRs per size);
  ``adaptive-0.6`` the same with a target of +/-0.6, what the CPU sweep's noise allows;
* ``fixed-7``: 7 LRs a third of a decade apart (+/- 1 decade, ``sweeps/mm1.toml``'s grid), up
  to 3 edge extensions;
* ``demo-5``: 5 LRs a factor 2 apart (+/- 0.6 decade, ``sweeps/cpu.toml``'s), up to 2 extensions.

A simulated world is a runs table on a fine LR grid (0.025 decade) drawn from a
:class:`scaling.design.NoiseModel` around a true law (the prior's intercept off by ``prior_sd``,
each size off by ``scatter``), so a replayed cell gets the loss a run at (almost exactly) its LR
would have; its true optima are known. On the recorded sweep the reference is held out: the
strategies replay one seed's runs (one seed per LR) and each size's reference optimum is the one
selected from the other seed's runs at every recorded LR, and the other way round (two folds).
A reference from every recorded run would hold the runs a strategy replays, the demo's grid's
most of all (the record includes its LRs, and at w128 and w256 is nothing else). Reported per
strategy: runs, the median and largest |error| of the sizes' selected ln lr*, the median error
at the sizes recorded densest (w32, w64: where replay is faithful to any grid down to 0.15
decade), and the fit's 95% PI width at 30B. On the replay, ``record`` is every recorded run of
the replayed seed: how near one seed's optima come to the other's with nothing left out, the
floor the strategies are scored against.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from mm1model.paper import mm1_peak_lr
from scaling.design import DEFAULT_NOISE, NoiseModel, estimate_noise
from scaling.fit import fit_runs, read_runs
from scaling.runs import collect_runs
from scaling.sweep import run_sweeps
from scaling.sweep_plan import load_sweep_config, plan_sweep

SWEEP = Path(__file__).resolve().parent.parent / "sweeps" / "cpu-dense.toml"
STRATEGIES = {
    "adaptive": {"mode": "adaptive"},
    "adaptive-0.6": {"mode": "adaptive", "target_halfwidth": 0.6},
    "fixed-7": {"points": 7, "span": 1.0, "max_extend": 3},
    "demo-5": {"points": 5, "span": 0.6, "max_extend": 2},
}
TARGET = 3e10


def world_table(sizes: dict[str, float], noise: NoiseModel, rng: np.random.Generator, seeds: int = 2,
                step_decades: float = 0.025, half_decades: float = 1.6) -> tuple[pd.DataFrame, dict[str, float]]:
    """A simulated recorded sweep: every size's losses on a fine grid around MM1's law, and the true ln lr*."""
    offset = noise.prior_sd * rng.standard_normal()
    rows, truth = [], {}
    for size, n in sizes.items():
        centre = math.log(mm1_peak_lr(n))
        x_star = centre + offset + noise.scatter * rng.standard_normal()
        truth[size] = x_star
        for x in centre + np.arange(-half_decades, half_decades + 1e-9, step_decades) * math.log(10):
            u = x - x_star
            mean = 5.5 + noise.curvature * u * u * (noise.asymmetry if u > 0 else 1.0)
            for seed in range(seeds):
                rows.append({"size": size, "params": n, "lr": math.exp(x), "seed": seed, "status": "ok",
                             "loss": mean + noise.seed_sd * rng.standard_normal()})
    return pd.DataFrame(rows), truth


def run_strategy(name: str, table: Path, out: Path, sizes: tuple[str, ...] | None = None,
                 seeds: int | None = None) -> pd.DataFrame:
    """One strategy's sweep, replayed from ``table`` (``seeds`` per LR: the sweep file's when None); its runs table."""
    flags = {"executor": f"replay:{table}", "out": str(out), "sizes": sizes, "seeds": seeds, **STRATEGIES[name]}
    run_sweeps(SWEEP, flags=flags, echo=lambda line: None)
    return collect_runs(out)


def held_out_folds(recorded: pd.DataFrame) -> list[tuple[pd.DataFrame, dict[str, float]]]:
    """(runs to replay, reference ln lr* by size) per recorded seed: that seed's runs, relabelled
    seed 0, and the optima selected from every other seed's runs."""
    folds = []
    for seed in sorted(recorded["seed"].unique()):
        replay = recorded[recorded["seed"] == seed].assign(seed=0)
        reference = fit_runs(recorded[recorded["seed"] != seed]).optima
        folds.append((replay, {o["size"]: o["log_lr_opt"] for o in reference}))
    return folds


def score(runs: pd.DataFrame, truth: dict[str, float], dense: tuple[str, ...] = ()) -> dict[str, float]:
    """Runs, the sizes' |selected - true ln lr*| (median, max; median over the ``dense`` sizes)
    and the 95% PI width at 30B (ln lr)."""
    law = fit_runs(runs)
    errors = {o["size"]: abs(o["log_lr_opt"] - truth[o["size"]]) for o in law.optima}
    pi = law.prediction_interval(TARGET)
    return {"runs": int(((runs["status"] == "ok") | (runs["status"] == "diverged")).sum()),
            "median_error": float(np.median(list(errors.values()))), "max_error": float(max(errors.values())),
            "dense_error": float(np.median([errors[s] for s in dense])) if dense else math.nan,
            "pi95_width_30B": math.log(pi[1] / pi[0]) if pi else math.nan,
            **{f"error_{size}": e for size, e in errors.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate", type=int, default=0, help="Simulated worlds to score the strategies in.")
    parser.add_argument("--replay", type=Path, help="A recorded runs table to score the strategies on.")
    parser.add_argument("--noise-from", type=Path, help="Recorded runs to measure the simulated worlds' noise from.")
    parser.add_argument("--sizes", help="Sizes of the simulated worlds and the replay [the dense sweep's w32, w64, w128].")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chosen = tuple(args.sizes.split(",")) if args.sizes else None
    plan = plan_sweep(load_sweep_config(SWEEP, sizes=chosen))
    sizes = {sp.size: float(sp.params) for sp in plan.sizes}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.simulate:
            noise = estimate_noise(read_runs([args.noise_from])) if args.noise_from else DEFAULT_NOISE
            noise = dataclasses.replace(noise, prior_sd=0.3)
            print(noise.describe())
            rng = np.random.default_rng(args.seed)
            for world in range(args.simulate):
                table, truth = world_table(sizes, noise, rng)
                path = tmp / f"world{world}.csv"
                table.to_csv(path, index=False)
                for name in STRATEGIES:
                    rows.append({"data": f"sim {world}", "strategy": name,
                                 **score(run_strategy(name, path, tmp / f"w{world}-{name}", chosen), truth)})
                    print(rows[-1])
        if args.replay:
            recorded = read_runs([args.replay])
            recorded = recorded[recorded["size"].isin(sizes)]
            counts = recorded.groupby("size")["lr"].nunique()
            dense = tuple(size for size in sizes if counts.get(size) == counts.max())
            for fold, (replay, truth) in enumerate(held_out_folds(recorded)):
                path = tmp / f"replay-seed{fold}.csv"
                replay.to_csv(path, index=False)
                # the floor: every recorded run of the replayed seed against the other seed's
                rows.append({"data": f"replay {fold}", "strategy": "record", **score(replay, truth, dense)})
                for name in STRATEGIES:
                    runs = run_strategy(name, path, tmp / f"replay{fold}-{name}", chosen, seeds=1)
                    rows.append({"data": f"replay {fold}", "strategy": name, **score(runs, truth, dense)})
                    print(rows[-1])
    frame = pd.DataFrame(rows)
    kind = frame["data"].str.startswith("sim").map({True: "simulated", False: "replay (held-out seed)"})
    summary = frame.groupby([kind, "strategy"]).agg(
        runs=("runs", "mean"), median_error=("median_error", "median"), max_error=("max_error", "median"),
        dense_error=("dense_error", "median"), pi95_width_30B=("pi95_width_30B", "median"))
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
