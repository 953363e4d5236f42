"""Read a sweep directory into a runs table and a status summary, from files only.

The runs table is the contract between ``scaling sweep`` and ``scaling fit``: one row per
settled run with the columns :data:`RUN_COLUMNS`. ``loss`` is the final validation loss in nats
per token, NaN when the run diverged or failed; a diverged run ranks worse than any finite loss
(see :func:`rank_key`). ``params`` is N, the language model's non-embedding parameter count.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from mm1model import records
from mm1model.config import ConfigError
from scaling.cells import CellState, cell_state, read_attempts, read_result

RUN_COLUMNS = ("size", "params", "tokens", "batch_size", "lr", "seed", "loss", "status", "steps",
               "wall_s", "path", "parametrization")
SETTLED = ("ok", "diverged", "failed")


def rank_key(status: str, loss: float | None) -> float:
    """Sort key for choosing the best LR: the loss when ok, +inf otherwise (diverged is worst)."""
    if status == "ok" and loss is not None and math.isfinite(loss):
        return float(loss)
    return math.inf


def _sweep_meta(sweep_dir: Path) -> dict:
    if not sweep_dir.is_dir():
        raise ConfigError(f"no sweep directory at {sweep_dir}")
    try:
        return records.read_json(sweep_dir / "sweep.json")
    except FileNotFoundError:
        raise ConfigError(f"{sweep_dir} is not a sweep directory (no sweep.json)") from None


def cell_dirs(sweep_dir: str | Path) -> list[Path]:
    """Every cell directory of a sweep, in a stable order (size as listed in sweep.json, lr, seed)."""
    sweep_dir = Path(sweep_dir)
    meta = _sweep_meta(sweep_dir)
    order = {size: i for i, size in enumerate(meta.get("sizes", {}))}
    found = [p.parent for p in sweep_dir.glob("*/*/cell.json")]
    states = {p: records.read_json(p / "cell.json") for p in found}
    return sorted(found, key=lambda p: (order.get(states[p]["size"], len(order)), states[p]["size"],
                                        float(states[p]["lr"]), int(states[p]["seed"])))


def cell_states(sweep_dir: str | Path) -> list[CellState]:
    return [cell_state(p) for p in cell_dirs(sweep_dir)]


def parametrization_label(model: dict) -> str:
    """``sp``, or e.g. ``mup(base=w32)`` / ``completep(base=d2, alpha=0.5)``: the model overrides
    that change where the optimal LR sits, so runs fitted as one law must share it."""
    name = model.get("parametrization") or "sp"
    if name == "sp":
        return name
    parts = [f"base={model.get('base_size')}"]
    if name == "completep":
        parts.append(f"alpha={float(model.get('alpha') or 1.0):g}")
    return f"{name}({', '.join(parts)})"


def collect_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """The runs table of a sweep: one row per settled cell (ok, diverged or failed).

    Cells still pending or running are left out; a rerun of the sweep fills them in.
    """
    sweep_dir = Path(sweep_dir)
    meta = _sweep_meta(sweep_dir)
    rows = []
    for state in cell_states(sweep_dir):
        if state.status not in SETTLED:
            continue
        cell = records.read_json(state.path / "cell.json")
        train = cell["train"]
        result = read_result(state.path) or {}
        planned = meta["sizes"].get(state.size, {})
        params = result.get("params")
        if not isinstance(params, (int, float)):
            params = planned.get("params")
        wall_s = result.get("wall_s")
        if wall_s is None:
            wall_s = sum(a.get("wall_s") or 0.0 for a in read_attempts(state.path))
        rows.append({
            "size": state.size,
            "params": int(params) if params is not None else None,
            "tokens": int(result.get("tokens") or planned.get("tokens") or 0),
            "batch_size": int(train.get("batch_size", planned.get("batch_size", 0))),
            "lr": state.lr,
            "seed": state.seed,
            "loss": float(state.loss) if state.loss is not None else math.nan,
            "status": state.status,
            "steps": int(result.get("steps") or train.get("steps") or 0),
            "wall_s": float(wall_s),
            "path": str(state.path.resolve()),
            "parametrization": parametrization_label(train.get("model") or {}),
        })
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def write_runs(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write a runs table as CSV or Parquet (by the file's suffix), atomically."""
    out = Path(out)
    if out.suffix == ".csv":
        records.write_text(out, frame.to_csv(index=False))
    elif out.suffix == ".parquet":
        import io

        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        records.write_bytes(out, buffer.getvalue())
    else:
        raise ConfigError(f"--out must end in .csv or .parquet, got {out.name}")
    return out


@dataclasses.dataclass(frozen=True)
class SizeStatus:
    """Counts of one size's cells and its best LR so far (None until a cell finished ok)."""

    size: str
    total: int
    ok: int
    running: int
    failed: int
    diverged: int
    pending: int
    best_lr: float | None
    best_loss: float | None


def sweep_status(sweep_dir: str | Path) -> list[SizeStatus]:
    """Per size: cells done / running / failed / diverged / pending and the best LR so far.

    ``pending`` includes interrupted cells (a rerun resumes them from their checkpoint).
    Reads files only; a cell counts as running while a live process holds its lock.
    """
    by_size: dict[str, list[CellState]] = {}
    for state in cell_states(sweep_dir):
        by_size.setdefault(state.size, []).append(state)
    out = []
    for size, states in by_size.items():
        count = {s: sum(1 for c in states if c.status == s) for s in
                 ("ok", "running", "failed", "diverged", "pending", "interrupted")}
        best = min(states, key=lambda c: rank_key(c.status, c.loss))
        has_best = math.isfinite(rank_key(best.status, best.loss))
        out.append(SizeStatus(size=size, total=len(states), ok=count["ok"], running=count["running"],
                              failed=count["failed"], diverged=count["diverged"],
                              pending=count["pending"] + count["interrupted"],
                              best_lr=best.lr if has_best else None,
                              best_loss=best.loss if has_best else None))
    return out


def format_status(rows: list[SizeStatus]) -> str:
    """The table `scaling status` prints."""
    lines = [f"{'size':>6} {'done':>5} {'run':>4} {'fail':>4} {'div':>4} {'wait':>4} {'total':>5}"
             f"  {'best lr':>9} {'loss':>7}"]
    for r in rows:
        best = f"{r.best_lr:9.2e} {r.best_loss:7.4f}" if r.best_lr is not None else f"{'-':>9} {'-':>7}"
        lines.append(f"{r.size:>6} {r.ok:>5} {r.running:>4} {r.failed:>4} {r.diverged:>4} "
                     f"{r.pending:>4} {r.total:>5}  {best}")
    return "\n".join(lines)
