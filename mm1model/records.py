"""Run records on disk, written atomically.

Disk is the source of truth for every run: a reader (the sweep, `scaling fit`, a notebook) must
never see a half-written file. Whole files are written to a temporary name in the same
directory, flushed, fsynced and renamed over the target (rename is atomic on POSIX). The
append-only metrics log is the one exception: each line is written with a single ``write`` and
readers drop a torn last line.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600; records are read by other users' jobs and tools, like any new file.
    os.fchmod(fd, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf; a diverged loss is stored as null (readers treat null as +inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def dumps(obj: Any) -> str:
    return json.dumps(_finite_or_none(obj), default=_json_default, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    _atomic(Path(path), lambda h: h.write(json.dumps(_finite_or_none(obj), default=_json_default,
                                                      indent=2, allow_nan=False) + "\n"))


def write_text(path: str | os.PathLike, text: str) -> None:
    _atomic(Path(path), lambda h: h.write(text))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic(Path(path), lambda h: h.write(data), mode="wb")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch

    _atomic(Path(path), lambda h: torch.save(obj, h), mode="wb")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as handle:
        return json.load(handle)


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(dumps(row) + "\n")
        handle.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete lines of a JSONL file; a torn last line (a killed writer) is dropped."""
    rows = []
    try:
        with open(path) as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break
                rows.append(json.loads(line))
    except FileNotFoundError:
        return []
    return rows


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Rewrite a whole JSONL file atomically (used to truncate a log back to a checkpoint)."""
    _atomic(Path(path), lambda h: h.write("".join(dumps(r) + "\n" for r in rows)))
