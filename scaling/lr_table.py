"""The LR table for target sizes, as Markdown, CSV and JSON.

One row per target (:func:`table_row`): the recipe ``scaling.recipe.recipe_for`` gave under a
law, with the law's 95% prediction interval (and its bootstrap interval), and (when a reference law was shown) the
reference's peak LR beside it. Presentation only: the rows are made from recipes
:mod:`scaling.report` computed once per target; nothing here predicts. :func:`to_markdown` is
the one rendering of the table: the full recipe (lr_table.md) or its peak-LR columns
(:func:`peak_lr_table`, what ``scaling fit`` and ``scaling summary`` print).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Sequence

from scaling.recipe import Recipe

# (key, Markdown header) in column order.
COLUMNS = [
    ("target", "target"),
    ("params", "N"),
    ("peak_lr", "peak LR"),
    ("peak_lr_pi95_low", "PI95 low"),
    ("peak_lr_pi95_high", "PI95 high"),
    ("peak_lr_boot95_low", "boot95 low"),
    ("peak_lr_boot95_high", "boot95 high"),
    ("reference_lr", "MM1 LR"),
    ("min_lr", "min LR"),
    ("warmup_steps", "warmup"),
    ("decay_steps", "decay steps"),
    ("schedule", "schedule"),
    ("weight_decay", "weight decay"),
    ("weight_decay_timescale", "wd timescale (runs)"),
    ("batch_size", "batch (seq)"),
    ("batch_tokens", "batch (tokens)"),
    ("seq_len", "seq len"),
    ("max_images", "images/seq"),
    ("image_tokens", "image tokens"),
    ("grad_clip", "grad clip"),
    ("z_loss", "z-loss"),
    ("total_tokens", "total tokens"),
]
# The columns a command prints: the law's answer, without the rest of the recipe.
PEAK_LR_COLUMNS = ("target", "params", "peak_lr", "peak_lr_pi95_low", "peak_lr_pi95_high", "peak_lr_boot95_low",
                   "peak_lr_boot95_high", "reference_lr")


def table_row(r: Recipe, reference_lr: float | None = None) -> dict[str, Any]:
    """One dict with the keys of :data:`COLUMNS` for the recipe ``r`` (PI columns None when its
    law has no interval; ``reference_lr`` None without a reference law)."""
    pi, boot = r.peak_lr_pi95, r.peak_lr_bootstrap95
    return {
        "target": r.size or f"{r.params:.3g}", "params": r.params, "peak_lr": r.peak_lr,
        "peak_lr_pi95_low": pi[0] if pi else None, "peak_lr_pi95_high": pi[1] if pi else None,
        "peak_lr_boot95_low": boot[0] if boot else None, "peak_lr_boot95_high": boot[1] if boot else None,
        "reference_lr": reference_lr, "min_lr": r.min_lr, "warmup_steps": r.warmup_steps,
        "decay_steps": r.decay_steps, "schedule": f"{r.schedule} to {r.min_lr_ratio:g}x peak",
        "weight_decay": r.weight_decay, "weight_decay_timescale": r.weight_decay_timescale, "batch_size": r.batch_size, "batch_tokens": r.batch_tokens,
        "seq_len": r.seq_len, "max_images": r.max_images, "image_tokens": r.image_tokens,
        "grad_clip": r.grad_clip, "z_loss": r.z_loss, "total_tokens": r.total_tokens,
    }


def _columns(rows: list[dict[str, Any]], keys: Sequence[str] | None) -> list[tuple[str, str]]:
    # Drop columns that are empty in every row (no reference, no intervals).
    return [(k, h) for k, h in COLUMNS if (keys is None or k in keys) and any(r.get(k) is not None for r in rows)]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if value.is_integer() and abs(value) < 1e6:
            return f"{value:g}"
        return f"{value:.3g}" if 1e-2 <= abs(value) < 1e4 else f"{value:.2e}"
    if isinstance(value, int) and abs(value) >= 1_000_000_000:
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def to_markdown(rows: list[dict[str, Any]], keys: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table (3 significant figures) of the columns ``keys`` (None: all)."""
    cols = _columns(rows, keys)
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def peak_lr_table(rows: list[dict[str, Any]]) -> str:
    """:func:`to_markdown` of :data:`PEAK_LR_COLUMNS`."""
    return to_markdown(rows, PEAK_LR_COLUMNS)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV with full-precision numbers and the JSON keys as headers."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[k for k, _ in COLUMNS], lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if r.get(k) is None else r.get(k)) for k, _ in COLUMNS} for r in rows])
    return buffer.getvalue()


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2) + "\n"
