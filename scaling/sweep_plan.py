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
"""
from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from pathlib import Path
from typing import Any

from mm1model.config import ConfigError, from_dict, to_dict
from mm1model.counting import flops_per_token, param_counts
from mm1model.model import MM1Config
from mm1model.paper import mm1_peak_lr
from mm1model.sizes import default_shape, get_size
from mm1model.train_config import TrainConfig, model_config
from scaling.cells import cell_name
from scaling.executors import EXECUTORS
from scaling.plan import GB, PlanConfig, host_memory_bytes, make_plan, slurm_parameters

# A local cell runs until it ends: submitit's default limit (2 min) would kill most of them.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
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
    Budget: ``steps`` or ``tokens`` (tokens -> steps = ceil(tokens / (batch_size * seq_len))),
    else the trainer's default steps. Warmup is ``warmup_fraction`` of the steps and the cosine
    decays over all steps, unless ``train.optimizer`` sets ``warmup_steps``/``decay_steps``.
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
    warmup_fraction: float = 0.1
    max_retries: int = 2
    max_extend: int = 3
    executor: str = "local"
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
                      **overrides: Any) -> SweepConfig:
    """A SweepConfig from a TOML file (optional) with ``overrides`` (flags) on top.

    Overrides that are None are ignored, so a CLI can pass every flag through. ``model`` entries
    (e.g. ``parametrization``, ``base_size``, ``alpha``) are merged into ``train.model``, the
    trainer's overrides of every size's model config. ``shape`` (``batch_size``,
    ``micro_batch_size``, ``seq_len``: the flags of the same names) sets the trainer's batch shape
    on top of the file's ``[train]``. A file with arms (see :func:`sweep_arms`) needs ``arm``; the
    flags then apply on top of that arm.
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
    memory_gb: float | None = None  # planned peak memory of one of a cell's processes (GPU or host)
    memory_limit_gb: float | None = None  # what each such process may use (None: not checked)


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
    # a size trains at the shape of where it runs unless [train] says otherwise (sizes.default_shape):
    # the demo's 8 x 128 for a sweep of CPU sizes, MM1's 512 x 4096 for any other
    shapes = [default_shape(size) for size in config.sizes]
    default_batch, default_seq_len = max(shapes)
    train.setdefault("batch_size", default_batch)
    train["data"] = {"seq_len": default_seq_len, **(train.get("data") or {})}
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
    tokens = steps * batch_size * seq_len
    plans = []
    for size, model in models.items():
        params = param_counts(model).params
        flops = flops_per_token(model, seq_len) * tokens
        plans.append(SizePlan(size=size, params=params, mm1_lr=mm1_peak_lr(params),
                              lrs=_grid(config, size, params), seeds=config.seeds_by_size.get(size, config.seeds),
                              steps=steps, tokens=tokens,
                              batch_size=batch_size, seq_len=seq_len, flops=flops))
    plans, max_parallel = check_memory(config, train, plans, models, max_parallel)
    name = config.name or "sweep-" + "_".join(config.sizes)
    out = Path(config.out) if config.out else Path("runs") / name
    return SweepPlan(config=config, out=out, sizes=tuple(plans), train=train, max_parallel=max_parallel)


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
    """Each cell's peak memory per process from the planner, held against what the executor
    offers: a GPU's memory (less the planner's reserve) on SLURM with GPUs; ``slurm.mem_gb`` over
    its tasks on CPU nodes (unchecked without it); on this machine ``memory_gb`` (default: the
    memory available now) shared by the cells that run at once, whose number it also caps. A
    cell that cannot fit is refused in one line with the largest setting that does. Returns the
    plans with their memory and the (possibly lowered) parallelism."""
    s = config.slurm
    local = config.executor != "slurm"
    if local:
        budget = config.memory_gb if config.memory_gb is not None else host_available_gb()
        limit = budget
    elif s.gpus_per_node:
        budget = limit = None  # the planner's GPU table (or gpu_mem_gb)
    elif s.mem_gb:
        budget, limit = None, s.mem_gb / s.tasks_per_node
    else:
        return plans, max_parallel
    micro = trainer_micro_batch(config, train)
    ac = bool(train.get("activation_checkpointing", False))
    base = 0.0 if s.gpus_per_node and not local else CPU_PROCESS_GB  # a GPU's memory holds tensors only
    tensors_limit = None if limit is None else max(limit - base, 1e-3)
    checked, needs = [], []
    for sp in plans:
        model = models[sp.size]
        cell = make_plan(cell_plan_config(config, train, model, tensors_limit, micro, ac), model)
        if not cell.fits:
            free = make_plan(cell_plan_config(config, train, model, tensors_limit, None, None), model)
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
        memory = (f", {sp.memory_gb:.2f} GB per process (of {sp.memory_limit_gb:.1f})" if sp.memory_gb is not None
                  else ", memory unchecked (no slurm.mem_gb)")
        lines.append(f"{sp.size:>6}: N={sp.params:.4g}, MM1 eta(N)={sp.mm1_lr:.2e}, "
                     f"{len(sp.lrs)} LRs x {sp.seeds} seed(s){flops}{memory}")
        lines.append("        lr: " + " ".join(f"{lr:.2e}" for lr in sp.lrs))
    for sp in plan.sizes:
        for lr in sp.lrs:
            for seed in range(sp.seeds):
                lines.append(f"  cell {sp.size}/{cell_name(lr, seed)}")
    return "\n".join(lines)



def slurm_job_parameters(plan: SweepPlan) -> dict[str, Any]:
    """The ``submitit.SlurmExecutor`` parameters of one cell's job (``[slurm]`` of the config).

    ``signal_delay_s`` (how long before the time limit SLURM signals the job, so the trainer can
    checkpoint and be requeued) follows the launch planner's rule, :func:`scaling.plan.slurm_parameters`:
    three step times and twice the checkpoint's save time of the sweep's largest size as the
    planner estimates them on GPUs, and at least two minutes."""
    s = plan.config.slurm
    largest = max(plan.sizes, key=lambda sp: sp.params)
    model = model_config(from_dict(TrainConfig, {**plan.train, "size": largest.size}, where="[train]"))
    job = cell_plan_config(plan.config, plan.train, model, None, trainer_micro_batch(plan.config, plan.train),
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
