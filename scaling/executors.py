"""The one executor layer of sweeps, launches and the overhead benchmark: where jobs run and how a
job's processes find each other.

* :func:`make_executor`: ``local`` (``submitit.LocalExecutor``: processes on this machine),
  ``slurm`` (``submitit.SlurmExecutor``: sbatch jobs and job arrays) or ``debug``
  (:class:`InProcessExecutor`: each job runs in this process when it is submitted). An unknown
  executor parameter is a ConfigError that lists the valid ones.
* :func:`check_slurm` / :func:`slurm_problem`: does a SLURM cluster answer, sacct included?
  Without a working ``sacct``, submitit never learns that a job was killed before it wrote its
  result and waits on it forever; ``scripts/slurm-start.sh`` puts an ``sacct`` stand-in (it
  answers from ``squeue``) on the PATH of ``$SLURM_PREFIX/env.sh``, which
  :func:`load_slurm_env_file` applies.
* :func:`export_distributed_environment`: the rendezvous of a multi-task job (MASTER_ADDR/PORT,
  RANK, WORLD_SIZE, LOCAL_RANK), one path for sweep cells (:class:`scaling.cells.CellJob`) and
  launches (:class:`scaling.launch.TrainJob`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import submitit

from mm1model.config import ConfigError

EXECUTORS = ("local", "slurm", "debug")
# What submitit.LocalExecutor reads (its docstring's list, plus setup and stderr_to_stdout); it
# ignores any other key silently, so this layer checks them itself.
LOCAL_PARAMETERS = ("gpus_per_node", "nodes", "setup", "signal_delay_s", "stderr_to_stdout", "tasks_per_node",
                    "timeout_min", "visible_gpus")
SLURM_HINT = "use --dry-run to see the plan, or --executor local to run here"
# Where scripts/slurm-start.sh writes its cluster (conf, state, env.sh) unless SLURM_PREFIX says otherwise.
DEFAULT_SLURM_PREFIX = "/tmp/mm1-slurm"


class FinishedJob:
    """A job of the debug executor: it ran to completion when it was submitted."""

    job_id = "debug"

    def __init__(self, value: Any) -> None:
        self.value = value

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        return self.value

    def results(self) -> list[Any]:
        return [self.value]


class InProcessExecutor:
    """The debug executor: runs each job in this process at submission, one after another.

    submitit's own debug executor drops into pdb on an exception; this one lets it propagate
    (the sweep's :class:`scaling.cells.CellJob` records its trainer's exceptions instead)."""

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FinishedJob:
        return FinishedJob(fn(*args, **kwargs))

    def map_array(self, fn: Callable[..., Any], *iterables: Any) -> list[FinishedJob]:
        return [self.submit(fn, *args) for args in zip(*iterables)]


def make_executor(kind: str, folder: str | Path, parameters: dict[str, Any] | None = None,
                  max_num_timeout: int = 3):
    """The executor ``kind`` (one of :data:`EXECUTORS`) with its job parameters.

    ``folder``: submitit's logs and pickles (SLURM jobs get one subfolder per job id).
    ``parameters``: ``submitit.SlurmExecutor`` parameters for slurm (``time`` in minutes,
    ``signal_delay_s``, ...), :data:`LOCAL_PARAMETERS` for local, none for debug.
    ``max_num_timeout``: how often a job that reaches its time limit is requeued."""
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {kind!r}; valid: {', '.join(EXECUTORS)}")
    parameters = dict(parameters or {})
    if kind == "debug":
        if parameters:
            raise ConfigError(f"the debug executor takes no parameters, got {', '.join(sorted(parameters))}")
        return InProcessExecutor()
    if kind == "local":
        unknown = sorted(set(parameters) - set(LOCAL_PARAMETERS))
        if unknown:
            raise ConfigError(f"unknown local executor parameter(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(LOCAL_PARAMETERS)}")
        executor = submitit.LocalExecutor(folder=Path(folder), max_num_timeout=max_num_timeout)
    else:
        executor = submitit.SlurmExecutor(folder=Path(folder) / "%j", max_num_timeout=max_num_timeout)
    try:
        executor.update_parameters(**parameters)
    except ValueError as err:  # submitit lists the valid parameters over several lines: keep it one
        raise ConfigError(f"{kind} executor: {' '.join(str(err).split())}") from None
    return executor


# ---------------------------------------------------------------------------------------- SLURM
def slurm_problem() -> str | None:
    """Why no SLURM cluster can run jobs from here, or None when one answers: sbatch and sinfo
    on PATH, a partition up, and an sacct that answers (a real one or the stand-in)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no SLURM on this machine (sbatch/sinfo not on PATH)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo does not answer (is slurmctld running?)"
    if out.returncode != 0 or "up" not in out.stdout.split():
        detail = (out.stderr.strip().splitlines() or ["no partition is up"])[-1]
        return f"no SLURM cluster answers ({detail})"
    prefix = os.environ.get("SLURM_PREFIX", DEFAULT_SLURM_PREFIX)
    no_sacct = (f"submitit would wait forever on a job killed before it wrote its result; run slurmdbd, or "
                f"`source {prefix}/env.sh` for the stand-in of scripts/slurm-start.sh")
    if shutil.which("sacct") is None:
        return f"no sacct on PATH: {no_sacct}"
    try:  # the query submitit makes
        out = subprocess.run(["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", "1"],
                             capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return f"sacct does not answer: {no_sacct}"
    if out.returncode != 0:
        detail = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        return f"sacct fails ({detail}): {no_sacct}"
    return None


def check_slurm(hint: str = SLURM_HINT) -> None:
    """ConfigError unless a SLURM cluster answers (see :func:`slurm_problem`), in one line that
    ends with what to do instead (default: ``--dry-run`` or ``--executor local``)."""
    problem = slurm_problem()
    if problem is not None:
        raise ConfigError(f"--executor slurm: {problem}; {hint}")


def load_slurm_env_file(prefix: str | Path | None = None) -> bool:
    """Apply ``PREFIX/env.sh`` of scripts/slurm-start.sh (SLURM_CONF, and PATH with the sacct
    stand-in) to this process, as ``source`` would, unless SLURM_CONF is already set.
    ``prefix``: default ``$SLURM_PREFIX``, else /tmp/mm1-slurm. Returns whether it applied one."""
    env_sh = Path(prefix or os.environ.get("SLURM_PREFIX", DEFAULT_SLURM_PREFIX)) / "env.sh"
    if os.environ.get("SLURM_CONF") or not env_sh.is_file():
        return False
    for line in env_sh.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export "):].split("=", 1)
            os.environ[key] = value.replace("$PATH", os.environ.get("PATH", ""))
    return True


# ---------------------------------------------------------------------------------------- jobs
def job_environment() -> submitit.JobEnvironment | None:
    """The submitit job this process runs in, or None outside one (debug executor, tests)."""
    try:
        env = submitit.JobEnvironment()
        env.job_id  # raises outside a job
        return env
    except RuntimeError:
        return None


def export_distributed_environment() -> submitit.helpers.TorchDistributedEnvironment:
    """Export this task's torch.distributed rendezvous (MASTER_ADDR, MASTER_PORT, RANK,
    WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE) from its submitit job environment.

    CUDA_VISIBLE_DEVICES is left as the scheduler set it: every task of a node sees all of the
    node's GPUs and trains on ``cuda:LOCAL_RANK`` (:func:`mm1model.distributed.task_device`).
    submitit's default would narrow it to one GPU per task, and local ranks 1-7 would ask for a
    device they cannot see. ``overwrite``: the job's own values replace any the task inherited
    from the process that submitted it."""
    return submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
