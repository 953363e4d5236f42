"""What ``scaling fit`` makes of a law: the target recipes, the LR table, the figures, the files.

:func:`run_fit` is the command as a library function: read and fit (:mod:`scaling.fit`), or
take MM1's law alone; predict each target once (:func:`predict_targets`: one
``scaling.recipe.recipe_for`` per target, the reference law's LR beside it); then write
fit.json, the LR table (:mod:`scaling.lr_table`) and the figures (:mod:`scaling.plots`) into
one directory, atomically. It returns a :class:`FitReport`, whose ``summary()`` is what the
command prints. fit.json's ``targets`` rows, the LR table's rows and the printed table all come
from the same :class:`TargetPrediction`\\ s.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mm1model import records
from mm1model.config import ConfigError
from mm1model.paper import MM1_LR_TABLE
from scaling import lr_table, plots
from scaling.fit import fit_runs, read_runs
from scaling.law import REFERENCES, FitResult, check_n_convention, mm1_law
from scaling.recipe import Recipe, recipe_for, resolve_target

# MM1's own targets: the sizes its LR table covers.
DEFAULT_TARGETS = tuple(MM1_LR_TABLE)
OUTPUT_FILES = ("fit.json", "lr_table.md", "lr_table.csv", "lr_table.json", "loss_vs_lr.png", "loss_vs_lr.svg",
                "lr_law.png", "lr_law.svg")


# --------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class TargetPrediction:
    """One target under a law: its recipe (the law's peak LR and its interval) and the
    reference law's peak LR at the same N (None without a reference)."""

    recipe: Recipe
    reference_lr: float | None = None

    def record(self) -> dict[str, Any]:
        """The target's row in fit.json: name, params, peak LR and its intervals, the horizon
        (tokens, steps), the batch and the weight decay with their origins (reference_lr with a
        reference)."""
        r = self.recipe
        row = {"name": r.size or f"{r.params:.3g}", "params": r.params, "peak_lr": r.peak_lr,
               "peak_lr_pi95": list(r.peak_lr_pi95) if r.peak_lr_pi95 else None,
               "peak_lr_bootstrap95": list(r.peak_lr_bootstrap95) if r.peak_lr_bootstrap95 else None,
               "tokens": r.total_tokens, "steps": r.steps, "batch_size": r.batch_size,
               "batch_size_pi95": list(r.batch_size_pi95) if r.batch_size_pi95 else None,
               "weight_decay": r.weight_decay, "weight_decay_rule": r.weight_decay_rule,
               "origins": {k: r.origins[k] for k in ("peak_lr", "batch_size", "steps", "weight_decay")},
               "notes": list(r.notes)}
        if self.reference_lr is not None:
            row["reference_lr"] = self.reference_lr
        return row

    def table_row(self) -> dict[str, Any]:
        """The target's row of the LR table (:func:`scaling.lr_table.table_row`)."""
        return lr_table.table_row(self.recipe, self.reference_lr)


def parse_targets(text: str | Sequence[str]) -> list[str]:
    """Targets from ``3B,7B,30B`` or ``3e9,7B``: each a size name or a raw N (checked here, so a
    bad one fails before any work)."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise ConfigError("--targets is empty; give size names or N values, e.g. 3B,7B,30B or 3e9")
    for item in items:
        resolve_target(item)
    return items


def predict_targets(law: FitResult, targets: Sequence[str | float], reference: FitResult | None = None,
                    tokens: float | None = None, weight_decay_rule: str = "mm1") -> list[TargetPrediction]:
    """One recipe per target under ``law`` (at ``tokens`` when given, see
    :func:`scaling.recipe.recipe_for`), each target's only prediction, with the reference law's
    peak LR at the recipe's N beside it."""
    recipes = [recipe_for(target, law, tokens=tokens, weight_decay_rule=weight_decay_rule) for target in targets]
    return [TargetPrediction(r, reference.predict(r.params) if reference is not None else None) for r in recipes]


def with_predictions(law: FitResult, predictions: Sequence[TargetPrediction]) -> FitResult:
    """``law`` with its ``targets`` rows (fit.json's) made from ``predictions``."""
    return dataclasses.replace(law, targets=[p.record() for p in predictions])


def with_targets(law: FitResult, targets: Sequence[str | float], reference: FitResult | None = None,
                 **recipe: Any) -> FitResult:
    """``law`` with its ``targets`` rows filled (:meth:`TargetPrediction.record`; ``recipe``:
    :func:`predict_targets`'s tokens and weight_decay_rule)."""
    return with_predictions(law, predict_targets(law, targets, reference, **recipe))


# --------------------------------------------------------------------------- the command
@dataclass
class FitReport:
    """What ``scaling fit`` made: the law (its ``targets`` filled), the reference law shown
    beside it (None unless asked for, and when the law is MM1's itself), one prediction per
    target, the directory and the files written there."""

    law: FitResult
    reference: FitResult | None
    predictions: list[TargetPrediction]
    out: Path
    files: list[Path]

    @property
    def table(self) -> list[dict[str, Any]]:
        """The LR table's rows (lr_table.{md,csv,json})."""
        return [p.table_row() for p in self.predictions]

    def summary(self) -> str:
        """The law, how it was fitted, its warnings, the targets' peak LRs and the files."""
        law = self.law
        lines = [("MM1 law (paper): " if law.source == "mm1" else "fit: ") + law.formula()]
        if law.source == "fit":
            kind = law.group_kind
            lines.append(f"  {law.n_groups} {'(N, D) cells' if kind == 'cells' else kind}, select={law.select}, features={','.join(law.features)}, "
                         f"N={law.n_convention}, {'WLS' if law.weighted else 'OLS'}"
                         + (f", R^2={law.r2:.4f}" if law.r2 is not None else ""))
            bt = law.backtest
            if bt.get("rows"):
                lines.append(f"  leave-one-{kind[:-1]}-out: mean |error| {bt['mean_abs_error_log_lr']:.3f} in ln lr, "
                             f"worst ratio x{bt['max_ratio']:.2f}")
            if self.reference is not None:
                lines.append("MM1 law (paper): " + self.reference.formula())
        lines += [f"  warning: {note}" for note in law.warnings]
        lines += [f"  recipe: {note}" for note in dict.fromkeys(n for p in self.predictions for n in p.recipe.notes)]
        lines += ["", lr_table.peak_lr_table(self.table),
                  f"full recipe table: {self.out / 'lr_table.md'} (also .csv, .json)",
                  "wrote: " + ", ".join(f.name for f in self.files) + f" in {self.out}"]
        return "\n".join(lines)


def default_out(inputs: Sequence[str | Path]) -> Path:
    """SWEEP_DIR/fit for one sweep directory, else ./fit."""
    return Path(inputs[0]) / "fit" if len(inputs) == 1 and Path(inputs[0]).is_dir() else Path("fit")


def run_fit(inputs: Sequence[str | Path], out: str | Path | None = None, select: str = "parabola",
            features: str = "params", weighted: bool = False, bootstrap: int = 1000, seed: int = 0,
            targets: str | Sequence[str] = DEFAULT_TARGETS, reference: str | None = None,
            n_convention: str = "non_embedding", tokens: float | None = None,
            weight_decay_rule: str = "mm1", **fit_options: Any) -> FitReport:
    """Everything ``scaling fit`` does: read, fit, predict the targets, write into ``out``
    (None: :func:`default_out`).

    With no ``inputs`` and ``reference="mm1"`` the law is MM1's. The fit's options are
    :func:`scaling.fit.fit_runs`'s (``fit_options`` passes the rest of them through); ``tokens``
    and ``weight_decay_rule`` say which recipe each target gets (:func:`scaling.recipe.recipe_for`); bad input of any kind is a ConfigError raised before a
    file is written (see :func:`write_fit`).
    """
    if reference is not None and reference not in REFERENCES:
        raise ConfigError(f"unknown --reference {reference!r}; valid: {', '.join(REFERENCES)}")
    if not inputs and reference is None:
        raise ConfigError("no input: give a sweep directory or runs tables, or --reference mm1")
    check_n_convention(n_convention, "--n-convention")
    targets = parse_targets(targets)
    out = Path(out) if out is not None else default_out(inputs)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    mm1 = mm1_law(n_convention)
    if inputs:
        runs = read_runs(inputs, n_convention)
        law = fit_runs(runs, select, features, weighted, bootstrap, seed, n_convention, **fit_options)
        shown = mm1 if reference else None
    else:
        law, shown = mm1, None
    predictions = predict_targets(law, targets, shown, tokens, weight_decay_rule)
    law = with_predictions(law, predictions)
    files = write_fit(out, law, [p.table_row() for p in predictions], figure_reference=mm1)
    return FitReport(law=law, reference=shown, predictions=predictions, out=out, files=files)


def write_fit(out: str | Path, law: FitResult, table: list[dict[str, Any]],
              figure_reference: FitResult | None = None) -> list[Path]:
    """Write a fit's files into ``out``: fit.json, lr_table.{md,csv,json} of ``table``,
    loss_vs_lr.{png,svg} when the law has optima, lr_law.{png,svg} (with ``figure_reference``'s
    line). They are written to a temporary directory beside ``out`` and moved in only when all
    exist, so an error leaves ``out`` as it was; a file of an earlier fit that this one does not
    make is removed. Returns the files written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        law.save(tmp / "fit.json")
        records.write_text(tmp / "lr_table.md", lr_table.to_markdown(table))
        records.write_text(tmp / "lr_table.csv", lr_table.to_csv(table))
        records.write_text(tmp / "lr_table.json", lr_table.to_json(table))
        if law.optima:
            plots.loss_vs_lr(law, tmp / "loss_vs_lr")
        plots.lr_law(law, tmp / "lr_law", reference=figure_reference)
        names = sorted(p.name for p in tmp.iterdir())
        out.mkdir(exist_ok=True)
        for name in names:
            os.replace(tmp / name, out / name)  # atomic per file
        for name in set(OUTPUT_FILES) - set(names):  # a figure of an earlier fit is not this fit's
            (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out / n for n in names]
