"""The one executor layer of sweeps, launches and the overhead benchmark: where jobs run and how a
job's processes find each other.

* :func:`make_executor`: ``local`` (``submitit.LocalExecutor``: processes on this machine),
  ``slurm`` (``submitit.SlurmExecutor``: sbatch jobs and job arrays) or ``debug``
  (:class:`InProcessExecutor`: each job runs in this process when it is submitted). An unknown
  executor parameter is a ConfigError that lists the valid ones.
* ``replay:RUNS.csv`` (:func:`is_replay`): no training; :mod:`scaling.replay` answers each
  cell from a recorded runs table (the sweep driver builds it).
* :func:`check_slurm` / :func:`slurm_problem`: does a SLURM cluster answer, sacct included?
  Without a working ``sacct``, submitit never learns that a job was killed before it wrote its
  result and waits on it forever; ``scripts/slurm-start.sh`` puts an ``sacct`` stand-in (it
  answers from ``squeue``) on the PATH of ``$SLURM_PREFIX/env.sh``, which
  :func:`load_slurm_env_file` applies.
* :func:`export_distributed_environment`: the rendezvous of a multi-task job (MASTER_ADDR/PORT,
  RANK, WORLD_SIZE, LOCAL_RANK), one path for sweep cells (:class:`scaling.cells.CellJob`) and
  launches (:class:`scaling.launch.TrainJob`). A local job's tasks meet on the loopback address.
* :func:`describe_exit` and :func:`job_failure`: why a process or a job ended, in the words
  ``attempts.json`` records (exit code, signal, peak memory, the exception's last line, timeout);
  :func:`wait_child` (exit status and peak RSS of a child), :func:`peak_rss_bytes` of a live one.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable

import submitit
from submitit.core.utils import FailedJobError

from mm1model.config import ConfigError

EXECUTORS = ("local", "slurm", "debug")
# ``replay:RUNS.csv``: answer each cell from a recorded runs table, no training (scaling.replay).
REPLAY_PREFIX = "replay:"
# What submitit.LocalExecutor reads (its docstring's list, plus setup and stderr_to_stdout); it
# ignores any other key silently, so this layer checks them itself.
LOCAL_PARAMETERS = ("gpus_per_node", "nodes", "setup", "signal_delay_s", "stderr_to_stdout", "tasks_per_node",
                    "timeout_min", "visible_gpus")
SLURM_HINT = "use --dry-run to see the plan, or --executor local to run here"
# The address the tasks of a local (one-machine) job meet on: nothing outside the machine needs to reach them.
LOOPBACK = "127.0.0.1"
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


def is_replay(executor: str) -> bool:
    """Whether ``executor`` names the replay executor, ``replay:RUNS.csv``."""
    return executor.startswith(REPLAY_PREFIX)


def replay_table_path(executor: str) -> Path:
    """The runs table of ``replay:RUNS.csv``; a ConfigError when none is named."""
    path = executor[len(REPLAY_PREFIX):].strip()
    if not path:
        raise ConfigError("--executor replay:RUNS.csv needs the recorded runs table after the colon")
    return Path(path)


def check_executor(executor: str) -> str:
    """``executor`` when it is one of :data:`EXECUTORS` or ``replay:RUNS.csv``; a ConfigError otherwise."""
    if executor not in EXECUTORS and not is_replay(executor):
        raise ConfigError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}, {REPLAY_PREFIX}RUNS.csv")
    if is_replay(executor):
        replay_table_path(executor)
    return executor


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
    from the process that submitted it.

    A local job (every task on this machine) meets on :data:`LOOPBACK` rather than on this host's
    name, which may resolve to an address other machines can reach; gloo and NCCL are pointed at
    the loopback interface too (unless GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME are set)."""
    env = submitit.helpers.TorchDistributedEnvironment()
    local = submitit.JobEnvironment().cluster == "local"
    if local:
        env.master_addr = LOOPBACK
    exported = env.export(set_cuda_visible_devices=False, overwrite=True)
    if local and Path("/sys/class/net/lo").exists():
        for key in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            os.environ.setdefault(key, "lo")
    return exported


# ---------------------------------------------------------------------------------------- processes
def peak_rss_bytes(pid: int) -> int | None:
    """The peak resident memory of a live process (VmHWM), None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def wait_child(pid: int) -> tuple[int, int | None]:
    """Wait for child ``pid``: its wait status and peak RSS in bytes (the kernel's count)."""
    try:
        _, status, usage = os.wait4(pid, 0)
    except ChildProcessError:  # reaped already, by a signal handler of this process
        return 0, None
    return status, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def die_with_parent(parent: int) -> None:
    """Make this process die with its parent (Linux prctl PR_SET_PDEATHSIG): a trainer must not
    outlive the job that holds its cell's lock."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


# ---------------------------------------------------------------------------------------- exits
def format_gb(n_bytes: float | None) -> str:
    """Bytes as GB (10^9) to two decimals, ``unknown`` for None."""
    return "unknown" if n_bytes is None else f"{n_bytes / 1e9:.2f} GB"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(returncode: int | None = None, signum: int | None = None,
                  peak_rss_bytes: float | None = None) -> str:
    """Why a process ended, one line: ``exit code 3``, ``exit code 143 (128 + SIGTERM)``,
    ``killed by SIGSEGV``, or for SIGKILL (what the kernel's OOM killer sends)
    ``killed by SIGKILL, probably out of memory: peak RSS 1.23 GB``. ``peak_rss_bytes``: the
    process's peak resident memory, where known."""
    if signum is not None:
        if signum == signal.SIGKILL:
            return f"killed by SIGKILL, probably out of memory: peak RSS {format_gb(peak_rss_bytes)}"
        return f"killed by {signal_name(signum)}"
    if returncode is not None and returncode < 0:
        return describe_exit(signum=-returncode, peak_rss_bytes=peak_rss_bytes)
    if returncode is not None and returncode > 128 and signal_name(returncode - 128).startswith("SIG"):
        return f"exit code {returncode} (128 + {signal_name(returncode - 128)})"
    return f"exit code {returncode}"


def parse_slurm_memory(text: str) -> float | None:
    """sacct's MaxRSS (``123456K``, ``1.5G``, plain bytes) in bytes; None when empty."""
    text = (text or "").strip()
    if not text:
        return None
    units = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
    try:
        if text[-1].upper() in units:
            return float(text[:-1]) * units[text[-1].upper()]
        return float(text)
    except ValueError:
        return None


def slurm_accounting(job_id: str) -> dict[str, str]:
    """What ``sacct`` says of a SLURM job: its ``State`` and, where accounting records them,
    ``ExitCode`` and the largest ``MaxRSS`` over its steps. {} when sacct does not answer."""
    try:
        out = subprocess.run(["sacct", "-j", str(job_id), "-o", "JobID,State,ExitCode,MaxRSS", "--parsable2"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    lines = [line.split("|") for line in out.stdout.strip().splitlines()]
    if out.returncode != 0 or len(lines) < 2:
        return {}
    header, rows = lines[0], [dict(zip(lines[0], row)) for row in lines[1:]]
    main = next((r for r in rows if r.get("JobID") == str(job_id)), rows[0])
    info = {key: main[key] for key in ("State", "ExitCode") if main.get(key)}
    rss = [parse_slurm_memory(r.get("MaxRSS", "")) for r in rows]
    rss = [r for r in rss if r is not None]
    if "MaxRSS" in header and rss:
        info["MaxRSS"] = str(max(rss))
    return info


def last_traceback_line(text: str) -> str | None:
    """The last line of a traceback (``ValueError: bad thing``), or None for an empty one."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else None


def raised_line(job: Any) -> str | None:
    """The last traceback line of a finished submitit job whose callable raised, else None.
    Reads the job's result file only when there is one (submitit would wait for it otherwise)."""
    paths = getattr(job, "paths", None)
    if paths is None or not paths.result_pickle.exists():
        return None
    try:
        error = job.exception()
    except Exception as err:  # noqa: BLE001 - an unreadable result is itself the answer
        return f"{type(err).__name__}: {err}".splitlines()[0]
    if not isinstance(error, FailedJobError):
        return None
    # submitit's message: a header, the trace between two lines of dashes, then where the logs are
    blocks = re.split(r"\n-{10,}\n", str(error))
    return last_traceback_line(blocks[1] if len(blocks) > 2 else str(error))


def job_failure(job: Any, peak_rss_bytes: float | None = None) -> str:
    """Why a submitit job ended without its callable recording an outcome, one line.

    SLURM: sacct's state (``timed out`` for TIMEOUT, ``out of memory`` for OUT_OF_MEMORY), exit
    code and MaxRSS. Any executor: the last line of the job's traceback when it raised.
    ``peak_rss_bytes``: the peak memory the job recorded itself, used where sacct has none."""
    parts = []
    if isinstance(job, submitit.SlurmJob):
        info = slurm_accounting(job.job_id)
        state = info.get("State", "").split(" ")[0]
        rss = parse_slurm_memory(info.get("MaxRSS", "")) or peak_rss_bytes
        code, _, signum = info.get("ExitCode", "").partition(":")
        if state == "TIMEOUT":
            parts.append("timed out: the job reached its SLURM time limit")
        elif state == "OUT_OF_MEMORY":
            parts.append(f"killed by SLURM, out of memory: peak RSS {format_gb(rss)}")
        elif signum.isdigit() and int(signum):
            parts.append(f"SLURM state {state}, " + describe_exit(signum=int(signum), peak_rss_bytes=rss))
        elif state:
            parts.append(f"SLURM state {state}" + (f", exit code {code}" if code else ""))
    raised = raised_line(job)
    if raised is not None:
        parts.append(raised)
    if not parts:
        parts.append("the job process died without a result")
    if peak_rss_bytes is not None and "peak RSS" not in parts[-1]:
        parts.append(f"peak RSS {format_gb(peak_rss_bytes)} when last recorded")
    return "; ".join(parts)
