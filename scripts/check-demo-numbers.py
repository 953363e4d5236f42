"""Check that the README's demo table is what a fresh `make demo` fits (`make check-demo`).

    python scripts/check-demo-numbers.py runs/demo/fit/fit.json README.md

Renders the table's rows from fit.json exactly as the README writes them and looks for each
in the README; prints every row with ok / MISMATCH (and the row to paste) and exits 1 on any
mismatch, so numbers in the README cannot drift from what the code gives.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

MM1_ROWS = {"slope": "-0.4214", "intercept": "-0.5535", "targets": "5.9e-5 / 4.1e-5 / 2.2e-5"}


def _e(value: float) -> str:
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def demo_rows(fit: dict) -> list[str]:
    """The README's demo-table rows for a fit.json (see README: "The demo: the MM1 workflow on 2 cores")."""
    slope, intercept = fit["coefficients"]["ln_params"], fit["coefficients"]["intercept"]
    (s_lo, s_hi), (i_lo, i_hi) = fit["ci95"]["ln_params"], fit["ci95"]["intercept"]
    backtest = fit["backtest"]
    mean = backtest["mean_abs_error_log_lr"]
    targets = " / ".join(_e(t["peak_lr"]) for t in fit["targets"])
    return [
        f"| slope of ln lr* on ln N | **{slope:.3f}**, 95% CI [{s_lo:.3f}, {s_hi:.3f}] | {MM1_ROWS['slope']} |",
        f"| intercept | {intercept:+.2f}, 95% CI [{i_lo:+.2f}, {i_hi:+.2f}] | {MM1_ROWS['intercept']} |",
        f"| R^2 | {fit['r2']:.3f} | - |",
        f"| leave-one-size-out error in ln lr* | mean {mean:.2f} (x{math.exp(mean):.2f}), "
        f"worst x{backtest['max_ratio']:.2f} | - |",
        f"| 3B / 7B / 30B peak LR | {targets} | {MM1_ROWS['targets']} |",
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    fit_path, readme_path = map(Path, argv)
    try:
        fit = json.loads(fit_path.read_text())
        readme = readme_path.read_text()
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    lines = set(readme.splitlines())
    bad = 0
    for row in demo_rows(fit):
        ok = row in lines
        bad += not ok
        print(f"{'ok      ' if ok else 'MISMATCH'} {row}")
    if bad:
        print(f"{bad} row(s) of {readme_path} differ from {fit_path}: paste the rows above", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
