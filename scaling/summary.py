"""The closing summary of a demo (or any sweep + fit): the fitted law beside MM1's, the
backtest, the targets' peak LRs and where every file is. Reads files only (fit.json and
lr_table.json, as ``scaling fit`` wrote them), like everything downstream of a sweep."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm1model import records
from mm1model.config import ConfigError
from mm1model.paper import MM1_SWEEP_SIZES
from scaling import lr_table
from scaling.law import FitResult, mm1_law


@dataclass
class SweepSummary:
    """A sweep's fit as its files hold it: the law, MM1's law in the same N convention, the LR
    table's rows (MM1's peak LR filled in where the fit did not show it) and the files found."""

    law: FitResult
    reference: FitResult
    table: list[dict[str, Any]]
    files: dict[str, Path]

    def summary(self) -> str:
        """A few lines a person reads after `make demo`: law, CIs, backtest, LR table, files."""
        law, ref = self.law, self.reference
        mm1_slope = ref.coefficients["ln_params"]
        slope_ci = law.ci95.get("ln_params") or [None, None]
        mm1_name = f"MM1 (paper, {MM1_SWEEP_SIZES[0]}-{MM1_SWEEP_SIZES[-1]}):"
        lines = ["== summary ==",
                 f"fitted on {law.n_groups} CPU {'(N, D) cells' if law.group_kind == 'cells' else 'sizes'}: {law.formula()}",
                 f"{mm1_name:<31}{ref.formula()}"]
        if slope_ci[0] is not None:
            verdict = "excludes 0" if slope_ci[1] < 0 or slope_ci[0] > 0 else "INCLUDES 0: no clear trend"
            lines.append(f"slope 95% CI [{slope_ci[0]:+.3f}, {slope_ci[1]:+.3f}] {verdict}; "
                         f"MM1's {mm1_slope:+.4f} is {'inside' if slope_ci[0] <= mm1_slope <= slope_ci[1] else 'outside'} it")
        backtest = law.backtest or {}
        if backtest.get("rows"):
            lines.append(f"leave-one-{law.group_kind[:-1]}-out backtest: mean |error| {backtest['mean_abs_error_log_lr']:.3f} in ln lr "
                         f"(x{math.exp(backtest['mean_abs_error_log_lr']):.2f}), worst x{backtest['max_ratio']:.2f}")
        if self.table:
            lines.append(lr_table.peak_lr_table(self.table).rstrip("\n"))
        lines.append("files:")
        lines += [f"  {label + ':':<32} {path}" for label, path in self.files.items()]
        return "\n".join(lines)


def summarize(sweep_dir: str | Path, fit_dir: str | Path | None = None) -> SweepSummary:
    """The summary of ``sweep_dir`` and its fit in ``fit_dir`` (None: SWEEP_DIR/fit)."""
    sweep_dir = Path(sweep_dir)
    fit_dir = Path(fit_dir) if fit_dir is not None else sweep_dir / "fit"
    for name in ("fit.json", "lr_table.json"):
        if not (fit_dir / name).exists():
            raise ConfigError(f"no {name} in {fit_dir}: run `scaling fit {sweep_dir} --out {fit_dir}` first")
    law = FitResult.from_json(fit_dir / "fit.json")
    ref = mm1_law(law.n_convention)
    table = [{**row, "reference_lr": row["reference_lr"] if row.get("reference_lr") is not None
              else ref.predict(row["params"])} for row in records.read_json(fit_dir / "lr_table.json")]
    candidates = (("sweep (one directory per cell)", sweep_dir),
                  ("runs table", sweep_dir / "runs.csv"),
                  ("fit", fit_dir / "fit.json"),
                  ("LR table with the full recipe", fit_dir / "lr_table.md"),
                  ("loss against LR", fit_dir / "loss_vs_lr.png"),
                  ("the law and MM1's", fit_dir / "lr_law.png"))
    return SweepSummary(law=law, reference=ref, table=table,
                        files={label: path for label, path in candidates if path.exists()})
