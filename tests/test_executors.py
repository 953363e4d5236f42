"""The executor layer (scaling.executors): one distributed-environment path for sweep cells and
launches, the executors and their parameters, the SLURM reachability check. Nothing here needs
a cluster or a GPU: a SLURM task's environment is simulated, and fake sbatch/sinfo/sacct stand
on PATH where a check needs them."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import submitit
import torch

from mm1model.config import ConfigError
from mm1model.distributed import task_device
from scaling import cells, launch
from scaling.executors import (InProcessExecutor, check_slurm, export_distributed_environment, make_executor,
                               slurm_problem)
from scaling.launch import TrainJob, launch_executor, prepare_launch
from scaling.plan import slurm_parameters
from scaling.sweep_plan import executor_parameters, load_sweep_config, plan_sweep, slurm_job_parameters

ROOT = Path(__file__).resolve().parents[1]
EXPORTED = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
ALL_GPUS = "0,1,2,3,4,5,6,7"


@pytest.fixture
def slurm_task(monkeypatch):
    """This process as local rank 3 of an 8-task job on one 8-GPU node, as SLURM starts it."""
    for key in (*EXPORTED, "_TEST_CLUSTER_", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.setenv(key, "unset")  # recorded first, so whatever the test exports is undone
        monkeypatch.delenv(key)
    for key, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8",
                       "SLURM_PROCID": "3", "SLURM_LOCALID": "3", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1",
                       "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "gpu-node[01]", "SLURM_STEP_NODELIST": "gpu-node[01]",
                       "SLURM_TASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "8",
                       "CUDA_VISIBLE_DEVICES": ALL_GPUS}.items():
        monkeypatch.setenv(key, value)


# ------------------------------------------------------------------------------------ rendezvous
def test_export_leaves_every_gpu_of_the_node_visible(slurm_task):
    env = export_distributed_environment()
    assert (env.rank, env.local_rank, env.world_size) == (3, 3, 8)
    assert {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR")} == \
        {"RANK": "3", "LOCAL_RANK": "3", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "gpu-node01"}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ALL_GPUS
    assert task_device("cuda", int(os.environ["LOCAL_RANK"])) == torch.device("cuda", 3)


def test_a_local_jobs_tasks_meet_on_loopback(monkeypatch):
    """A local job's rendezvous needs nothing outside this machine: MASTER_ADDR is 127.0.0.1
    (submitit would use the host's name) and gloo/NCCL use the loopback interface."""
    for key in (*EXPORTED, "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "SLURM_JOB_ID"):
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    for key, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "4242", "SUBMITIT_LOCAL_NTASKS": "2",
                       "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1", "SUBMITIT_LOCAL_NODEID": "0",
                       "SUBMITIT_LOCAL_JOB_NUM_NODES": "1"}.items():
        monkeypatch.setenv(key, value)
    env = export_distributed_environment()
    assert (env.rank, env.world_size, env.master_addr) == (1, 2, "127.0.0.1")
    assert {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")} == \
        {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    if Path("/sys/class/net/lo").exists():
        assert os.environ["GLOO_SOCKET_IFNAME"] == os.environ["NCCL_SOCKET_IFNAME"] == "lo"


def test_submitits_default_export_would_leave_one_gpu(slurm_task):
    """What sweep cells did before: rank 3 would see GPU 3 alone and ask for cuda:3 of one."""
    submitit.helpers.TorchDistributedEnvironment().export()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    with pytest.raises(ConfigError, match="local rank 3 sees 1 GPU"):
        task_device("cuda", int(os.environ["LOCAL_RANK"]))


def test_export_replaces_a_rendezvous_inherited_from_the_submitter(slurm_task, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    export_distributed_environment()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"]) == ("3", "8")


def test_a_sweep_cell_and_a_launch_task_train_on_their_own_gpu(slurm_task, monkeypatch, tmp_path):
    """Both jobs go through the one export: the trainer of rank 3 sees 8 GPUs and gets cuda:3."""
    seen = []

    def fake_train(config):
        seen.append((os.environ["CUDA_VISIBLE_DEVICES"], task_device("cuda", int(os.environ["LOCAL_RANK"]))))
        return Outcome()

    @dataclasses.dataclass
    class Outcome:
        status: str = "ok"

    monkeypatch.setattr(cells, "train", fake_train)
    monkeypatch.setattr(launch, "train", fake_train)
    monkeypatch.setattr(launch, "load_config", lambda path: path)
    cell = tmp_path / "cell"
    cells.write_cell(cell, "100K", 1e-3, 0, {"size": "100K", "optimizer": {"lr": 1e-3}})
    assert cells.CellJob()(str(cell)) == {"status": "ok", "path": str(cell)}  # rank 3 keeps no books
    assert not (cell / "attempts.json").exists()
    for key in EXPORTED:
        monkeypatch.delenv(key)
    assert TrainJob()(str(tmp_path / "config.json")) == {"status": "ok"}
    assert seen == [(ALL_GPUS, torch.device("cuda", 3))] * 2


# ------------------------------------------------------------------------------------ executors
def test_unknown_executor_parameters_list_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown local executor parameter.*time_limit; valid: .*timeout_min"):
        make_executor("local", tmp_path, {"time_limit": 3})
    with pytest.raises(ConfigError, match=r"slurm executor: Unavailable parameter\(s\): \['gpu_count'\].*partition") as err:
        make_executor("slurm", tmp_path, {"gpu_count": 8})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown executor 'pbs'; valid: local, slurm, debug"):
        make_executor("pbs", tmp_path)
    with pytest.raises(ConfigError, match="debug executor takes no parameters"):
        make_executor("debug", tmp_path, {"timeout_min": 1})


def test_debug_executor_runs_jobs_in_this_process(tmp_path):
    executor = make_executor("debug", tmp_path)
    assert isinstance(executor, InProcessExecutor)
    job = executor.submit(os.getpid)
    assert job.done() and job.result() == os.getpid()
    assert [j.result() for j in executor.map_array(pow, [2, 3], [3, 2])] == [8, 9]
    assert not any(tmp_path.iterdir())  # an in-process job leaves no submitit files


def test_sweep_slurm_jobs_signal_as_early_as_the_planner_says(tmp_path):
    plan = plan_sweep(load_sweep_config(ROOT / "sweeps" / "mm1.toml", out=str(tmp_path / "mm1")))
    params = slurm_job_parameters(plan)
    assert params == {"job_name": "sweep-mm1", "nodes": 1, "ntasks_per_node": 8, "cpus_per_task": 8, "time": 1440,
                      "signal_delay_s": params["signal_delay_s"], "gpus_per_node": 8, "mem": "921600MB",
                      "array_parallelism": 8}
    assert params["signal_delay_s"] >= 120  # was a fixed 30 s: too short to checkpoint a 1.2B
    planner = slurm_parameters(SimpleNamespace(gpus_per_node=8, cpus_per_task=8, time="1440", device="cpu",
                                               partition=None, mem_per_node_gb=None), 1, "x", step_time_s=100.0)
    assert planner["signal_delay_s"] == 300  # the rule it follows: three step times, at least 120 s
    executor = make_executor("slurm", tmp_path / ".submitit", params)  # submitit takes every key
    assert executor.parameters["signal_delay_s"] == params["signal_delay_s"]
    cpu = plan_sweep(load_sweep_config(None, sizes=("100K",), lrs=(1e-3,), steps=3, executor="slurm"))
    assert slurm_job_parameters(cpu)["signal_delay_s"] == 120 and "gpus_per_node" not in slurm_job_parameters(cpu)
    local = plan_sweep(load_sweep_config(None, sizes=("100K",), lrs=(1e-3,), steps=3, executor="local"))
    assert executor_parameters(local) == {"timeout_min": 7 * 24 * 60}


def test_a_local_gpu_launch_lets_its_tasks_see_the_gpus(tmp_path):
    # submitit.LocalExecutor sets CUDA_VISIBLE_DEVICES="" unless it is told how many GPUs a job has
    gpu = prepare_launch("100K", reference="mm1", executor="local", out=tmp_path / "g", plan={"device": "cuda"})
    assert launch_executor(gpu).parameters["gpus_per_node"] == 1
    cpu = prepare_launch("100K", reference="mm1", executor="local", out=tmp_path / "c")
    assert "gpus_per_node" not in launch_executor(cpu).parameters


# ------------------------------------------------------------------------------------ SLURM check
def fake_tools(tmp_path: Path, monkeypatch, sinfo: str = "echo up", sacct: str | None = "echo 'JobID|State|NodeList'"):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tools = {"sbatch": "exit 0", "sinfo": sinfo, **({"sacct": sacct} if sacct is not None else {})}
    (bin_dir / "sacct").unlink(missing_ok=True)
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_slurm_check_says_what_is_missing_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert slurm_problem() == "no SLURM on this machine (sbatch/sinfo not on PATH)"
    with pytest.raises(ConfigError) as err:
        check_slurm()
    assert str(err.value) == ("--executor slurm: no SLURM on this machine (sbatch/sinfo not on PATH); "
                              "use --dry-run to see the plan, or --executor local to run here")
    fake_tools(tmp_path, monkeypatch, sinfo="echo down")
    assert slurm_problem() == "no SLURM cluster answers (no partition is up)"
    fake_tools(tmp_path, monkeypatch, sacct=None)
    assert slurm_problem().startswith("no sacct on PATH: submitit would wait forever")
    fake_tools(tmp_path, monkeypatch, sacct="echo 'Slurm accounting storage is disabled' >&2; exit 1")
    problem = slurm_problem()
    assert problem.startswith("sacct fails (Slurm accounting storage is disabled)") and "env.sh" in problem
    fake_tools(tmp_path, monkeypatch)
    assert slurm_problem() is None
    check_slurm()
