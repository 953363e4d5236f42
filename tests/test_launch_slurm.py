"""A launch on the real single-node SLURM cluster: 2 tasks (FSDP2 over gloo) train a CPU size,
the job is interrupted through submitit as at a time limit, requeued, resumes from its
checkpoint and ends with the same final loss as an uninterrupted run of the same launch through
``--executor local`` (the same job code, 2 local processes). The local launch starts once per
module and runs alongside the SLURM job; without SLURM its own test still waits for it."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mm1model import records
from scaling.cli import main
from scaling.launch import launch, launch_status, prepare_launch

pytestmark = pytest.mark.slow

# 100K at 4 sequences of 128 tokens: about a second per step for each of the 2 ranks.
RECIPE = {"steps": 20, "batch_size": 4, "seq_len": 128, "warmup_steps": 2}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    from mm1model.data import prepare_corpus

    out = tmp_path_factory.mktemp("launch-corpus")
    prepare_corpus(out, synthetic=True, echo=lambda line: None)
    return str(out)


def _prepared(executor: str, out: Path, corpus: str, **plan):
    return prepare_launch("100K", reference="mm1", executor=executor, out=out, recipe=RECIPE,
                          plan={"gpus_per_node": 2, "time": "00:10:00", **plan},
                          train={"eval_interval": 0, "checkpoint_interval": 0, "data": {"corpus": corpus}})


@pytest.fixture(scope="module")
def local_job(corpus, tmp_path_factory):
    """The uninterrupted reference: the same launch through ``--executor local`` (started, not awaited)."""
    out = tmp_path_factory.mktemp("launch-local") / "local"
    return out, launch(_prepared("local", out, corpus))


def _wait_for_step(run_dir: Path, step: int, timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = [r for r in records.read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
        if rows and rows[-1]["step"] >= step:
            return rows[-1]["step"]
        time.sleep(0.2)
    raise AssertionError(f"no step {step} in {run_dir} after {timeout} s")


@pytest.mark.slurm
def test_interrupted_slurm_launch_resumes_to_the_uninterrupted_loss(slurm_cluster, corpus, local_job, tmp_path):
    _, reference = local_job  # runs alongside the SLURM job
    prepared = _prepared("slurm", tmp_path / "slurm", corpus, device="cpu", partition=slurm_cluster.partition)
    assert prepared.plan.slurm["ntasks_per_node"] == 2 and prepared.plan.world_size == 2
    job = launch(prepared)
    assert records.read_json(tmp_path / "slurm" / "jobs.json")[0]["job_id"] == str(job.job_id)
    assert launch_status(tmp_path / "slurm")["state"] in ("submitted", "running")

    _wait_for_step(tmp_path / "slurm" / "run", 3)
    job._interrupt(timeout=True)  # USR2, as SLURM sends before a time limit
    results = job.results()
    expected = reference.results()[0]

    assert results[0]["status"] == expected["status"] == "ok"
    assert results[0]["steps"] == 20
    assert results[0]["final_val_loss"] == expected["final_val_loss"]  # bit for bit on CPU
    events = records.read_jsonl(tmp_path / "slurm" / "run" / "events.jsonl")
    starts = [e for e in events if e["event"] == "start"]
    assert [e["world_size"] for e in starts] == [2, 2]
    assert [e["resumed"] for e in starts] == [False, True]
    signal = next(e for e in events if e["event"] == "signal")
    assert starts[1]["step"] == signal["step"] >= 3  # resumed where the signal checkpointed
    status = launch_status(tmp_path / "slurm")
    assert status["state"] == "ok" and status["step"] == 20
    assert status["final_val_loss"] == expected["final_val_loss"]


def test_local_launch_trains_over_two_gloo_processes(local_job):
    out, job = local_job
    results = job.results()
    assert len(results) == 2 and results[0]["final_val_loss"] == results[1]["final_val_loss"]
    assert results[0]["status"] == "ok" and results[0]["steps"] == 20
    starts = [e for e in records.read_jsonl(out / "run" / "events.jsonl") if e["event"] == "start"]
    assert [(e["world_size"], e["resumed"]) for e in starts] == [(2, False)]
    assert records.read_json(out / "jobs.json")[0]["tasks"] == 2
    plan = records.read_json(out / "plan.json")
    assert plan["executor"] == "local" and plan["plan"]["device"] == "cpu"
    assert plan["recipe"]["origins"]["steps"] == "user" and plan["recipe"]["origins"]["peak_lr"] == "paper"
    status = launch_status(out)
    assert status["state"] == "ok" and status["final_val_loss"] == results[0]["final_val_loss"]
    shown = CliRunner().invoke(main, ["status", str(out)])  # `scaling status` reads a launch directory too
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("ok: job ") and f"final val loss {results[0]['final_val_loss']:.4f}" in shown.output
