"""The closing summary of a demo (or any sweep + fit): the fitted law beside MM1's, the
backtest, and where every file is. Reads files only, like everything downstream of a sweep."""
from __future__ import annotations

import math
from pathlib import Path

from mm1model.config import ConfigError
from scaling.fit import FitResult
from scaling.reference import mm1_law


def summarize(sweep_dir: str | Path, fit_dir: str | Path) -> str:
    """A few lines a person reads after `make demo`: law, CIs, backtest, LR table, files."""
    sweep_dir, fit_dir = Path(sweep_dir), Path(fit_dir)
    if not (fit_dir / "fit.json").exists():
        raise ConfigError(f"no fit.json in {fit_dir}: run `scaling fit {sweep_dir} --out {fit_dir}` first")
    law = FitResult.from_json(fit_dir / "fit.json")
    ref = mm1_law(law.n_convention)
    slope_ci = law.ci95.get("ln_params") or [None, None]
    lines = ["== summary ==",
             f"fitted on {law.n_groups} CPU sizes: {law.formula()}",
             f"MM1 (paper, 9M-1.2B):          {ref.formula()}"]
    if slope_ci[0] is not None:
        verdict = "excludes 0" if slope_ci[1] < 0 or slope_ci[0] > 0 else "INCLUDES 0: no clear trend"
        lines.append(f"slope 95% CI [{slope_ci[0]:+.3f}, {slope_ci[1]:+.3f}] {verdict}; "
                     f"MM1's -0.4214 is {'inside' if slope_ci[0] <= -0.4214 <= slope_ci[1] else 'outside'} it")
    backtest = law.backtest or {}
    if backtest.get("rows"):
        lines.append(f"leave-one-size-out backtest: mean |error| {backtest['mean_abs_error_log_lr']:.3f} in ln lr "
                     f"(x{math.exp(backtest['mean_abs_error_log_lr']):.2f}), worst x{backtest['max_ratio']:.2f}")
    for target in law.targets:
        pi = target.get("peak_lr_pi95")
        shown_pi = f" (95% PI {pi[0]:.1e}..{pi[1]:.1e})" if pi else ""
        lines.append(f"  {target['name']:>4}: peak LR {target['peak_lr']:.2e}{shown_pi}; "
                     f"MM1 {ref.predict(target['params']):.2e}")
    lines.append("files:")
    for label, path in (("sweep (one directory per cell)", sweep_dir),
                        ("runs table", sweep_dir / "runs.csv"),
                        ("fit", fit_dir / "fit.json"),
                        ("LR table with the full recipe", fit_dir / "lr_table.md"),
                        ("loss against LR", fit_dir / "loss_vs_lr.png"),
                        ("the law and MM1's", fit_dir / "lr_law.png")):
        if path.exists():
            lines.append(f"  {label + ':':<32} {path}")
    return "\n".join(lines)
