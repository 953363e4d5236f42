"""Runs tables: read from run directories and runs files, from files only.

The runs table is the contract between ``scaling sweep`` and ``scaling fit``: one row per
settled run with the columns :data:`RUN_COLUMNS`. ``loss`` is the final validation loss in nats
per token, NaN when the run diverged or failed; a diverged run ranks worse than any finite loss
(see :func:`rank_key`). ``params`` is N, the language model's non-embedding parameter count.
``steps`` and ``tokens`` are the run's horizon as it was planned (``steps x batch_size x
seq_len`` tokens, D), also for a run that diverged or failed before it: a row belongs to the
curve of its (size, batch_size, steps). ``schedule`` is the run's LR schedule (``cosine``,
``wsd``): a law holds for the schedule it was swept with. ``weight_decay`` is the run's decoupled
lambda (the recipe's timescale rule reads the sweep's lambda / lr from it). ``init`` names the
towers the run started from checkpoints (``none``, ``lm``, ``vit``, ``lm+vit``:
:attr:`mm1model.train_config.InitConfig.towers`): a law holds for the regime it was swept in.

One reader, :func:`run_row`, turns a trainer run directory (``config.json`` + ``result.json``,
as :mod:`mm1model.train` writes it) into a row. :func:`collect_runs` uses it for the cells of a
``scaling sweep`` directory (a cell is a trainer run directory plus the sweep's own files, which
decide its status); :func:`trainer_runs_table` for any tree of trainer run directories;
:func:`read_runs_file` reads a table written by :func:`write_runs` (or by hand). A run's
parametrization is named once, by :class:`Parametrization`, and :func:`single_parametrization`
is the one refusal of a table that mixes them.

Damage stays local: a cell or run directory whose files cannot be read is left out with one
warning line naming the file (``warn``, default: this module's logger, which prints it on
stderr), never an exception; an unreadable ``sweep.json`` is a ConfigError naming it.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from mm1model import records
from mm1model.config import ConfigError
from mm1model.train_config import InitConfig, decoupled_weight_decay
from scaling.cells import (DAMAGED_DIR, FINAL, CellName, CellState, DamagedRecord, cell_state, parse_cell_name,
                           read_attempts, read_record, read_result)

RUN_COLUMNS = ("size", "params", "tokens", "batch_size", "lr", "seed", "loss", "status", "steps",
               "wall_s", "path", "parametrization", "seq_len", "schedule", "weight_decay", "init")
SETTLED = ("ok", "diverged", "failed")
# What a refusal of mixed parametrizations suggests instead.
SIDE_BY_SIDE = "(`scaling compare` sets them side by side)"
LOG = logging.getLogger(__name__)
# What to do about an unreadable sweep.json.
REBUILD_SWEEP_JSON = ("restore it, or move it aside and rerun `scaling sweep` with the same settings to write "
                      "a new one (finished cells are kept)")
Warn = Callable[[str], None]


def warn_line(message: str) -> None:
    """The default ``warn``: one ``warning: ...`` line on stderr (through this module's logger)."""
    LOG.warning("warning: %s", message)


def damage_warning(state: CellState) -> str:
    """The warning line of a damaged cell: which files, why, and what the next sweep does."""
    return (f"{'; '.join(state.damaged)}: cell left out; the next `scaling sweep` moves the file(s) into "
            f"{state.path / DAMAGED_DIR}/ and runs the cell again")


def rank_key(status: str, loss: float | None) -> float:
    """Sort key for choosing the best LR: the loss when ok, +inf otherwise (diverged is worst)."""
    if status == "ok" and loss is not None and math.isfinite(loss):
        return float(loss)
    return math.inf


# ------------------------------------------------------------------------- parametrizations
@dataclasses.dataclass(frozen=True)
class Parametrization:
    """A run's parametrization, from the model overrides of its TrainConfig (absent = sp)."""

    name: str = "sp"
    base_size: str | None = None
    alpha: float = 1.0

    @classmethod
    def of(cls, model: Mapping[str, Any]) -> "Parametrization":
        alpha = model.get("alpha")
        return cls(name=model.get("parametrization") or "sp", base_size=model.get("base_size"),
                   alpha=1.0 if alpha is None else float(alpha))

    @property
    def label(self) -> str:
        """``sp``, or e.g. ``mup(base=w32)`` / ``completep(base=d2, alpha=0.5)``: everything that
        moves the optimal LR, so runs fitted as one law must share it (runs.csv's column)."""
        if self.name == "sp":
            return self.name
        parts = [f"base={self.base_size}"]
        if self.name == "completep":
            parts.append(f"alpha={self.alpha:g}")
        return f"{self.name}({', '.join(parts)})"

    @property
    def kind(self) -> str:
        """The label without the base size: ``sp``, ``mup``, ``completep``, or ``completep_a0.5``
        for another alpha. `scaling compare` sets kinds side by side; a base is a choice within one."""
        if self.name == "completep" and self.alpha != 1.0:
            return f"completep_a{self.alpha:g}"
        return self.name


def parametrization_label(model: Mapping[str, Any]) -> str:
    """:attr:`Parametrization.label` of a TrainConfig's model overrides."""
    return Parametrization.of(model).label


def single_parametrization(runs: pd.DataFrame) -> str:
    """The one parametrization of a runs table; a mix cannot be fitted as one law and raises
    ConfigError. A table that knows each run's kind and base size (the ``label`` and
    ``base_size`` columns of :func:`scaling.compare.load_runs`) is checked kind first, then base,
    so the error names what differs, and the kind is returned; a table with the ``parametrization``
    column alone (runs files) is checked on those labels, and the label returned. No column: sp."""
    if "label" in runs and "base_size" in runs:
        kinds = sorted(set(runs["label"]))
        if len(kinds) > 1:
            raise ConfigError(f"the runs mix parametrizations {', '.join(kinds)}: fit one at a time {SIDE_BY_SIDE}")
        bases = sorted({str(b) for b in runs["base_size"] if isinstance(b, str)})
        if len(bases) > 1:
            raise ConfigError(f"the {kinds[0]} runs mix base sizes {', '.join(bases)}: fit one base at a time")
        return kinds[0] if kinds else "sp"
    labels = sorted(map(str, runs["parametrization"].dropna().unique())) if "parametrization" in runs else []
    if len(labels) > 1:
        raise ConfigError(f"the runs mix parametrizations ({', '.join(labels)}): one law per parametrization; "
                          f"fit them one at a time {SIDE_BY_SIDE}")
    return labels[0] if labels else "sp"


# ------------------------------------------------------------------------- run directories
def _weight_decay(config: Mapping[str, Any], lr: float | None) -> float | None:
    """The run's decoupled lambda: its config's, or the trainer's default (MM1's ratio x peak LR,
    :func:`mm1model.train_config.resolve`) where the config leaves it unset."""
    value = (config.get("optimizer") or {}).get("weight_decay")
    if value is None and not isinstance(lr, (int, float)):
        return None
    return float(decoupled_weight_decay(value, lr))


def run_row(run_dir: str | Path, config: Mapping[str, Any] | None = None,
            planned: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One runs-table row (:data:`RUN_COLUMNS` plus ``params_lm_total``) of a trainer run
    directory: its ``result.json`` read with its TrainConfig dict, ``config`` (None: the
    directory's ``config.json``). ``planned``: what a sweep planned for the run's size
    (``params``, ``tokens``, ``batch_size``, ``seq_len``), used where neither records it. A run without a
    result.json (it failed before writing one) keeps its config's values; ``status`` is then the
    caller's to decide (a sweep reads it from its cells' attempts)."""
    run_dir = Path(run_dir)
    result = read_result(run_dir) or {}
    if config is None:
        config = read_record(run_dir / "config.json", dict, {})
    planned = planned or {}
    params = result.get("params")
    if not isinstance(params, (int, float)):
        params = planned.get("params")
    batch_size = config.get("batch_size", result.get("batch_size", planned.get("batch_size")))
    seq_len = (config.get("data") or {}).get("seq_len", result.get("seq_len", planned.get("seq_len")))
    steps = config.get("steps") or result.get("steps")
    # the planned horizon, a diverged or failed run's too (its result counts the steps it made)
    tokens = (int(steps) * int(batch_size) * int(seq_len) if steps and batch_size and seq_len
              else int(result.get("tokens") or planned.get("tokens") or 0))
    status = result.get("status", "ok")
    loss = result.get("final_val_loss") if status == "ok" else None  # a number beside diverged is no result
    return {
        "size": config.get("size", result.get("size")),
        "params": int(params) if params is not None else None,
        "tokens": tokens,
        "batch_size": int(batch_size or 0),
        "lr": result.get("lr", config.get("lr")),
        "seed": config.get("seed", result.get("seed")),
        "loss": float(loss) if loss is not None else math.nan,
        "status": status,
        "steps": int(steps or 0),
        "wall_s": result.get("wall_s"),
        "path": str(run_dir.resolve()),
        "parametrization": parametrization_label(config.get("model") or {}),
        "seq_len": int(seq_len) if seq_len else None,
        "schedule": (config.get("optimizer") or {}).get("schedule", result.get("schedule")),
        "weight_decay": _weight_decay(config, result.get("lr", config.get("lr"))),
        "init": InitConfig(lm=(config.get("init") or {}).get("lm"), vit=(config.get("init") or {}).get("vit")).towers,
        # The trainer records every count in config.json; --n-convention total reads this one.
        "params_lm_total": (config.get("param_counts") or {}).get("params_lm_total"),
    }


def trainer_runs_table(root: str | Path, warn: Warn | None = None) -> pd.DataFrame:
    """The runs table of a tree of trainer run directories: one :func:`run_row` per
    ``result.json`` found below ``root`` (files moved into a ``damaged/`` folder are not runs; a
    run whose files cannot be read is left out with a warning)."""
    root = Path(root)
    warn = warn or warn_line
    rows = []
    for path in sorted(root.rglob("result.json")):
        if DAMAGED_DIR in path.relative_to(root).parts[:-1]:
            continue
        try:
            rows.append(run_row(path.parent))
        except DamagedRecord as err:
            warn(f"{err}: run left out")
    if not rows:
        raise ConfigError(f"no runs under {root} (looked for */result.json)")
    return pd.DataFrame(rows)


def read_runs_dir(path: str | Path, warn: Warn | None = None) -> pd.DataFrame:
    """The runs table of a directory: a `scaling sweep` directory (it has sweep.json) by
    :func:`collect_runs`, any other by :func:`trainer_runs_table`."""
    path = Path(path)
    return collect_runs(path, warn) if (path / "sweep.json").exists() else trainer_runs_table(path, warn)


def read_runs_file(path: str | Path) -> pd.DataFrame:
    """A runs table from a CSV, Parquet or JSONL file (by its suffix); a ConfigError naming the
    file when it cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pd.DataFrame(records.read_jsonl(path))
    except (ValueError, OSError) as err:
        raise ConfigError(f"cannot read runs table {path}: {str(err).splitlines()[0]}") from None
    raise ConfigError(f"unknown runs table format {path.name}; use .csv, .parquet or .jsonl")


# ------------------------------------------------------------------------- sweep directories
def read_sweep_meta(sweep_dir: str | Path) -> dict[str, Any]:
    """A sweep directory's ``sweep.json``; a ConfigError naming it when there is none or it
    cannot be read (its cells are untouched)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"no sweep directory at {sweep_dir}")
    try:
        meta = read_record(sweep_dir / "sweep.json")
    except FileNotFoundError:
        raise ConfigError(f"{sweep_dir} is not a sweep directory (no sweep.json)") from None
    except DamagedRecord as err:
        raise ConfigError(f"{err}: {REBUILD_SWEEP_JSON}") from None
    return meta


def _cell_key(path: Path, order: dict[str, int]) -> tuple:
    # the directory's names say where a cell belongs (its cell.json may be damaged)
    size = path.parent.name
    named = parse_cell_name(path.name) or CellName(lr=math.inf, seed=0)
    return order.get(size, len(order)), size, named.sort_key, path.name


def cell_dirs(sweep_dir: str | Path) -> list[Path]:
    """Every cell directory of a sweep, in a stable order (size as listed in sweep.json, lr,
    batch, horizon, seed)."""
    sweep_dir = Path(sweep_dir)
    meta = read_sweep_meta(sweep_dir)
    order = {size: i for i, size in enumerate(meta.get("sizes", {}))}
    found = [p.parent for p in sweep_dir.glob("*/*/cell.json")]
    keys = {p: _cell_key(p, order) for p in found}
    return sorted(found, key=lambda p: keys[p])


def cell_states(sweep_dir: str | Path, warn: Warn | None = None) -> list[CellState]:
    """The state of every cell of a sweep; each damaged one is also named through ``warn``."""
    states = [cell_state(p) for p in cell_dirs(sweep_dir)]
    for state in states:
        if state.status == "damaged":
            (warn or warn_line)(damage_warning(state))
    return states


def collect_runs(sweep_dir: str | Path, warn: Warn | None = None) -> pd.DataFrame:
    """The runs table of a sweep: one :func:`run_row` per settled cell (ok, diverged or failed),
    its identity and status as the cell's own files say (a failed cell may have no result.json).

    Cells still pending or running are left out; a rerun of the sweep fills them in. So are
    damaged cells, each named through ``warn``.
    """
    sweep_dir = Path(sweep_dir)
    meta = read_sweep_meta(sweep_dir)
    rows = []
    for state in cell_states(sweep_dir, warn):
        if state.status not in SETTLED:
            continue
        try:
            train = read_record(state.path / "cell.json")["train"]
            row = run_row(state.path, train, planned=meta["sizes"].get(state.size, {}))
            attempts = read_attempts(state.path)
        except (DamagedRecord, FileNotFoundError) as err:  # torn since cell_state read it
            (warn or warn_line)(f"{err}: cell left out")
            continue
        if row["wall_s"] is None:  # the trainer never finished: its attempts' time is the cost
            row["wall_s"] = sum(a.get("wall_s") or 0.0 for a in attempts)
        rows.append({**row, "size": state.size, "lr": state.lr, "seed": state.seed, "status": state.status,
                     "wall_s": float(row["wall_s"])})
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def write_runs(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write a runs table as CSV or Parquet (by the file's suffix), atomically."""
    out = Path(out)
    if out.suffix == ".csv":
        records.write_text(out, frame.to_csv(index=False))
    elif out.suffix == ".parquet":
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        records.write_bytes(out, buffer.getvalue())
    else:
        raise ConfigError(f"--out must end in .csv or .parquet, got {out.name}")
    return out


@dataclasses.dataclass(frozen=True)
class SizeStatus:
    """Counts of one size's cells and its best LR so far (None until a cell finished ok).
    ``pending`` includes interrupted and damaged cells (a rerun runs them); ``damaged`` counts
    the latter apart."""

    size: str
    total: int
    ok: int
    running: int
    failed: int
    diverged: int
    pending: int
    best_lr: float | None
    best_loss: float | None
    damaged: int = 0
    batch_size: int | None = None
    steps: int | None = None


def size_status(states: list[CellState]) -> list[SizeStatus]:
    """Per size, in the order of ``states``: the counts of :class:`SizeStatus` and the best LR;
    per (size, batch, horizon) curve for a size that has several (``batch_size`` and ``steps``
    set), since each curve has its own best LR."""
    by_size: dict[str, list[CellState]] = {}
    for state in states:
        by_size.setdefault(state.size, []).append(state)
    groups: list[tuple[str, int | None, int | None, list[CellState]]] = []
    for size, group in by_size.items():
        curves: dict[tuple[int | None, int | None], list[CellState]] = {}
        for state in group:
            curves.setdefault((state.batch_size, state.steps), []).append(state)
        if len(curves) == 1:
            groups.append((size, None, None, group))
        else:
            groups += [(size, b, t, g) for (b, t), g in sorted(curves.items(), key=lambda kv: (kv[0][0] or 0,
                                                                                              kv[0][1] or 0))]
    out = []
    for size, batch, steps, group in groups:
        count = {s: sum(1 for c in group if c.status == s) for s in
                 ("ok", "running", "failed", "diverged", "pending", "interrupted", "damaged")}
        best = min(group, key=lambda c: rank_key(c.status, c.loss))
        has_best = math.isfinite(rank_key(best.status, best.loss))
        out.append(SizeStatus(size=size, total=len(group), ok=count["ok"], running=count["running"],
                              failed=count["failed"], diverged=count["diverged"],
                              pending=count["pending"] + count["interrupted"] + count["damaged"],
                              best_lr=best.lr if has_best else None,
                              best_loss=best.loss if has_best else None, damaged=count["damaged"],
                              batch_size=batch, steps=steps))
    return out


def sweep_status(sweep_dir: str | Path, warn: Warn | None = None) -> list[SizeStatus]:
    """Per size: cells done / running / failed / diverged / pending and the best LR so far.

    ``pending`` includes interrupted cells (a rerun resumes them from their checkpoint) and
    damaged ones (named through ``warn``). Reads files only; a cell counts as running while a
    live process holds its lock.
    """
    return size_status(cell_states(sweep_dir, warn))


def disk_bytes(path: str | Path) -> int:
    """Bytes of every file under ``path`` (symbolic links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # removed while we walked (a pruned checkpoint)
                continue
    return total


def format_bytes(n_bytes: float) -> str:
    """``86.2 MB``: decimal units (kB = 1000 B), three significant digits."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n_bytes) < 1000 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.3g} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``45s``, ``3m20s``, ``2h05m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


LEFT = ("running", "pending", "interrupted", "damaged")


def sweep_eta(states: list[CellState], parallel: int) -> tuple[float | None, int]:
    """(seconds until every cell left is done, cells left): each cell left (running, pending,
    interrupted, damaged) takes the mean wall time of the finished cells of its (size, batch,
    horizon), else of its size, else of all finished cells, ``parallel`` at a time. None while
    no cell has finished."""
    left = [st for st in states if st.status in LEFT]
    walls: dict[Any, list[float]] = {}
    for st in states:
        if st.status in FINAL and st.wall_s is not None:
            walls.setdefault(st.size, []).append(float(st.wall_s))
            walls.setdefault((st.size, st.batch_size, st.steps), []).append(float(st.wall_s))
    every = [w for key, ws in walls.items() if isinstance(key, str) for w in ws]
    if not left:
        return 0.0, 0
    if not every:
        return None, len(left)

    def mean(st: CellState) -> float:
        ws = walls.get((st.size, st.batch_size, st.steps)) or walls.get(st.size) or every
        return sum(ws) / len(ws)

    work = sum(mean(st) for st in left)
    return work / max(1, min(parallel, len(left))), len(left)


def format_status(rows: list[SizeStatus]) -> str:
    """The table `scaling status` prints (with batch and steps columns when a size has several curves)."""
    curves = any(r.batch_size is not None or r.steps is not None for r in rows)

    def curve(batch: Any, steps: Any) -> str:
        return f" {batch if batch is not None else '-':>5} {steps if steps is not None else '-':>6}" if curves else ""

    lines = [f"{'size':>6}{curve('batch', 'steps')} {'done':>5} {'run':>4} {'fail':>4} {'div':>4} {'wait':>4} "
             f"{'total':>5}  {'best lr':>9} {'loss':>7}"]
    for r in rows:
        best = f"{r.best_lr:9.2e} {r.best_loss:7.4f}" if r.best_lr is not None else f"{'-':>9} {'-':>7}"
        lines.append(f"{r.size:>6}{curve(r.batch_size, r.steps)} {r.ok:>5} {r.running:>4} {r.failed:>4} "
                     f"{r.diverged:>4} {r.pending:>4} {r.total:>5}  {best}")
    return "\n".join(lines)
