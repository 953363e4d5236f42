"""Planning a learning-rate sweep: its typed config, the grid per size, the budget per cell and
the resources per job. Pure: nothing here writes a file or starts a job (:mod:`scaling.sweep`
drives a plan).

A sweep is a :class:`SweepConfig`, read by :func:`load_sweep_config` from a TOML file in
``sweeps/`` (optionally one of its arms, see :func:`sweep_arms`) with CLI flags on top;
:func:`plan_sweep` validates it into a :class:`SweepPlan` (ConfigError on bad input) and
:func:`describe_plan` is what ``--dry-run`` prints.

Default grid: ``points`` log-spaced LRs per size, centred on MM1's law
``eta(N) = exp(-0.4214 ln N - 0.5535)`` times ``center_factor`` and spanning ``+/- span``
decades, where N is the language model's non-embedding parameter count.

A cell is (size, lr, batch, horizon, seed): besides the LR grid a sweep may vary the global
batch (``batch_sizes``) and the horizon (``horizons``) per size; one (size, batch) with its
horizons is a :class:`CurvePlan`, and :func:`size_cells` lists the cells of a size
(:class:`CellSpec`), the same way for a plan and for a sweep directory's ``sweep.json``. Under
the WSD schedule the longest horizon of a (size, lr, batch, seed) is a trunk and every shorter
one a branch that starts from the trunk's checkpoint at its own cooldown start.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from pathlib import Path
from typing import Any, Callable

from mm1model.config import ConfigError, from_dict, to_dict
from mm1model.counting import flops_per_token, param_counts
from mm1model.model import MM1Config
from mm1model.paper import mm1_peak_lr
from mm1model.sizes import default_shape, get_size
from mm1model.train_config import TrainConfig, model_config
from scaling.cells import cell_name
from scaling.executors import check_executor, is_replay
from scaling.plan import GB, PlanConfig, host_memory_bytes, loader_workers, make_plan, slurm_parameters

# A local cell runs until it ends: submitit's default limit (2 min) would kill most of them.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
# Train settings a sweep fills in per cell; setting them in [train] would be ambiguous.
_CELL_KEYS = ("size", "seed", "run_dir", "save_steps", "init_from")
# Train settings that differ between the cells of one sweep (batch and horizon axes): each cell's
# own cell.json holds them, sweep.json's shared ``train`` only a reference cell's (see SweepPlan.train).
CELL_TRAIN_KEYS = ("size", "seed", "batch_size", "steps", "save_steps", "init_from", "optimizer.lr",
                   "optimizer.warmup_steps", "optimizer.decay_steps")
HORIZON_UNITS = ("steps", "tokens")
# |corr(ln N, ln D)| over a design's cells above which a law in N and D cannot tell them apart.
COLLINEAR_CORR = 0.95


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
    gpu: str = "H100"  # the GPU model the memory check plans for (scaling.plan's table), or give gpu_mem_gb
    gpu_mem_gb: float | None = None
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
    Batch (global, in sequences) per size: ``batch_sizes_by_size[size]``, ``batch_sizes``, else
    ``train.batch_size`` (one batch, as before the batch axis).
    Horizon per size: ``horizons_by_size[size]``, ``horizons`` (in ``horizon_unit``: ``steps``,
    or ``tokens`` -> steps = ceil(tokens / (batch * seq_len)) per batch), else ``steps`` or
    ``tokens`` (one horizon), else the trainer's default steps.
    Warmup: ``warmup_fraction`` of the SHORTEST horizon of each (size, batch), the same for all
    its horizons (a WSD branch is its trunk up to the branch's cooldown start, so it must warm up
    as the trunk did; under cosine it leaves the horizon the only difference between a (size,
    batch)'s curves), unless ``train.optimizer`` sets ``warmup_steps``. Each cell decays over
    its own steps (``decay_steps`` = the cell's steps) unless ``train.optimizer`` sets
    ``decay_steps``, which a sweep of several horizons refuses.
    ``memory_gb``: memory the cells on this machine may share (None: what is available now; see
    :func:`check_memory`). ``keep_checkpoints``: keep each final cell's newest checkpoint (by
    default a cell's checkpoints are removed once it is final).
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
    batch_sizes: tuple[int, ...] = ()
    batch_sizes_by_size: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    horizons: tuple[int, ...] = ()
    horizons_by_size: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    horizon_unit: str = "steps"
    warmup_fraction: float = 0.1
    max_retries: int = 2
    max_extend: int = 3
    mode: str = "fixed"  # or "adaptive": scaling.adaptive places each size's LRs as results arrive
    target_halfwidth: float = 0.15  # adaptive: stop a size at this 95% half-width of ln lr*
    max_points: int = 9  # adaptive: the most LRs per size
    adaptive_bootstrap: int = 200  # adaptive: bootstrap draws of each size's interval
    executor: str = "local"  # local | slurm | debug | replay:RUNS.csv (scaling.replay)
    replay_delay_s: float = 0.0  # seconds each replayed cell takes (0: none)
    max_parallel: int | None = None
    memory_gb: float | None = None
    keep_checkpoints: bool = False
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
                      model: dict[str, Any] | None = None, shape: dict[str, Any] | None = None,
                      init: dict[str, Any] | None = None, **overrides: Any) -> SweepConfig:
    """A SweepConfig from a TOML file (optional) with ``overrides`` (flags) on top.

    Overrides that are None are ignored, so a CLI can pass every flag through. ``model`` entries
    (e.g. ``parametrization``, ``base_size``, ``alpha``) are merged into ``train.model``, the
    trainer's overrides of every size's model config. ``shape`` (``batch_size``,
    ``micro_batch_size``, ``seq_len``: the flags of the same names) sets the trainer's batch shape
    on top of the file's ``[train]``. ``init`` (``lm``, ``vit``, ``freeze_lm``, ``freeze_vit``: the
    flags ``--init-lm`` ...) is merged into ``train.init``: every cell starts from those checkpoints,
    so a sweep of pretrained starts has one size per checkpoint (one size, or one arm per size).
    A file with arms (see :func:`sweep_arms`) needs ``arm``; the flags then apply on top of that arm.
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
    # a budget flag replaces the file's budget, whichever of steps/tokens/horizons the file used
    if ("steps" in given) != ("tokens" in given):
        data.pop("tokens" if "steps" in given else "steps", None)
    if "steps" in given or "tokens" in given:
        data.pop("horizons", None)
        data.pop("horizons_by_size", None)
    if "horizons" in given:
        for key in ("horizons_by_size", "steps", "tokens"):
            data.pop(key, None)
    # a batch flag replaces the file's batch axis: --batch-size one batch, --batch-sizes a list
    if "batch_sizes" in given or (shape or {}).get("batch_size") is not None:
        data.pop("batch_sizes_by_size", None)
        if "batch_sizes" not in given:
            data.pop("batch_sizes", None)
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
    init = {key: value for key, value in (init or {}).items() if value is not None}
    if init:
        train = dict(data.get("train") or {})
        train["init"] = {**(train.get("init") or {}), **init}
        data["train"] = train
    shape = {key: value for key, value in (shape or {}).items() if value is not None}
    if shape:
        train = dict(data.get("train") or {})
        if "seq_len" in shape:
            train["data"] = {**(train.get("data") or {}), "seq_len": shape.pop("seq_len")}
        data["train"] = {**train, **shape}
    config = from_dict(SweepConfig, data, where=str(path) if path else "sweep")
    config.lrs_by_size = {k: tuple(v) for k, v in config.lrs_by_size.items()}
    return config


# ------------------------------------------------------------------------------------ planning
@dataclasses.dataclass(frozen=True)
class CurvePlan:
    """One (size, batch) of a sweep: its horizons in steps (ascending), the warmup they share
    and, per horizon, the step a WSD branch starts from (its cooldown start; None for the trunk
    and for every straight run). ``decay_steps``: what ``[train.optimizer]`` set, or None (each
    cell decays over its own steps)."""

    batch_size: int
    horizons: tuple[int, ...]
    warmup_steps: int
    branch_steps: tuple[int | None, ...] = ()
    decay_steps: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "horizons": list(self.horizons), "warmup_steps": self.warmup_steps,
                "branch_steps": list(self.branch_steps or (None,) * len(self.horizons)),
                "decay_steps": self.decay_steps}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CurvePlan":
        horizons = tuple(int(h) for h in data["horizons"])
        return cls(batch_size=int(data["batch_size"]), horizons=horizons, warmup_steps=int(data["warmup_steps"]),
                   branch_steps=tuple(data.get("branch_steps") or (None,) * len(horizons)),
                   decay_steps=data.get("decay_steps"))


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """One cell: (size, lr, batch, horizon, seed), its directory name and its schedule lengths.

    ``role``: ``straight`` (a run of its own), ``trunk`` (a WSD run that writes checkpoints at
    ``save_steps``, its branches' starts) or ``branch`` (a WSD run to ``steps`` that starts from
    its ``trunk``'s checkpoint at ``branch_step`` and trains only its cooldown)."""

    size: str
    lr: float
    seed: int
    batch_size: int
    steps: int
    warmup_steps: int
    name: str
    decay_steps: int | None = None
    trunk: str | None = None
    branch_step: int | None = None
    save_steps: tuple[int, ...] = ()

    @property
    def role(self) -> str:
        return "branch" if self.trunk else "trunk" if self.save_steps else "straight"

    @property
    def train_steps(self) -> int:
        """Steps this cell trains itself: a branch only its cooldown."""
        return self.steps - (self.branch_step or 0)

    def record(self) -> dict[str, Any]:
        """What cell.json records of the cell besides its size, lr, seed and train (which holds
        its batch and steps): a branch's trunk and start step."""
        return {"trunk": self.trunk, "branch_step": self.branch_step} if self.trunk else {}


def name_axes(curves: dict[str, tuple[CurvePlan, ...]]) -> tuple[str, ...]:
    """The axes a sweep's cell names carry: ``bs`` when its cells have several batch sizes,
    ``steps`` when they have several horizons (in steps); () keeps the plain ``lr=.._seed=..``
    of a sweep with one of each (every sweep made before these axes)."""
    batches = {c.batch_size for cs in curves.values() for c in cs}
    steps = {h for cs in curves.values() for c in cs for h in c.horizons}
    return tuple(axis for axis, values in (("bs", batches), ("steps", steps)) if len(values) > 1)


def size_cells(size: str, lrs: tuple[float, ...] | list[float], seeds: int, curves: tuple[CurvePlan, ...],
               axes: tuple[str, ...] | list[str]) -> list[CellSpec]:
    """Every cell of one size: lrs x curves (batch x horizons) x seeds, named with ``axes``
    (:func:`name_axes`). A curve's WSD branches (``branch_steps`` not None) hang on the curve's
    longest horizon, the trunk, which saves a checkpoint at each of their starts."""
    out = []
    for lr in sorted(lrs):
        for curve in curves:
            branch_steps = curve.branch_steps or (None,) * len(curve.horizons)
            save = tuple(sorted({b for b in branch_steps if b is not None}))
            longest = max(curve.horizons)
            for seed in range(seeds):
                names = {steps: cell_name(lr, seed, curve.batch_size if "bs" in axes else None,
                                          steps if "steps" in axes else None) for steps in curve.horizons}
                for steps, branch_step in zip(curve.horizons, branch_steps):
                    common = dict(size=size, lr=lr, seed=seed, batch_size=curve.batch_size, steps=steps,
                                  warmup_steps=curve.warmup_steps, name=names[steps], decay_steps=curve.decay_steps)
                    if branch_step is not None:
                        out.append(CellSpec(**common, trunk=names[longest], branch_step=branch_step))
                    else:
                        out.append(CellSpec(**common, save_steps=save if steps == longest else ()))
    return out


def entry_curves(entry: dict[str, Any], train: dict[str, Any]) -> tuple[CurvePlan, ...]:
    """The curves of a size as its ``sweep.json`` entry records them; an entry made before the
    batch and horizon axes has one: its batch and steps, the shared train's warmup and decay."""
    if entry.get("curves"):
        return tuple(CurvePlan.from_json(curve) for curve in entry["curves"])
    optimizer = train.get("optimizer") or {}
    steps = int(entry.get("steps") or train.get("steps") or 0)
    decay = optimizer.get("decay_steps")
    return (CurvePlan(batch_size=int(entry.get("batch_size") or train.get("batch_size") or 0), horizons=(steps,),
                      warmup_steps=int(optimizer.get("warmup_steps") or 0), branch_steps=(None,),
                      decay_steps=decay if decay is not None and decay != steps else None),)


def cell_train(train: dict[str, Any], cell: CellSpec) -> dict[str, Any]:
    """The TrainConfig dict of one cell: the sweep's shared ``train`` with the cell's size, seed,
    batch, horizon (steps, warmup, decay) and peak LR; a WSD trunk's ``save_steps``. A branch's
    ``init_from`` is added when its job runs (:func:`scaling.cells.branch_init`)."""
    optimizer = {**train.get("optimizer", {}), "lr": cell.lr, "warmup_steps": cell.warmup_steps,
                 "decay_steps": cell.decay_steps or cell.steps}
    out = {**train, "size": cell.size, "seed": cell.seed, "batch_size": cell.batch_size, "steps": cell.steps,
           "optimizer": optimizer}
    if cell.save_steps:
        out["save_steps"] = list(cell.save_steps)
    return out


@dataclasses.dataclass(frozen=True)
class SizePlan:
    """One size of a sweep: N, MM1's LR for it, the grid and its curves (batch x horizons).

    ``steps``, ``tokens``, ``batch_size`` and ``flops`` are those of the size's reference cell
    (its first batch at its longest horizon; every cell's, in a sweep of one batch and one
    horizon); :meth:`SweepPlan.cells` has each cell's own."""

    size: str
    params: int
    mm1_lr: float
    lrs: tuple[float, ...]
    seeds: int
    steps: int
    tokens: int
    batch_size: int
    seq_len: int
    flops: float | None  # training FLOPs of the reference cell (text tokens only; images excluded)
    memory_gb: float | None = None  # planned peak memory of one of a cell's processes (GPU or host)
    memory_limit_gb: float | None = None  # what each such process may use (None: not checked)
    curves: tuple[CurvePlan, ...] = ()
    flops_per_token: float | None = None  # training FLOPs per text token (6N-style, attention included)


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: where it goes, what each cell runs, how jobs are launched.

    ``train``: the TrainConfig dict the cells share, minus size/lr/seed, with the batch and
    schedule lengths of the first size's reference cell (see :class:`SizePlan`); each cell's own
    are in :meth:`cell_train`. ``axes``: what cell names carry (:func:`name_axes`).
    ``warnings``: one line per flaw of the design that does not stop it (collinear N and D)."""

    config: SweepConfig
    out: Path
    sizes: tuple[SizePlan, ...]
    train: dict[str, Any]
    max_parallel: int
    axes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def cells(self) -> list[CellSpec]:
        """Every cell of the plan (edge extensions, decided while it runs, excluded)."""
        return [cell for sp in self.sizes for cell in size_cells(sp.size, sp.lrs, sp.seeds, sp.curves, self.axes)]

    @property
    def n_cells(self) -> int:
        return len(self.cells())

    def cell_train(self, cell: CellSpec) -> dict[str, Any]:
        return cell_train(self.train, cell)


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


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _positive_ints(values: Any, where: str) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"{where} must be a non-empty list of integers >= 1, got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where} must hold integers >= 1, got {value!r}")
    return tuple(sorted(set(values)))


def _size_batches(config: SweepConfig, size: str, default: int) -> tuple[int, ...]:
    if size in config.batch_sizes_by_size:
        return _positive_ints(config.batch_sizes_by_size[size], f"batch_sizes_by_size.{size}")
    if config.batch_sizes:
        return _positive_ints(config.batch_sizes, "batch_sizes")
    return (default,)


def _size_horizons(config: SweepConfig, size: str, batch: int, seq_len: int, default_steps: int) -> tuple[int, ...]:
    """The horizons of (size, batch) in steps, ascending; ConfigError for two that give the same steps."""
    if size in config.horizons_by_size:
        values, unit, where = config.horizons_by_size[size], config.horizon_unit, f"horizons_by_size.{size}"
    elif config.horizons:
        values, unit, where = config.horizons, config.horizon_unit, "horizons"
    elif config.tokens is not None:
        values, unit, where = (config.tokens,), "tokens", "tokens"
    else:
        values, unit, where = (config.steps if config.steps is not None else default_steps,), "steps", "steps"
    values = _positive_ints(values, where)
    if unit == "steps":
        return values
    steps: dict[int, int] = {}
    for tokens in values:
        n = math.ceil(tokens / (batch * seq_len))
        if n in steps:
            raise ConfigError(f"{where}: {steps[n]} and {tokens} tokens both give {n} steps at batch {batch} x "
                              f"{seq_len} tokens; drop one")
        steps[n] = tokens
    return tuple(sorted(steps))


def _check_batch(config: SweepConfig, train: dict[str, Any], size: str, batch: int) -> None:
    """A batch the trainer can split: the micro-batch (or the ranks of a SLURM job) must divide it."""
    world = config.slurm.nodes * config.slurm.tasks_per_node if config.executor == "slurm" else 1
    micro = train.get("micro_batch_size")
    if micro is not None and batch % (micro * world):
        over = f" x {world} ranks" if world > 1 else ""
        raise ConfigError(f"{size}: batch size {batch} cannot be split into micro-batches of {micro}{over}; "
                          f"use batch sizes that are multiples of {micro * world}")
    if micro is None and batch % world:
        raise ConfigError(f"{size}: batch size {batch} cannot be split over the {world} ranks of a job; "
                          f"use multiples of {world}")


def _curves(config: SweepConfig, train: dict[str, Any], probe: TrainConfig, size: str,
            cooldown_start: Callable[[int], int] | None) -> tuple[CurvePlan, ...]:
    """The (batch, horizons) curves of one size. ``cooldown_start``: a WSD run's cooldown start
    for its decay_steps (None: not WSD, no branches)."""
    user_opt = train.get("optimizer") or {}
    seq_len = probe.data.seq_len
    curves = []
    for batch in _size_batches(config, size, probe.batch_size):
        _check_batch(config, train, size, batch)
        horizons = _size_horizons(config, size, batch, seq_len, probe.steps)
        warmup = user_opt.get("warmup_steps", int(round(config.warmup_fraction * horizons[0])))
        branch_steps: tuple[int | None, ...] = (None,) * len(horizons)
        if cooldown_start is not None:
            for steps in horizons:
                start = cooldown_start(steps)
                if start < warmup:
                    raise ConfigError(f"{size} batch {batch}: the {steps}-step horizon cools down from step {start}, "
                                      f"before its warmup of {warmup} steps ends; use a longer horizon or a smaller "
                                      f"warmup_fraction or optimizer.cooldown_fraction")
            if len(horizons) > 1:
                branch_steps = tuple(cooldown_start(steps) for steps in horizons[:-1]) + (None,)
        decay = user_opt.get("decay_steps")  # one horizon only (plan_sweep refuses it with several)
        curves.append(CurvePlan(batch_size=batch, horizons=horizons, warmup_steps=warmup, branch_steps=branch_steps,
                                decay_steps=None if decay == horizons[-1] else decay))
    return tuple(curves)


def collinearity_warnings(points: list[tuple[str, float, float]]) -> tuple[str, ...]:
    """Warnings for a design meant for a law in ln N and ln D whose two features are (nearly)
    collinear. ``points``: (size, N, D) per cell, D in tokens. Each size at one horizon, the
    horizons differing across sizes (a fixed tokens-per-parameter ladder, say): ln D follows ln N
    and neither coefficient is identified. Else |corr(ln N, ln D)| over the cells above
    :data:`COLLINEAR_CORR`. A design with one size or one horizon is a one-feature law: no warning."""
    per_size: dict[str, set[float]] = {}
    for size, _, d in points:
        per_size.setdefault(size, set()).add(d)
    all_d = {d for ds in per_size.values() for d in ds}
    if len(per_size) < 2 or len(all_d) < 2:
        return ()
    if all(len(ds) == 1 for ds in per_size.values()):
        return ("each size trains at one horizon and the horizons differ across sizes: ln D follows ln N, so a "
                "law in N and D cannot separate them; give some sizes several horizons (horizons_by_size)",)
    x = [math.log(n) for _, n, _ in points]
    y = [math.log(d) for _, _, d in points]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    corr = sxy / math.sqrt(sxx * syy)
    if abs(corr) > COLLINEAR_CORR:
        return (f"ln N and ln D are nearly collinear over the cells (corr {corr:+.3f}, |corr| > {COLLINEAR_CORR}): "
                f"a law in N and D cannot separate them; vary the horizon at fixed size",)
    return ()


def plan_sweep(config: SweepConfig) -> SweepPlan:
    """Validate a config and resolve it into a plan. Writes nothing; raises ConfigError."""
    if not config.sizes:
        raise ConfigError("no sizes: give --sizes (e.g. --sizes 100K,300K) or sizes in the sweep file")
    check_executor(config.executor)
    if config.mode not in ("fixed", "adaptive"):
        raise ConfigError(f"unknown mode {config.mode!r}; valid: fixed, adaptive")
    if config.mode == "adaptive" and not (config.target_halfwidth > 0 and config.max_points >= 3):
        raise ConfigError(f"adaptive mode needs target_halfwidth > 0 and max_points >= 3, got "
                          f"{config.target_halfwidth} and {config.max_points}")
    for size, seeds in {"": config.seeds, **config.seeds_by_size}.items():
        if not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(f"seeds{'_by_size.' + size if size else ''} must be an integer >= 1, got {seeds!r}")
    if config.steps is not None and config.tokens is not None:
        raise ConfigError("give steps or tokens, not both")
    if (config.horizons or config.horizons_by_size) and (config.steps is not None or config.tokens is not None):
        raise ConfigError("give horizons (or horizons_by_size) or steps/tokens, not both")
    if config.horizon_unit not in HORIZON_UNITS:
        raise ConfigError(f"unknown horizon_unit {config.horizon_unit!r}; valid: {', '.join(HORIZON_UNITS)}")
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
    for key in ("lrs_by_size", "seeds_by_size", "batch_sizes_by_size", "horizons_by_size"):
        unknown_sizes = sorted(set(getattr(config, key)) - set(config.sizes))
        if unknown_sizes:
            raise ConfigError(f"{key} names sizes not in the sweep: {', '.join(unknown_sizes)}")
    models = {size: get_size(size) for size in config.sizes}  # unknown size -> ConfigError

    train = dict(config.train)
    train.setdefault("threads", 1)
    # a size trains at the shape of where it runs unless [train] says otherwise (sizes.default_shape):
    # the demo's 8 x 128 for a sweep of CPU sizes, MM1's 512 x 4096 for any other
    shapes = [default_shape(size) for size in config.sizes]
    default_batch, default_seq_len = max(shapes)
    train.setdefault("batch_size", default_batch)
    train["data"] = {"seq_len": default_seq_len, **(train.get("data") or {})}
    if config.executor == "slurm" and config.slurm.gpus_per_node > 0:  # a GPU cell packs its data in workers
        train["data"].setdefault("num_workers", loader_workers("cuda", config.slurm.cpus_per_task))
    # the settings every cell shares; a cell's warmup and decay are its own (checked per cell below)
    shared_opt = {k: v for k, v in (train.get("optimizer") or {}).items() if k not in ("warmup_steps", "decay_steps")}
    probe = from_dict(TrainConfig, {**train, "optimizer": shared_opt, "size": config.sizes[0]}, where="[train]")
    seq_len = probe.data.seq_len
    wsd = probe.optimizer.schedule == "wsd"

    def cooldown_start(steps: int) -> int:  # the trainer's own arithmetic, for a run decaying over `steps`
        return dataclasses.replace(probe.optimizer, warmup_steps=0, decay_steps=steps).cooldown_start

    curves = {size: _curves(config, train, probe, size, cooldown_start if wsd else None) for size in config.sizes}
    step_counts = {h for cs in curves.values() for c in cs for h in c.horizons}
    if "decay_steps" in (train.get("optimizer") or {}) and len(step_counts) > 1:
        raise ConfigError("[train.optimizer] decay_steps cannot be set in a sweep of several horizons: "
                          "each cell decays over its own steps")
    axes = name_axes(curves)
    # the shared train: the first size's reference cell (first batch, longest horizon), minus what
    # each cell sets itself; validated as the trainer will read it
    ref = curves[config.sizes[0]][0]
    reference = CellSpec(size=config.sizes[0], lr=1.0, seed=0, batch_size=ref.batch_size, steps=ref.horizons[-1],
                         warmup_steps=ref.warmup_steps, name="", decay_steps=ref.decay_steps)
    train = to_dict(from_dict(TrainConfig, cell_train(train, reference), where="[train]"))
    for key in _CELL_KEYS:
        train.pop(key, None)
    train["optimizer"].pop("lr")
    # every (size, batch, horizon) as the trainer reads it: a bad schedule fails here, before any job
    for size, cs in curves.items():
        for cell in size_cells(size, (1.0,), 1, cs, axes):
            from_dict(TrainConfig, cell_train(train, cell), where=f"[train] of {size}/{cell.name}")

    if config.max_parallel is not None and config.max_parallel < 1:
        raise ConfigError(f"--max-parallel must be >= 1, got {config.max_parallel}")
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

    # each size's model as the trainer will build it ([train.model] overrides included), so a
    # bad override fails here, before any job starts, and N counts what is trained
    models = {size: model_config(from_dict(TrainConfig, {**train, "size": size}, where="[train]"))
              for size in models}
    plans = []
    for size, model in models.items():
        params = param_counts(model).params
        per_token = flops_per_token(model, seq_len)
        first = curves[size][0]
        tokens = first.horizons[-1] * first.batch_size * seq_len
        plans.append(SizePlan(size=size, params=params, mm1_lr=mm1_peak_lr(params),
                              lrs=_grid(config, size, params), seeds=config.seeds_by_size.get(size, config.seeds),
                              steps=first.horizons[-1], tokens=tokens, batch_size=first.batch_size, seq_len=seq_len,
                              flops=per_token * tokens, curves=curves[size], flops_per_token=per_token))
    plans, max_parallel = check_memory(config, train, plans, models, max_parallel)
    name = config.name or "sweep-" + "_".join(config.sizes)
    out = Path(config.out) if config.out else Path("runs") / name
    plan = SweepPlan(config=config, out=out, sizes=tuple(plans), train=train, max_parallel=max_parallel, axes=axes)
    params = {sp.size: sp.params for sp in plans}
    points = [(c.size, params[c.size], c.steps * c.batch_size * seq_len) for c in plan.cells()]
    return dataclasses.replace(plan, warnings=collinearity_warnings(points))


def heaviest_train(train: dict[str, Any], sp: SizePlan) -> dict[str, Any]:
    """The TrainConfig dict of a size's most demanding cell (its largest batch, longest horizon),
    for the memory check and a job's time estimates."""
    curve = max(sp.curves, key=lambda c: (c.batch_size, c.horizons[-1]))
    cell = CellSpec(size=sp.size, lr=1.0, seed=0, batch_size=curve.batch_size, steps=curve.horizons[-1],
                    warmup_steps=curve.warmup_steps, name="", decay_steps=curve.decay_steps)
    out = cell_train(train, cell)
    out.pop("size")
    out.pop("seed")
    return out


# ------------------------------------------------------------------------------------ memory
# What a trainer process holds on a CPU before its model: Python, torch, the tokenizer and the
# corpus index (measured: 0.32 GB resident for a 3M cell, `python -m mm1model.bench.checkpoint
# --size 3M` less its model and optimizer state). The planner counts tensors only.
CPU_PROCESS_GB = 0.35


def host_available_gb() -> float:
    """Memory this machine can give new processes now (MemAvailable), GB."""
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GB
    return host_memory_bytes() / GB


def cell_plan_config(config: SweepConfig, train: dict[str, Any], model: MM1Config, limit_gb: float | None,
                     micro_batch_size: int | None, activation_checkpointing: bool | None) -> PlanConfig:
    """The launch planner's view of one cell of ``model`` (the size's config as the trainer builds
    it): its processes (one per task of a SLURM job, one on this machine), each with ``limit_gb``
    of memory on CPUs (a GPU's memory comes from ``[slurm] gpu`` / ``gpu_mem_gb``)."""
    s = config.slurm
    on_slurm = config.executor == "slurm"
    gpus = on_slurm and s.gpus_per_node > 0
    data = train["data"]
    images = min(int(data["max_images"]), int(data["seq_len"]) // (model.tokens_per_image + 2))
    return PlanConfig(size=model.name, model=dict(train.get("model") or {}), batch_size=int(train["batch_size"]),
                      seq_len=int(data["seq_len"]), max_images=int(data["max_images"]), images_per_sequence=images,
                      steps=int(train["steps"]), z_loss=train.get("z_loss"), nodes=s.nodes if on_slurm else 1,
                      gpus_per_node=s.tasks_per_node if on_slurm else 1, device="cuda" if gpus else "cpu",
                      gpu=s.gpu, gpu_mem_gb=s.gpu_mem_gb if gpus else limit_gb, micro_batch_size=micro_batch_size,
                      activation_checkpointing=activation_checkpointing,
                      reduce_every_micro_batch=bool(train.get("reduce_every_micro_batch", True)),
                      partition=s.partition, time=str(s.timeout_min), cpus_per_task=s.cpus_per_task)


def trainer_micro_batch(config: SweepConfig, train: dict[str, Any]) -> int:
    """The micro-batch a cell's trainer runs: the configured one, else the whole per-rank batch."""
    world = config.slurm.nodes * config.slurm.tasks_per_node if config.executor == "slurm" else 1
    return train.get("micro_batch_size") or int(train["batch_size"]) // world


def check_memory(config: SweepConfig, train: dict[str, Any], plans: list[SizePlan], models: dict[str, MM1Config],
                 max_parallel: int) -> tuple[list[SizePlan], int]:
    """Each size's peak memory per process (at its largest batch) from the planner, held against what the executor
    offers: a GPU's memory (less the planner's reserve) on SLURM with GPUs; ``slurm.mem_gb`` over
    its tasks on CPU nodes (unchecked without it); on this machine ``memory_gb`` (default: the
    memory available now) shared by the cells that run at once, whose number it also caps. A
    cell that cannot fit is refused in one line with the largest setting that does. Returns the
    plans with their memory and the (possibly lowered) parallelism."""
    s = config.slurm
    local = config.executor != "slurm"
    if is_replay(config.executor):
        return plans, max_parallel  # nothing trains: a replayed cell needs no memory
    if local:
        budget = config.memory_gb if config.memory_gb is not None else host_available_gb()
        limit = budget
    elif s.gpus_per_node:
        budget = limit = None  # the planner's GPU table (or gpu_mem_gb)
    elif s.mem_gb:
        budget, limit = None, s.mem_gb / s.tasks_per_node
    else:
        return plans, max_parallel
    ac = bool(train.get("activation_checkpointing", False))
    base = 0.0 if s.gpus_per_node and not local else CPU_PROCESS_GB  # a GPU's memory holds tensors only
    tensors_limit = None if limit is None else max(limit - base, 1e-3)
    checked, needs = [], []
    for sp in plans:
        model = models[sp.size]
        heavy = heaviest_train(train, sp)  # the size's largest batch: its memory is the size's
        micro = trainer_micro_batch(config, heavy)
        cell = make_plan(cell_plan_config(config, heavy, model, tensors_limit, micro, ac), model)
        if not cell.fits:
            free = make_plan(cell_plan_config(config, heavy, model, tensors_limit, None, None), model)
            where = (f"{limit:.1f} GB of memory here" if local else
                     f"{cell.usable_mem_gb:g} GB usable per GPU" if s.gpus_per_node else f"{limit:.1f} GB per task")
            if free.fits:
                hint = (f"the largest that fits is --micro-batch-size {free.micro_batch_size}"
                        + (" with activation_checkpointing = true in [train]" if free.activation_checkpointing else "")
                        + f" ({free.memory_per_gpu_gb + base:.1f} GB)")
            else:
                hint = "no micro-batch fits: use a shorter --seq-len, a smaller --batch-size or more GPUs"
            raise ConfigError(f"{sp.size}: a cell needs {cell.memory_per_gpu_gb + base:.1f} GB per process (batch "
                              f"{cell.batch_size} x {cell.seq_len} tokens, micro-batch {cell.micro_batch_size}), "
                              f"{where}; {hint}")
        needs.append(cell.memory_per_gpu_gb + base)
        checked.append(dataclasses.replace(sp, memory_gb=cell.memory_per_gpu_gb + base,
                                           memory_limit_gb=limit if limit is not None else cell.usable_mem_gb))
    if budget is not None:  # cells share this machine's memory: as many at once as fit
        fit_at_once = max(1, int(budget // max(needs)))
        if fit_at_once < max_parallel:
            max_parallel = fit_at_once
        checked = [dataclasses.replace(sp, memory_limit_gb=budget / max_parallel) for sp in checked]
    return checked, max_parallel


def cell_cost(sp: SizePlan, cell: CellSpec) -> tuple[int, int, float | None]:
    """(steps, tokens, FLOPs) one cell trains itself: a WSD branch only its cooldown (its first
    ``branch_step`` steps are its trunk's)."""
    tokens = cell.train_steps * cell.batch_size * sp.seq_len
    return cell.train_steps, tokens, sp.flops_per_token * tokens if sp.flops_per_token is not None else None


def describe_plan(plan: SweepPlan) -> str:
    """What `--dry-run` prints: cells, their LRs, batches and horizons, the steps, tokens and
    FLOPs they train (per curve and in total; a WSD branch priced at its cooldown), the resources
    of each job, warnings about the design, and every cell (a branch with the trunk it waits for)."""
    c = plan.config
    cells = plan.cells()
    lines = [f"sweep -> {plan.out}  ({len(cells)} cells, executor {c.executor}, "
             f"at most {plan.max_parallel} at once)"]
    first = plan.sizes[0]
    single = all(len(sp.curves) == 1 and len(sp.curves[0].horizons) == 1 for sp in plan.sizes) and not plan.axes
    if single:
        lines.append(f"budget per cell: {first.steps} steps x {first.batch_size} seqs x {first.seq_len} "
                     f"tokens = {first.tokens:.3g} tokens, warmup {plan.train['optimizer']['warmup_steps']} steps")
    if c.executor == "slurm":
        s = c.slurm
        lines.append(f"resources per job: {s.nodes} node(s) x {s.tasks_per_node} task(s), {s.gpus_per_node} GPU(s)/node, "
                     f"{s.cpus_per_task} CPU(s), mem {s.mem_gb or 'default'} GB, "
                     f"time limit {s.timeout_min} min, partition {s.partition or 'default'}")
    else:
        lines.append(f"resources per job: 1 process, {plan.train.get('threads')} thread(s)")
    lines.append("data loader: {num_workers} worker(s) per rank, prefetch {prefetch} steps, shuffle buffer {shuffle_buffer} records".format(**plan.train["data"]))
    schedule = plan.train["optimizer"].get("schedule")
    total_steps, total_tokens, total_flops = 0, 0, 0.0
    for sp in plan.sizes:
        flops = f", {sp.flops:.3g} FLOPs/cell" if sp.flops and single else ""
        memory = (f", {sp.memory_gb:.2f} GB per process (of {sp.memory_limit_gb:.1f})" if sp.memory_gb is not None
                  else ", memory unchecked (no slurm.mem_gb)")
        size_cells_ = [cell for cell in cells if cell.size == sp.size]
        shape = "" if single else f" x {sum(len(cv.horizons) for cv in sp.curves)} (batch, horizon)"
        lines.append(f"{sp.size:>6}: N={sp.params:.4g}, MM1 eta(N)={sp.mm1_lr:.2e}, "
                     f"{len(sp.lrs)} LRs{shape} x {sp.seeds} seed(s){flops}{memory}")
        lines.append("        lr: " + " ".join(f"{lr:.2e}" for lr in sp.lrs))
        for curve in sp.curves:
            for steps, branch in zip(curve.horizons, curve.branch_steps or (None,) * len(curve.horizons)):
                group = [cell for cell in size_cells_ if cell.batch_size == curve.batch_size and cell.steps == steps]
                trained, tokens, flop = cell_cost(sp, group[0])
                total_steps += trained * len(group)
                total_tokens += tokens * len(group)
                total_flops += (flop or 0.0) * len(group)
                if single:
                    continue
                role = {"branch": f"branch from step {branch}", "trunk": "trunk", "straight": schedule}[group[0].role]
                horizon_tokens = steps * curve.batch_size * sp.seq_len
                lines.append(f"        batch {curve.batch_size:>4} x {steps:>6} steps (D {horizon_tokens:.3g} tokens, "
                             f"warmup {curve.warmup_steps}, {role}): {len(group)} cells x {trained} steps = "
                             f"{tokens:.3g} tokens" + (f", {flop:.3g} FLOPs" if flop is not None else "") + " each")
        if not single:
            costs = [cell_cost(sp, cell) for cell in size_cells_]
            flop = sum(f or 0.0 for _, _, f in costs)
            lines.append(f"        {sp.size} in all: {len(costs)} cells, {sum(n for n, _, _ in costs)} steps, "
                         f"{sum(t for _, t, _ in costs):.3g} tokens" + (f", {flop:.3g} FLOPs" if flop else ""))
    lines.append(f"total: {len(cells)} cells, {total_steps} steps, {total_tokens:.3g} tokens"
                 + (f", {total_flops:.3g} FLOPs" if total_flops else "")
                 + (" (WSD branches counted at their cooldown)" if any(cell.trunk for cell in cells) else ""))

    lines += [f"warning: {w}" for w in plan.warnings]
    if c.mode == "adaptive":
        lines.append(f"adaptive: sizes smallest first, each from 3 LRs around its prior, adding LRs as results arrive "
                     f"until the optimum's 95% interval is within +/-{c.target_halfwidth:g} in ln lr or it has "
                     f"{c.max_points} LRs; the grid and cells above are what a fixed sweep would run")
    for cell in cells:
        after = (f"  (branch of {cell.trunk} from step {cell.branch_step})" if cell.trunk else
                 f"  (trunk, saves steps {', '.join(map(str, cell.save_steps))})" if cell.save_steps else "")
        lines.append(f"  cell {cell.size}/{cell.name}{after}")
    return "\n".join(lines)


def slurm_job_parameters(plan: SweepPlan) -> dict[str, Any]:
    """The ``submitit.SlurmExecutor`` parameters of one cell's job (``[slurm]`` of the config).

    ``signal_delay_s`` (how long before the time limit SLURM signals the job, so the trainer can
    checkpoint and be requeued) follows the launch planner's rule, :func:`scaling.plan.slurm_parameters`:
    three step times and twice the checkpoint's save time of the sweep's largest size (at its
    largest batch) as the planner estimates them on GPUs, and at least two minutes."""
    s = plan.config.slurm
    largest = max(plan.sizes, key=lambda sp: sp.params)
    model = model_config(from_dict(TrainConfig, {**plan.train, "size": largest.size}, where="[train]"))
    heavy = heaviest_train(plan.train, largest)
    job = cell_plan_config(plan.config, heavy, model, None, trainer_micro_batch(plan.config, heavy),
                           bool(plan.train.get("activation_checkpointing", False)))
    cell = make_plan(job, model) if s.gpus_per_node else None
    params = slurm_parameters(job, s.nodes, f"sweep-{plan.out.name}", cell and cell.step_time_s,
                              cell and cell.save_time_s)
    # a sweep asks for GPUs apart from tasks, and for memory per job in GiB
    params.pop("gpus_per_node", None)
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    if s.mem_gb:
        params["mem"] = f"{int(s.mem_gb * 1024)}MB"
    for key in ("account", "qos", "constraint"):
        if getattr(s, key):
            params[key] = getattr(s, key)
    if s.setup:
        params["setup"] = list(s.setup)
    params["array_parallelism"] = plan.max_parallel
    return params


def executor_parameters(plan: SweepPlan) -> dict[str, Any]:
    """The parameters of the plan's executor (see :func:`scaling.executors.make_executor`)."""
    if plan.config.executor == "slurm":
        return slurm_job_parameters(plan)
    if plan.config.executor == "local":
        return {"timeout_min": LOCAL_TIMEOUT_MIN}
    return {}
