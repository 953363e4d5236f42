"""``scaling launch``: the fitted recipe, a resource plan, and the trainer started through submitit.

:func:`prepare_launch` resolves everything and writes nothing: the recipe (peak LR from a fitted
law or MM1's, every value with its origin), the :class:`scaling.plan.Plan`, and the
:class:`mm1model.train.TrainConfig` that will run; :meth:`Prepared.describe` is what the command
prints of it. :func:`launch` refuses a plan that does not fit, then writes the launch directory
and submits through :mod:`scaling.executors`; :func:`run_launch` is the whole command (describe,
refuse or submit, optionally wait). The launch directory:

* ``plan.json``: the recipe (with origins) and the plan; ``config.json``: the TrainConfig;
* ``jobs.json``: one entry per submission (job id, executor, time, submitit folder);
* ``status.json``: ``submitted`` at submission; :func:`launch_status` reads the trainer's own
  records (``run/metrics.jsonl``, ``run/result.json``) for everything after that, so it never
  asks the scheduler;
* ``run/``: the trainer's run directory; ``submitit/``: submitit's logs and pickles.

One job of ``nodes x gpus_per_node`` tasks, one per GPU: each task exports its rendezvous
(:func:`scaling.executors.export_distributed_environment`: MASTER_ADDR/PORT, RANK, WORLD_SIZE,
LOCAL_RANK, every GPU of the node left visible) and calls :func:`mm1model.train.train`, which joins the process group (nccl on
GPUs, gloo on CPUs) and applies FSDP2. :class:`TrainJob` is ``Checkpointable``: on a timeout or
preemption signal the trainer checkpoints at the next step boundary, hands the signal to
submitit, which requeues the job; the requeued job resumes from that checkpoint.
``executor="local"`` runs the same job through ``submitit.LocalExecutor`` on this machine.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import submitit
import torch

from mm1model import records
from mm1model.config import ConfigError, from_dict, replace, to_dict
from mm1model.data import DataConfig
from mm1model.data.tokenizer import checkpoint_tokenizer
from mm1model.model import MM1
from mm1model.pretrained import check_lm_shape, check_pretrained, check_vit_shape, read_clip, read_llama
from mm1model.sizes import get_size
from mm1model.train import TrainConfig, load_config, train
from mm1model.train_config import InitConfig, model_config
from scaling.executors import check_slurm, export_distributed_environment, make_executor
from scaling.law import REFERENCES, FitResult, mm1_law
from scaling.plan import Plan, PlanConfig, format_plan, make_plan
from scaling.recipe import Recipe, recipe_for

# A launch's tasks are processes of their own (one per GPU): never the in-process debug executor.
EXECUTORS = ("slurm", "local")
# TrainConfig fields a launch may set beyond the recipe (how often to evaluate, where the data is, ...).
TRAIN_FIELDS = ("eval_interval", "eval_sequences", "checkpoint_interval", "keep_checkpoints", "log_interval",
                "seed", "compile", "peak_flops", "divergence_factor", "betas", "eps")
# Of those, the ones that belong to the optimizer (the recipe sets the rest of it).
OPTIMIZER_FIELDS = ("betas", "eps")


@dataclass
class Prepared:
    """A resolved launch: what would run, where, at what cost. Nothing is written yet."""

    out: Path
    executor: str
    recipe: Recipe
    plan: Plan
    train: TrainConfig

    def summary(self) -> dict[str, Any]:
        """The dry-run JSON: the issue's keys first, then the recipe's origins and the whole plan."""
        r, p = self.recipe, self.plan
        return {
            "size": p.size, "params": int(r.params), "n_convention": r.n_convention,
            "peak_lr": r.peak_lr, "peak_lr_pi95": list(r.peak_lr_pi95) if r.peak_lr_pi95 else None,
            "min_lr": r.min_lr, "warmup_steps": r.warmup_steps, "decay_steps": r.decay_steps, "steps": r.steps,
            "peak_lr_bootstrap95": list(r.peak_lr_bootstrap95) if r.peak_lr_bootstrap95 else None,
            "total_tokens": r.total_tokens, "schedule": r.schedule, "weight_decay": r.weight_decay,
            "weight_decay_rule": r.weight_decay_rule, "z_loss": r.z_loss, "grad_clip": r.grad_clip,
            "batch_size": r.batch_size, "seq_len": r.seq_len, "max_images": r.max_images,
            "nodes": p.nodes, "gpus_per_node": p.gpus_per_node, "memory_per_gpu_gb": p.memory_per_gpu_gb,
            "gpu_hours": p.gpu_hours, "micro_batch_size": p.micro_batch_size, "grad_accum_steps": p.grad_accum_steps,
            "activation_checkpointing": p.activation_checkpointing, "fits": p.fits, "refusal": p.refusal,
            "executor": self.executor, "out": str(self.out), "origins": dict(r.origins),
            "weights": dict(r.weights), "recipe": r.to_dict(), "plan": p.to_dict(),
        }

    def describe(self, as_json: bool = False) -> str:
        """What ``scaling launch`` prints before it submits: the recipe with each value's origin and
        the plan (a refused plan says REFUSED), or ``as_json`` the dry-run JSON of :meth:`summary`."""
        if as_json:
            return records.dumps(self.summary())
        return describe_recipe(self.recipe) + "\n" + format_plan(self.plan)

    def check_fits(self) -> None:
        """ConfigError with the plan's refusal (and the smallest shape that fits) unless it fits."""
        if not self.plan.fits:
            raise ConfigError(self.plan.refusal)


def describe_recipe(r: Recipe) -> str:
    """The recipe in four lines, each value tagged with its origin (fit, paper, user)."""
    o = r.origins
    pi = f" (95% PI {r.peak_lr_pi95[0]:.2e}-{r.peak_lr_pi95[1]:.2e})" if r.peak_lr_pi95 else ""
    if r.peak_lr_bootstrap95:
        pi += f" (bootstrap 95% {r.peak_lr_bootstrap95[0]:.2e}-{r.peak_lr_bootstrap95[1]:.2e})"
    batch_pi = (f" (95% {r.batch_size_pi95[0]:.0f}-{r.batch_size_pi95[1]:.0f})" if r.batch_size_pi95 else "")
    timescale = f", timescale {r.weight_decay_timescale:.3g} runs" if r.weight_decay_timescale else ""
    rows = [
        f"recipe     {r.size}: peak LR {r.peak_lr:.3g} [{o['peak_lr']}]{pi} at N = {r.params:,.0f} ({r.n_convention})",
        f"schedule   warmup {r.warmup_steps:,} [{o['warmup_steps']}], {r.schedule} to min LR {r.min_lr:.3g} "
        f"[{o['min_lr']}] over {r.decay_steps:,} steps [{o['decay_steps']}], {r.steps:,} steps [{o['steps']}], "
        f"{r.total_tokens:.3g} tokens [{o['total_tokens']}]",
        f"optimizer  AdamW, decoupled weight decay {r.weight_decay:.3g} [{o['weight_decay']}] "
        f"({r.weight_decay_rule} rule{timescale}), grad clip {r.grad_clip:g} [{o['grad_clip']}], "
        f"z-loss {r.z_loss:g} [{o['z_loss']}]",
        f"data       batch {r.batch_size} [{o['batch_size']}]{batch_pi} x {r.seq_len} tokens [{o['seq_len']}], "
        f"up to {r.max_images} images [{o['max_images']}] per sequence",
        "weights    " + ", ".join(f"{tower} {origin}" for tower, origin in r.weights.items()),
        *(f"note       {note}" for note in r.notes),
    ]
    return "\n".join(rows)


def load_law(fit: str | Path | None, reference: str | None, size: str, n_convention: str = "non_embedding"):
    """The LR law: a ``scaling fit`` result, or MM1's published law counted with ``n_convention``.
    Exactly one must be given; a fit made with another N convention is refused, because the law
    would be evaluated at an N it was not fitted on."""
    if fit is not None and reference is not None:
        raise ConfigError("give either --fit FIT.json or --reference mm1, not both")
    if fit is None and reference is None:
        raise ConfigError(f"no fit for size {size}: give --fit FIT.json (from `scaling fit`) or --reference mm1")
    if reference is not None:
        if reference not in REFERENCES:
            raise ConfigError(f"unknown reference '{reference}'; valid: {', '.join(REFERENCES)}")
        return mm1_law(n_convention)
    law = FitResult.from_json(fit)
    if law.n_convention != n_convention:
        raise ConfigError(f"{fit} was fitted with N counted as '{law.n_convention}', this launch counts "
                          f"'{n_convention}': pass --n-convention {law.n_convention} to use that law")
    return law


def _regime(towers: str) -> str:
    return "from scratch" if towers == "none" else f"from a pretrained {towers.replace('+', ' and ')}"


def law_init_note(law: FitResult, init: InitConfig) -> str | None:
    """What a launch says when its start (``init``) is not the regime the law's LR sweeps trained
    in (:attr:`scaling.law.FitResult.init`): a law fitted from scratch applied to a pretrained
    start, or the reverse, or other pretrained towers; and, for a pretrained start, a law that does
    not record its sweeps' start (MM1's published law, an old fit.json). None when they agree."""
    law_name = "MM1's published law" if law.source == "mm1" else "a `scaling fit` law"
    sweep = "small pretrained checkpoints" if init.pretrained else "from scratch"
    advice = (f"applied here it is an extrapolation to another regime (sweep {sweep} to fit a law for this start; "
              "README, 'Pretrained starts')")
    if law.init is None:
        if not init.pretrained:
            return None
        return (f"weights: this launch starts {_regime(init.towers)}, but the peak LR comes from {law_name}, which "
                f"does not record whether its LR sweeps started pretrained (usually from scratch): {advice}")
    if law.init == init.towers:
        return None
    return (f"weights: this launch starts {_regime(init.towers)}, but the peak LR comes from {law_name}, fitted on "
            f"LR sweeps that started {_regime(law.init)}: {advice}")


def check_launch_checkpoints(config: TrainConfig) -> None:
    """Everything about ``config.init``'s checkpoints that can fail on the cluster, checked here
    from their config.json, tokenizer.json and safetensors headers (no tensor data read): the
    shape against the size's, which a launch cannot override (one line naming the first differing
    dimension; :func:`mm1model.pretrained.check_lm_shape`), the tokenizer against
    the embedding and the special ids (:func:`mm1model.data.tokenizer.checkpoint_tokenizer`),
    and every tensor of the name maps present with its parameter's shape, on a model built on the
    meta device (:func:`mm1model.pretrained.check_pretrained`). ConfigError, one line."""
    size = get_size(config.size)  # a launch has no model overrides: the checkpoint must have the size's shape
    if config.init.lm is not None:
        lm = read_llama(config.init.lm)
        check_lm_shape(replace(size.lm, vocab_size=lm.lm_fields()["vocab_size"]), lm, size=config.size,
                       overridable=False)
    if config.init.vit is not None:
        check_vit_shape(size.vit, read_clip(config.init.vit), size=config.size, overridable=False)
    mcfg = model_config(config)
    if config.init.lm is not None:
        checkpoint_tokenizer(config.init.lm)
    with torch.device("meta"):
        model = MM1(mcfg)
    check_pretrained(model, config.init.lm, config.init.vit)


def prepare_launch(size: str, *, fit: str | Path | None = None, reference: str | None = None,
                   n_convention: str = "non_embedding", recipe: dict[str, Any] | None = None,
                   plan: dict[str, Any] | None = None, train: dict[str, Any] | None = None,
                   executor: str = "slurm", out: str | Path | None = None, tokens: float | None = None,
                   weight_decay_rule: str = "mm1", init: dict[str, Any] | None = None) -> Prepared:
    """Resolve a launch of ``size`` without writing or submitting anything.

    ``recipe``: overrides of :data:`scaling.recipe.OVERRIDABLE` (origin "user"). ``plan``:
    :class:`PlanConfig` fields (nodes, gpus_per_node, gpu, gpu_mem_gb, partition, time, mfu, ...).
    ``train``: extra TrainConfig fields (:data:`TRAIN_FIELDS`, plus ``data`` overrides such as
    ``{"corpus": DIR}``). ``n_convention``: how N is counted (non_embedding, the project's
    default, or total); a fit made with the other one is refused. ``tokens``: the target's token
    budget, ``weight_decay_rule``: "mm1" or "timescale" (:func:`scaling.recipe.recipe_for`); a
    batch from the fit's batch law is rounded to a multiple of the GPUs when ``nodes`` is given
    (of one node's GPUs otherwise), so it divides over the ranks. ``init``: :class:`InitConfig`
    fields (``lm``, ``vit`` checkpoint directories, ``freeze_lm``, ``freeze_vit``): the checkpoints
    are checked here (:func:`check_launch_checkpoints`: shapes, tokenizer, every tensor's name and
    shape in the safetensors headers), the recipe records them in ``weights`` and notes when the
    law's sweeps started otherwise (:func:`law_init_note`).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor '{executor}'; valid: {', '.join(EXECUTORS)}")
    get_size(size)
    init_config = from_dict(InitConfig, init or {}, "init")
    law = load_law(fit, reference, size, n_convention)
    plan_fields = dict(plan or {})
    device = plan_fields.setdefault("device", "cpu" if executor == "local" else "cuda")
    if executor == "local":
        plan_fields.setdefault("gpus_per_node", 1)
        if plan_fields.get("nodes", 1) != 1:
            raise ConfigError("--executor local runs on this machine: --nodes must be 1")
        plan_fields["nodes"] = 1
    if device == "cpu":
        plan_fields.setdefault("cpus_per_task", 1)
    # a batch from the batch law divides over the ranks known now (one node's unless --nodes is given)
    ranks = int(plan_fields.get("nodes") or 1) * int(plan_fields.get("gpus_per_node") or PlanConfig.gpus_per_node)
    rec = recipe_for(size, law, recipe, tokens=tokens, weight_decay_rule=weight_decay_rule, batch_multiple=ranks)
    note = law_init_note(law, init_config)
    rec = dataclasses.replace(rec, weights=init_config.origin(), notes=(*rec.notes, *([note] if note else [])))
    plan_config = from_dict(PlanConfig, {"size": size, "batch_size": rec.batch_size, "seq_len": rec.seq_len,
                                         "max_images": rec.max_images, "steps": rec.steps, "z_loss": rec.z_loss,
                                         **plan_fields}, "plan")
    the_plan = make_plan(plan_config, job_name=f"mm1-{size}")
    out = Path(out) if out is not None else Path("launches") / size
    extra = dict(train or {})
    data = {"num_workers": the_plan.loader_workers, **extra.pop("data", {})}
    unknown = sorted(set(extra) - set(TRAIN_FIELDS))
    if unknown:
        raise ConfigError(f"unknown train key(s) {', '.join(unknown)}; valid: {', '.join(TRAIN_FIELDS)}")
    adam = {key: extra.pop(key) for key in OPTIMIZER_FIELDS if key in extra}
    # checkpoint every ~30 minutes of the plan's step time (a step count would be days at 30B)
    if the_plan.checkpoint_interval_steps is not None:
        extra.setdefault("checkpoint_interval", the_plan.checkpoint_interval_steps)
    train_config = TrainConfig(
        size=size, data=from_dict(DataConfig, {"seq_len": rec.seq_len, "max_images": rec.max_images, **data}, "data"),
        optimizer=dataclasses.replace(rec.optimizer(), **adam), z_loss=rec.z_loss, batch_size=rec.batch_size,
        micro_batch_size=the_plan.micro_batch_size, steps=rec.steps,
        activation_checkpointing=the_plan.activation_checkpointing, device=device,
        threads=plan_config.cpus_per_task if device == "cpu" else None, run_dir=str((out / "run").resolve()),
        init=init_config, **extra)
    if init_config.pretrained:  # a checkpoint of another shape or tokenizer fails here, not on the cluster
        check_launch_checkpoints(train_config)
    return Prepared(out=out, executor=executor, recipe=rec, plan=the_plan, train=train_config)


# ---------------------------------------------------------------------------------------- the job
class TrainJob(submitit.helpers.Checkpointable):
    """One task of the launch job: join the rendezvous, then train (or resume) the run.

    Requeue needs nothing beyond ``Checkpointable``'s default: the same call on the same run
    directory resumes from the newest checkpoint the trainer wrote when it got the signal."""

    def __call__(self, config_path: str) -> dict[str, Any]:
        export_distributed_environment()
        result = train(load_config(config_path))
        return dataclasses.asdict(result)


def launch_executor(prepared: Prepared):
    """The submitit executor of a prepared launch: SLURM parameters exactly as planned, or the
    same tasks as local processes (each sees the GPUs the plan counts, when it trains on GPUs)."""
    folder = prepared.out / "submitit"
    plan = prepared.plan
    if prepared.executor == "local":
        parameters = {"tasks_per_node": plan.gpus_per_node, "nodes": 1, "timeout_min": plan.slurm["time"],
                      "signal_delay_s": 10}
        if plan.device == "cuda":  # submitit.LocalExecutor hides every GPU unless it is told how many
            parameters["gpus_per_node"] = plan.gpus_per_node
        return make_executor("local", folder, parameters)
    return make_executor("slurm", folder, plan.slurm, max_num_timeout=100)


def launch(prepared: Prepared, resubmit: bool = False) -> submitit.Job:
    """Refuse a plan that does not fit or a busy/different launch directory, then write the
    records and submit. Returns the submitit job (``job.results()`` waits for every task).

    A directory whose last job is still submitted or running is refused unless ``resubmit``
    (after that job died without a result): the new job resumes from its checkpoint."""
    plan = prepared.plan
    prepared.check_fits()
    if prepared.executor == "slurm":
        check_slurm()
    out = prepared.out
    config = to_dict(prepared.train)
    if (out / "config.json").exists():
        before = records.read_json(out / "config.json")
        if records.dumps(before) != records.dumps(config):
            raise ConfigError(f"{out} holds another launch (its config.json differs); use a new --out")
        state = launch_status(out)["state"]
        if state in ("submitted", "running") and not resubmit:
            raise ConfigError(f"{out} is already {state} (job {last_job_id(out)}); see `scaling status {out}`, or --resubmit if it died")
    fresh = not out.exists()
    records.write_json(out / "plan.json", {"recipe": prepared.recipe.to_dict(), "plan": plan.to_dict(),
                                           "executor": prepared.executor})
    records.write_json(out / "config.json", config)
    try:
        job = launch_executor(prepared).submit(TrainJob(), str((out / "config.json").resolve()))
    except Exception:
        if fresh:  # nothing was submitted: leave no launch directory behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    jobs = records.read_json(out / "jobs.json") if (out / "jobs.json").exists() else []
    jobs.append({"job_id": str(job.job_id), "executor": prepared.executor, "submitted": time.time(),
                 "folder": str(out / "submitit"), "tasks": plan.world_size})
    records.write_json(out / "jobs.json", jobs)
    records.write_json(out / "status.json", {"state": "submitted", "job_id": str(job.job_id), "time": time.time()})
    return job


def last_job_id(out: Path) -> str | None:
    """The id of the launch's latest job, from jobs.json (None before the first submission)."""
    try:
        return records.read_json(Path(out) / "jobs.json")[-1]["job_id"]
    except (FileNotFoundError, IndexError, KeyError, ValueError):
        return None


def launch_status(out: str | Path) -> dict[str, Any]:
    """Where a launch stands, from its files only: ``state`` is submitted (no training step
    logged yet), running, ok, diverged or failed; with the job id, the step reached, the last
    training loss and the final validation loss once done."""
    out = Path(out)
    if not (out / "plan.json").exists():
        raise ConfigError(f"{out} is not a launch directory (no plan.json)")
    run = out / "run"
    status = {"state": "prepared", "job_id": last_job_id(out), "step": 0, "steps": None, "loss": None,
              "final_val_loss": None}
    try:
        status["steps"] = records.read_json(out / "config.json")["steps"]
    except (FileNotFoundError, KeyError, ValueError):
        pass
    if (out / "status.json").exists():
        status["state"] = records.read_json(out / "status.json").get("state", "submitted")
    rows = [r for r in records.read_jsonl(run / "metrics.jsonl") if "loss" in r]
    if rows:
        status.update(state="running", step=rows[-1]["step"], loss=rows[-1]["loss"])
    try:
        result = records.read_json(run / "result.json")
    except (FileNotFoundError, ValueError):
        result = None
    if result is not None:
        status.update(state=result["status"], step=result["steps"], final_val_loss=result.get("final_val_loss"))
    return status


def format_status(status: dict[str, Any]) -> str:
    loss = "" if status["loss"] is None or not math.isfinite(status["loss"]) else f", loss {status['loss']:.4f}"
    final = "" if status["final_val_loss"] is None else f", final val loss {status['final_val_loss']:.4f}"
    return f"{status['state']}: job {status['job_id']}, step {status['step']}/{status['steps']}{loss}{final}"


# ---------------------------------------------------------------------------------------- the command
@dataclass
class LaunchResult:
    """What ``scaling launch`` did: the resolved launch, its job (None for a dry run) and, when
    it waited for the job, the launch's status at the end."""

    prepared: Prepared
    job: submitit.Job | None = None
    status: dict[str, Any] | None = None

    def summary(self) -> str:
        """The launch's final state when it was waited for, else "" (the plan and the submission
        are reported as they happen)."""
        return format_status(self.status) if self.status is not None else ""


def run_launch(size: str, *, fit: str | Path | None = None, reference: str | None = None,
               n_convention: str = "non_embedding", recipe: dict[str, Any] | None = None,
               plan: dict[str, Any] | None = None, train: dict[str, Any] | None = None, executor: str = "slurm",
               out: str | Path | None = None, dry_run: bool = False, as_json: bool = False, resubmit: bool = False,
               wait: bool = False, echo: Callable[[str], None] = print, tokens: float | None = None,
               weight_decay_rule: str = "mm1", init: dict[str, Any] | None = None) -> LaunchResult:
    """``scaling launch``: resolve (:func:`prepare_launch`, same arguments), show the recipe and
    plan through ``echo``, then refuse a plan that does not fit (a dry run too) or submit
    (:func:`launch`) and, with ``wait``, wait for every task."""
    prepared = prepare_launch(size, fit=fit, reference=reference, n_convention=n_convention, recipe=recipe,
                              plan=plan, train=train, executor=executor, out=out, tokens=tokens,
                              weight_decay_rule=weight_decay_rule, init=init)
    echo(prepared.describe(as_json))  # before any refusal: it says what does not fit
    if dry_run:
        prepared.check_fits()
        return LaunchResult(prepared)
    job = launch(prepared, resubmit=resubmit)
    echo(f"submitted job {job.job_id} ({executor}); records in {prepared.out}; "
         f"follow with `scaling status {prepared.out}`")
    if not wait:
        return LaunchResult(prepared, job)
    job.results()
    return LaunchResult(prepared, job, launch_status(prepared.out))
