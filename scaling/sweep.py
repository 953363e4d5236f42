"""Learning-rate grid sweeps: one trainer run per (size, lr, seed) cell, through submitit.

A sweep is described by a :class:`SweepConfig` (a TOML file in ``sweeps/`` plus CLI flags) and
lives in one directory::

    DIR/sweep.json                      resolved config, grid per size, edge extensions
    DIR/<size>/lr=3.16e-04_seed=0/      one cell = one trainer run dir (see scaling.cells)
    DIR/.submitit/                      submitit's pickles and job logs

Disk is the source of truth: :func:`run_sweep` decides what to run from the cell files, so a
rerun of the same command skips final cells, resumes interrupted ones from their checkpoint and
retries failed ones up to ``max_retries`` times per invocation (every attempt is recorded in
the cell's ``attempts.json``). Killing the sweep process (even ``kill -9``)
loses nothing: jobs already started keep running and own their cell's lock; the rerun waits
for them instead of starting the cell twice. Ctrl-C stops only the driver in the same way:
cells already running finish, and the next run picks up the rest.

Default grid: ``points`` log-spaced LRs per size, centred on MM1's law
``eta(N) = exp(-0.4214 ln N - 0.5535)`` times ``center_factor`` and spanning ``+/- span``
decades, where N is the language model's non-embedding parameter count.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

from mm1model import records
from mm1model.counting import flops_per_token, param_counts
from mm1model.paper import mm1_peak_lr
from mm1model.sizes import get_size
from mm1model.train_config import TrainConfig, model_config
from mm1model.config import ConfigError, from_dict, to_dict
from scaling import cells
from scaling.runs import SizeStatus, rank_key, sweep_status

EXECUTORS = ("local", "slurm", "debug")
# Train settings a sweep fills in per cell; setting them in [train] would be ambiguous.
_CELL_KEYS = ("size", "seed", "run_dir")


def round_lr(lr: float) -> float:
    """LRs are kept to 3 significant digits so a cell's name and its value agree exactly."""
    return float(f"{lr:.2e}")


@dataclasses.dataclass
class SlurmConfig:
    """Resources of one SLURM job (= one cell). ``mem_gb`` None: the cluster's default."""

    partition: str | None = None
    nodes: int = 1
    tasks_per_node: int = 1  # processes per node; > 1 runs the trainer distributed (one per GPU)
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None
    timeout_min: int = 60
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()  # shell lines run before each job (module load, source a venv)


@dataclasses.dataclass
class SweepConfig:
    """A learning-rate sweep. LRs are peak LRs; ``span`` is in decades (log10) each side.

    Grid per size, first that applies: ``lrs_by_size[size]``, ``lrs`` (the same for every
    size), else ``points`` log-spaced LRs centred on ``center_factor * mm1_lr(N)``. Seeds per
    (size, lr): ``seeds_by_size[size]``, else ``seeds`` (more seeds where the seed spread is
    needed, e.g. a held-out size, without paying for them at every size).
    Budget: ``steps`` or ``tokens`` (tokens -> steps = ceil(tokens / (batch_size * seq_len))),
    else the trainer's default steps. Warmup is ``warmup_fraction`` of the steps and the cosine
    decays over all steps, unless ``train.optimizer`` sets ``warmup_steps``/``decay_steps``.
    ``train`` holds any other ``TrainConfig`` keys (batch_size, data.seq_len, optimizer.betas, ...);
    the peak LR (``optimizer.lr``) is each cell's own.
    """

    sizes: tuple[str, ...] = ()
    points: int = 7
    span: float = 1.0
    lrs: tuple[float, ...] = ()
    lrs_by_size: dict[str, Any] = dataclasses.field(default_factory=dict)
    center_factor: float = 1.0
    seeds: int = 1
    seeds_by_size: dict[str, int] = dataclasses.field(default_factory=dict)
    steps: int | None = None
    tokens: int | None = None
    warmup_fraction: float = 0.1
    max_retries: int = 2
    max_extend: int = 3
    executor: str = "local"
    max_parallel: int | None = None
    out: str | None = None
    name: str | None = None
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    slurm: SlurmConfig = dataclasses.field(default_factory=SlurmConfig)


def _read_sweep_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no sweep file {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"malformed TOML in {path}: {err}") from None
    data.setdefault("name", path.stem)
    return data


def sweep_arms(path: str | Path) -> tuple[str, ...]:
    """The arms a sweep file runs by default: its ``default_arms``, else every ``[arms.NAME]``
    table in file order; () for a plain sweep file.

    An arm is one sweep of a comparison (e.g. ``sweeps/transfer.toml``: SP and muP over widths,
    SP and CompleteP over depths): the file's top level is what the arms share, each arm's
    table adds or replaces keys (``train`` and ``train.model`` merge key by key), and arm NAME
    of a sweep whose directory is OUT runs in OUT/NAME."""
    data = _read_sweep_file(Path(path))
    arms = tuple(data.get("arms") or ())
    default = tuple(data.get("default_arms") or arms)
    unknown = [a for a in default if a not in arms]
    if unknown:
        raise ConfigError(f"default_arms names no arm of {path}: {', '.join(unknown)}")
    return default


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_sweep_config(path: str | Path | None = None, *, arm: str | None = None,
                      model: dict[str, Any] | None = None, **overrides: Any) -> SweepConfig:
    """A SweepConfig from a TOML file (optional) with ``overrides`` (flags) on top.

    Overrides that are None are ignored, so a CLI can pass every flag through. ``model`` entries
    (e.g. ``parametrization``, ``base_size``, ``alpha``) are merged into ``train.model``, the
    trainer's overrides of every size's model config. A file with arms (see :func:`sweep_arms`)
    needs ``arm``; the flags then apply on top of that arm.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = _read_sweep_file(path)
        arms = data.pop("arms", None) or {}
        data.pop("default_arms", None)
        if arm is None and arms:
            raise ConfigError(f"{path} holds arms ({', '.join(arms)}): pick one")
        if arm is not None:
            if arm not in arms:
                raise ConfigError(f"no arm {arm!r} in {path}; arms: {', '.join(arms) or 'none'}")
            data = _merge(data, arms[arm])
            data["name"] = f"{data['name']}-{arm}"
            out = overrides.pop("out", None) or data.get("out") or str(Path("runs") / path.stem)
            overrides["out"] = str(Path(out) / arm)
    elif arm is not None:
        raise ConfigError(f"arm {arm!r} needs a sweep file")
    given = {key: value for key, value in overrides.items() if value is not None}
    # a budget flag replaces the file's budget, whichever of steps/tokens the file used
    if ("steps" in given) != ("tokens" in given):
        data.pop("tokens" if "steps" in given else "steps", None)
    # a grid flag replaces the file's grid: explicit LRs beat per-size ones, points/span beat both
    if "lrs" in given:
        data.pop("lrs_by_size", None)
    elif "points" in given or "span" in given:
        data.pop("lrs_by_size", None)
        data.pop("lrs", None)
    data.update(given)
    model = {key: value for key, value in (model or {}).items() if value is not None}
    if model:
        train = dict(data.get("train") or {})
        train["model"] = {**(train.get("model") or {}), **model}
        data["train"] = train
    config = from_dict(SweepConfig, data, where=str(path) if path else "sweep")
    config.lrs_by_size = {k: tuple(v) for k, v in config.lrs_by_size.items()}
    return config


# ------------------------------------------------------------------------------------ planning
@dataclasses.dataclass(frozen=True)
class SizePlan:
    """One size of a sweep: N, MM1's LR for it, the grid and the per-cell budget."""

    size: str
    params: int
    mm1_lr: float
    lrs: tuple[float, ...]
    seeds: int
    steps: int
    tokens: int
    batch_size: int
    seq_len: int
    flops: float | None  # training FLOPs of one cell (text tokens only; images excluded)


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: where it goes, what each cell runs, how jobs are launched."""

    config: SweepConfig
    out: Path
    sizes: tuple[SizePlan, ...]
    train: dict[str, Any]  # the TrainConfig dict shared by every cell, minus size/lr/seed
    max_parallel: int

    @property
    def n_cells(self) -> int:
        return sum(len(s.lrs) * s.seeds for s in self.sizes)

    def cell_train(self, size: str, lr: float, seed: int) -> dict[str, Any]:
        return cell_train(self.train, size, lr, seed)


def cell_train(train: dict[str, Any], size: str, lr: float, seed: int) -> dict[str, Any]:
    """The TrainConfig dict of one cell: the sweep's shared ``train`` with the cell's size, peak LR and seed."""
    return {**train, "size": size, "seed": seed, "optimizer": {**train.get("optimizer", {}), "lr": lr}}


def _grid(config: SweepConfig, size: str, params: int) -> tuple[float, ...]:
    if size in config.lrs_by_size:
        lrs = config.lrs_by_size[size]
    elif config.lrs:
        lrs = config.lrs
    else:
        if config.points < 1:
            raise ConfigError(f"empty grid: points must be >= 1, got {config.points}")
        if config.span < 0:
            raise ConfigError(f"span must be >= 0 decades, got {config.span}")
        center = math.log10(config.center_factor * mm1_peak_lr(params))
        if config.points == 1:
            lrs = (10 ** center,)
        else:
            step = 2 * config.span / (config.points - 1)
            lrs = tuple(10 ** (center - config.span + i * step) for i in range(config.points))
    for lr in lrs:
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"learning rates must be positive and finite, got {lr} for {size}")
    grid = tuple(sorted({round_lr(lr) for lr in lrs}))
    if not grid:
        raise ConfigError(f"empty grid for {size}: give --lrs or --points >= 1")
    return grid


def _check_slurm() -> None:
    """Raise ConfigError unless a SLURM controller answers."""
    if shutil.which("sbatch") is None:
        raise ConfigError("--executor slurm: no SLURM here (sbatch not on PATH); "
                          "start one with scripts/slurm-start.sh or use --executor local")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=20)
    except (subprocess.TimeoutExpired, FileNotFoundError):
        raise ConfigError("--executor slurm: sinfo does not answer; is slurmctld running?") from None
    if out.returncode != 0 or "up" not in out.stdout.split():
        detail = (out.stderr.strip().splitlines() or ["no partition is up"])[-1]
        raise ConfigError(f"--executor slurm: no SLURM cluster answers ({detail})")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def plan_sweep(config: SweepConfig) -> SweepPlan:
    """Validate a config and resolve it into a plan. Writes nothing; raises ConfigError."""
    if not config.sizes:
        raise ConfigError("no sizes: give --sizes (e.g. --sizes 100K,300K) or sizes in the sweep file")
    if config.executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {config.executor!r}; valid: {', '.join(EXECUTORS)}")
    for size, seeds in {"": config.seeds, **config.seeds_by_size}.items():
        if not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(f"seeds{'_by_size.' + size if size else ''} must be an integer >= 1, got {seeds!r}")
    if config.steps is not None and config.tokens is not None:
        raise ConfigError("give steps or tokens, not both")
    for key in ("steps", "tokens"):
        value = getattr(config, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if not 0 <= config.warmup_fraction < 1:
        raise ConfigError(f"warmup_fraction must be in [0, 1), got {config.warmup_fraction}")
    if config.max_retries < 0 or config.max_extend < 0:
        raise ConfigError("max_retries and max_extend must be >= 0")
    bad = sorted(set(config.train) & set(_CELL_KEYS))
    if "lr" in (config.train.get("optimizer") or {}):
        bad.append("optimizer.lr")
    if bad:
        raise ConfigError(f"[train] may not set {', '.join(bad)}: the sweep sets them per cell")
    for key in ("lrs_by_size", "seeds_by_size"):
        unknown_sizes = sorted(set(getattr(config, key)) - set(config.sizes))
        if unknown_sizes:
            raise ConfigError(f"{key} names sizes not in the sweep: {', '.join(unknown_sizes)}")
    models = {size: get_size(size) for size in config.sizes}  # unknown size -> ConfigError

    train = dict(config.train)
    train.setdefault("threads", 1)
    probe = from_dict(TrainConfig, {**train, "size": config.sizes[0]}, where="[train]")
    batch_size, seq_len = probe.batch_size, probe.data.seq_len
    if config.tokens is not None:
        steps = math.ceil(config.tokens / (batch_size * seq_len))
    else:
        steps = config.steps if config.steps is not None else probe.steps
    train["steps"] = steps
    optimizer = dict(train.get("optimizer") or {})
    optimizer.setdefault("warmup_steps", int(round(config.warmup_fraction * steps)))
    optimizer.setdefault("decay_steps", steps)
    train["optimizer"] = optimizer
    train = to_dict(from_dict(TrainConfig, {**train, "size": config.sizes[0]}, where="[train]"))
    for key in _CELL_KEYS:
        train.pop(key, None)
    train["optimizer"].pop("lr")

    cores = _cores()
    threads = int(train.get("threads") or 1)
    if config.executor == "debug":
        max_parallel = 1
    elif config.executor == "local":
        fits = max(1, cores // threads)
        max_parallel = config.max_parallel or fits
        if max_parallel > fits:
            raise ConfigError(f"--max-parallel {max_parallel} x {threads} thread(s) exceeds the "
                              f"{cores} cores here; use at most {fits}")
    else:
        max_parallel = config.max_parallel or 16
    if max_parallel < 1:
        raise ConfigError(f"--max-parallel must be >= 1, got {max_parallel}")

    # each size's model as the trainer will build it ([train.model] overrides included), so a
    # bad override fails here, before any job starts, and N counts what is trained
    models = {size: model_config(from_dict(TrainConfig, {**train, "size": size}, where="[train]"))
              for size in models}
    tokens = steps * batch_size * seq_len
    plans = []
    for size, model in models.items():
        params = param_counts(model).params
        flops = flops_per_token(model, seq_len) * tokens
        plans.append(SizePlan(size=size, params=params, mm1_lr=mm1_peak_lr(params),
                              lrs=_grid(config, size, params), seeds=config.seeds_by_size.get(size, config.seeds),
                              steps=steps, tokens=tokens,
                              batch_size=batch_size, seq_len=seq_len, flops=flops))
    name = config.name or "sweep-" + "_".join(config.sizes)
    out = Path(config.out) if config.out else Path("runs") / name
    return SweepPlan(config=config, out=out, sizes=tuple(plans), train=train, max_parallel=max_parallel)


def describe_plan(plan: SweepPlan) -> str:
    """What `--dry-run` prints: cells, their LRs and the resources of each job."""
    c = plan.config
    lines = [f"sweep -> {plan.out}  ({plan.n_cells} cells, executor {c.executor}, "
             f"at most {plan.max_parallel} at once)"]
    first = plan.sizes[0]
    lines.append(f"budget per cell: {first.steps} steps x {first.batch_size} seqs x {first.seq_len} "
                 f"tokens = {first.tokens:.3g} tokens, warmup {plan.train['optimizer']['warmup_steps']} steps")
    if c.executor == "slurm":
        s = c.slurm
        lines.append(f"resources per job: {s.nodes} node(s) x {s.tasks_per_node} task(s), {s.gpus_per_node} GPU(s)/node, "
                     f"{s.cpus_per_task} CPU(s), mem {s.mem_gb or 'default'} GB, "
                     f"time limit {s.timeout_min} min, partition {s.partition or 'default'}")
    else:
        lines.append(f"resources per job: 1 process, {plan.train.get('threads')} thread(s)")
    for sp in plan.sizes:
        flops = f", {sp.flops:.3g} FLOPs/cell" if sp.flops else ""
        lines.append(f"{sp.size:>6}: N={sp.params:.4g}, MM1 eta(N)={sp.mm1_lr:.2e}, "
                     f"{len(sp.lrs)} LRs x {sp.seeds} seed(s){flops}")
        lines.append("        lr: " + " ".join(f"{lr:.2e}" for lr in sp.lrs))
    for sp in plan.sizes:
        for lr in sp.lrs:
            for seed in range(sp.seeds):
                lines.append(f"  cell {sp.size}/{cells.cell_name(lr, seed)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ sweep dir
def size_seeds(meta: dict[str, Any], size: str) -> int:
    """Seeds per LR of ``size`` in a sweep.json (one global count in sweeps made before
    ``seeds_by_size``)."""
    return meta["sizes"][size].get("seeds", meta.get("seeds", 1))


def _meta_train_key(train: dict[str, Any]) -> dict[str, Any]:
    """The part of the shared train config that must match for cells to be comparable."""
    return {k: v for k, v in train.items() if k not in ("threads",)}


def _prepare_dir(plan: SweepPlan) -> dict[str, Any]:
    """Create or update DIR/sweep.json and the cell directories; return sweep.json's content."""
    path = plan.out / "sweep.json"
    meta = records.read_json(path) if path.exists() else None
    if meta is not None:
        old, new = _meta_train_key(meta["train"]), _meta_train_key(json.loads(records.dumps(plan.train)))
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise ConfigError(f"{plan.out} holds a sweep with other training settings ({', '.join(diff)}); "
                              "use another --out")
    else:
        meta = {"created_at": time.time(), "train": plan.train, "sizes": {}, "extensions": []}
    meta["config"] = to_dict(plan.config)
    for sp in plan.sizes:
        entry = meta["sizes"].setdefault(sp.size, {"lrs": [], "extended": []})
        # a rerun may add seeds, never drop finished ones (older sweep.json: one global count)
        seeds = max(sp.seeds, entry.get("seeds", meta.get("seeds", 0)))
        entry.update(params=sp.params, mm1_lr=sp.mm1_lr, steps=sp.steps, tokens=sp.tokens,
                     batch_size=sp.batch_size, seq_len=sp.seq_len, seeds=seeds)
        entry["lrs"] = sorted(set(entry["lrs"]) | set(sp.lrs))
    records.write_json(path, meta)
    for size, entry in meta["sizes"].items():
        for lr in entry["lrs"] + entry["extended"]:
            for seed in range(size_seeds(meta, size)):
                cells.write_cell(plan.out / size / cells.cell_name(lr, seed), size, lr, seed,
                                 cell_train(meta["train"], size, lr, seed))
    return meta


# ------------------------------------------------------------------------------------ executors
class _DoneJob:
    """A job run to completion in-process (debug executor)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def done(self) -> bool:
        return True


def _make_executor(plan: SweepPlan):
    import submitit

    folder = plan.out / ".submitit" / plan.config.executor
    if plan.config.executor == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=7 * 24 * 60)
        return executor
    if plan.config.executor == "slurm":
        s = plan.config.slurm
        executor = submitit.SlurmExecutor(folder=folder / "%j")
        params: dict[str, Any] = dict(nodes=s.nodes, ntasks_per_node=s.tasks_per_node, cpus_per_task=s.cpus_per_task,
                                      time=s.timeout_min, array_parallelism=plan.max_parallel,
                                      job_name=f"sweep-{plan.out.name}", signal_delay_s=30)
        if s.gpus_per_node:
            params["gpus_per_node"] = s.gpus_per_node
        if s.mem_gb:
            params["mem"] = f"{int(s.mem_gb * 1024)}MB"
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(s, key):
                params[key] = getattr(s, key)
        if s.setup:
            params["setup"] = list(s.setup)
        executor.update_parameters(**params)
        return executor
    return None


# ------------------------------------------------------------------------------------ results
@dataclasses.dataclass
class SweepResult:
    """What a sweep left: its directory, per-size status, the runs table and edge extensions."""

    dir: Path
    status: list[SizeStatus]
    extensions: list[dict[str, Any]]
    gave_up: list[Path]

    @property
    def runs(self):
        """The runs table (pandas.DataFrame), read from disk now."""
        from scaling.runs import collect_runs

        return collect_runs(self.dir)


# ------------------------------------------------------------------------------------ the driver
def _edge_extension(meta: dict[str, Any], size: str, states: list[cells.CellState],
                    max_extend: int) -> tuple[float | None, str]:
    """The LR to add past an edge of ``size``'s grid, or None, and a sentence saying why."""
    entry = meta["sizes"][size]
    grid = sorted(set(entry["lrs"]) | set(entry["extended"]))
    by_lr: dict[float, list[float]] = {}
    for st in states:
        if st.status in ("ok", "diverged"):
            by_lr.setdefault(st.lr, []).append(rank_key(st.status, st.loss))
    if not by_lr:
        return None, ""
    mean = {lr: sum(v) / len(v) for lr, v in by_lr.items()}
    best = min(sorted(mean), key=lambda lr: mean[lr])
    if not math.isfinite(mean[best]):
        side = "lower"  # every LR diverged: only smaller ones can help
    elif best == grid[0] and len(grid) > 1:
        side = "lower"
    elif best == grid[-1]:
        side = "upper"
    elif best == grid[0]:
        side = "lower"
    else:
        return None, ""
    done = len(entry["extended"])
    if done >= max_extend:
        return None, (f"{size}: best lr {best:.2e} is still at the {side} edge after {done} extension(s) "
                      f"(limit {max_extend}); the optimum may lie outside the grid")
    if len(grid) > 1:
        ratio = grid[1] / grid[0] if side == "lower" else grid[-1] / grid[-2]
    else:
        ratio = 10 ** 0.5
    new = round_lr(grid[0] / ratio if side == "lower" else grid[-1] * ratio)
    return new, (f"{size}: best lr {best:.2e} is at the {side} edge of its grid; adding lr {new:.2e} "
                 f"({done + 1}/{max_extend})")


class _Progress:
    """A live bar on a terminal; one line per settled cell otherwise (logs, CI)."""

    def __init__(self, total: int, enabled: bool, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="sweep", unit="cell", file=sys.stderr, dynamic_ncols=True)
        self.total, self.done = total, 0

    def update(self, done: int, total: int, running: int, failed: int) -> None:
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(f"running {running}, failed {failed}")
        self.done = done

    def note(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            self.echo(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_sweep(config: SweepConfig | SweepPlan, *, wait: bool = True, progress: bool = True,
              echo: Callable[[str], None] = print, poll_s: float = 0.5) -> SweepResult:
    """Run (or resume) a sweep until every cell is final or out of retries.

    ``wait=False`` prepares the directory, starts the driver as a detached background process
    (its log in ``DIR/sweep.log``) and returns at once; rerunning the same call later attaches to
    nothing and simply resumes from disk. Returns a :class:`SweepResult` read from disk.
    """
    plan = config if isinstance(config, SweepPlan) else plan_sweep(config)
    if plan.config.executor == "slurm":
        _check_slurm()
    meta = _prepare_dir(plan)
    if not wait:
        _spawn_driver(plan)
        return SweepResult(dir=plan.out, status=sweep_status(plan.out), extensions=meta["extensions"],
                           gave_up=[])
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "job_id": None, "since": time.time()}
    if not cells._try_lock(plan.out, owner):
        other = cells.lock_owner(plan.out) or {}
        raise ConfigError(f"{plan.out} is being run by another sweep (pid {other.get('pid')} on "
                          f"{other.get('host')}); wait for it or kill it first")
    try:
        return _drive(plan, meta, progress=progress, echo=echo, poll_s=poll_s)
    finally:
        cells._release_lock(plan.out)


def _spawn_driver(plan: SweepPlan) -> None:
    config = dataclasses.replace(plan.config, out=str(plan.out))
    records.write_json(plan.out / "driver.json", to_dict(config))
    log = open(plan.out / "sweep.log", "ab")
    code = ("import sys; from mm1model import records; from mm1model.config import from_dict; "
            "from scaling.sweep import SweepConfig, run_sweep; "
            "run_sweep(from_dict(SweepConfig, records.read_json(sys.argv[1])), progress=False)")
    subprocess.Popen([sys.executable, "-c", code, str(plan.out / "driver.json")], stdin=subprocess.DEVNULL,
                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=os.getcwd())
    log.close()


def _drive(plan: SweepPlan, meta: dict[str, Any], *, progress: bool, echo: Callable[[str], None],
           poll_s: float) -> SweepResult:
    config = plan.config
    executor = _make_executor(plan)
    active: dict[Path, Any] = {}
    launches: dict[Path, int] = {}
    gave_up: set[Path] = set()
    settled_sizes: set[str] = set()
    job = cells.CellJob()
    bar = _Progress(total=0, enabled=progress, echo=echo)
    reported: set[Path] = set()

    def all_cells() -> list[Path]:
        out = []
        for size, entry in meta["sizes"].items():
            for lr in sorted(set(entry["lrs"]) | set(entry["extended"])):
                for seed in range(size_seeds(meta, size)):
                    out.append(plan.out / size / cells.cell_name(lr, seed))
        return out

    # larger sizes first: the longest jobs start early, which shortens the whole sweep
    size_rank = {sp.size: -sp.params for sp in plan.sizes}
    try:
        while True:
            for path, handle in list(active.items()):
                if handle.done():
                    del active[path]
            states = {p: cells.cell_state(p) for p in all_cells()}
            todo = []
            for path, st in states.items():
                if path in active or st.status in cells.FINAL or st.status == "running":
                    continue
                # the retry budget is per invocation: after fixing a cause, a rerun tries again
                if launches.get(path, 0) > config.max_retries:
                    if path not in gave_up:
                        gave_up.add(path)
                        bar.note(f"{st.size} lr={st.lr:.2e} seed={st.seed}: giving up after "
                                 f"{st.attempts} attempt(s): {st.error}")
                    continue
                todo.append(path)
            for path, st in states.items():
                if path not in reported and (st.status in cells.FINAL or path in gave_up):
                    reported.add(path)
                    loss = f" loss {st.loss:.4f}" if st.loss is not None else ""
                    if bar.bar is None:
                        bar.note(f"[{len(reported)}/{len(states)}] {st.size} lr={st.lr:.2e} "
                                 f"seed={st.seed}: {st.status if path not in gave_up else 'failed'}{loss}")
            # edge extension: once every cell of a size is settled
            for size in list(meta["sizes"]):
                size_states = [st for p, st in states.items() if st.size == size]
                settled = all(st.status in cells.FINAL or st.path in gave_up for st in size_states)
                if not settled or size in settled_sizes:
                    continue
                new, why = _edge_extension(meta, size, size_states, config.max_extend)
                if why:
                    bar.note(why)
                if new is None:
                    settled_sizes.add(size)
                    continue
                meta["sizes"][size]["extended"].append(new)
                meta["extensions"].append({"size": size, "lr": new, "reason": why, "at": time.time()})
                records.write_json(plan.out / "sweep.json", meta)
                for seed in range(size_seeds(meta, size)):
                    path = plan.out / size / cells.cell_name(new, seed)
                    cells.write_cell(path, size, new, seed, cell_train(meta["train"], size, new, seed))
                    states[path] = cells.cell_state(path)
                    todo.append(path)
            # a job counts from submission (queued) until its cell is settled
            running = sum(1 for st in states.values() if st.status == "running") + sum(
                1 for p in active if states[p].status not in (*cells.FINAL, "running"))
            done = sum(1 for st in states.values() if st.status in cells.FINAL)
            bar.update(done + len(gave_up), len(states), running, len(gave_up))
            todo.sort(key=lambda p: (size_rank.get(states[p].size, 0), states[p].lr, states[p].seed))
            if config.executor == "slurm":
                batch = todo
            elif executor is None:
                batch = todo[:1]
            else:
                batch = todo[:max(0, plan.max_parallel - running)]
            if batch:
                for path in batch:
                    launches[path] = launches.get(path, 0) + 1
                if executor is None:  # debug: in-process, one at a time
                    path = batch[0]
                    active[path] = _DoneJob(job(str(path)))
                elif config.executor == "slurm":
                    for path, handle in zip(batch, executor.map_array(job, [str(p) for p in batch])):
                        active[path] = handle
                else:
                    for path in batch:
                        active[path] = executor.submit(job, str(path))
                continue
            if running == 0 and all(st.status in cells.FINAL or p in gave_up for p, st in states.items()):
                break  # jobs still tearing down after writing their result need no wait
            if not active and running == 0:
                break
            time.sleep(poll_s)
    finally:
        bar.close()
    return SweepResult(dir=plan.out, status=sweep_status(plan.out), extensions=meta["extensions"],
                       gave_up=sorted(gave_up))
