"""`scaling sweep --executor slurm` on the real single-node cluster (scripts/slurm-start.sh).

Skipped (with the reason) when no cluster answers; a failure under CI=true.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mm1model import records
from scaling import cells
from scaling.runs import collect_runs
from scaling.sweep import prepare_sweep_dir, run_sweep
from scaling.sweep_plan import SweepConfig, plan_sweep

pytestmark = pytest.mark.slurm


def tiny(corpus: str, out: Path, executor: str, lrs=(1e-3, 3e-3), seeds: int = 2, steps: int = 12,
         **extra) -> SweepConfig:
    train = {"batch_size": 2, "data": {"seq_len": 64, "corpus": corpus}, "eval_interval": 0,
             "eval_sequences": 4, "checkpoint_interval": 4, "log_interval": 1000}
    return SweepConfig(sizes=("100K",), lrs=lrs, seeds=seeds, steps=steps, executor=executor, max_extend=0,
                       max_parallel=2, out=str(out), train=train, **extra)


def starts(cell: Path) -> list[dict]:
    return [e for e in records.read_jsonl(cell / "events.jsonl") if e["event"] == "start"]


def test_slurm_sweep_completes_and_equals_local(slurm_cluster, corpus, tmp_path):
    slurm = run_sweep(tiny(corpus, tmp_path / "slurm", "slurm"), progress=False, echo=lambda _: None)
    local = run_sweep(tiny(corpus, tmp_path / "local", "local"), progress=False, echo=lambda _: None)
    a, b = collect_runs(slurm.dir), collect_runs(local.dir)
    assert len(a) == 4 and (a.status == "ok").all()
    # every cell ran as a SLURM job (its job id is on record) exactly once
    for cell in sorted(slurm.dir.glob("100K/*")):
        [attempt] = cells.read_attempts(cell)
        assert attempt["job_id"] and attempt["job_id"].split("_")[0].isdigit()
    # same seed, same data, 1 thread: the scheduler changes nothing, bit for bit
    assert a.loss.tolist() == b.loss.tolist()
    assert a[["lr", "seed"]].values.tolist() == b[["lr", "seed"]].values.tolist()


def test_slurm_failed_cell_is_retried_and_recorded(slurm_cluster, corpus, tmp_path):
    plan = plan_sweep(tiny(corpus, tmp_path / "fail", "slurm", lrs=(3e-3,), seeds=1, max_retries=1))
    prepare_sweep_dir(plan)
    [cell] = plan.out.glob("100K/*")
    spec = records.read_json(cell / "cell.json")
    spec["train"]["data"]["corpus"] = str(tmp_path / "no-such-corpus")
    records.write_json(cell / "cell.json", spec)
    result = run_sweep(plan, progress=False, echo=lambda _: None)
    assert result.gave_up == [cell]
    attempts = cells.read_attempts(cell)
    assert [a["outcome"] for a in attempts] == ["failed", "failed"]
    assert len({a["job_id"] for a in attempts}) == 2  # the retry was a new job
    assert "no-such-corpus" in attempts[-1]["error"]
    assert collect_runs(plan.out).status.tolist() == ["failed"]


def test_slurm_timeout_requeues_and_resumes_from_checkpoint(slurm_cluster, corpus, tmp_path):
    import submitit

    config = tiny(corpus, tmp_path / "req", "slurm", lrs=(3e-3,), seeds=1, steps=80)
    done: dict = {}
    driver = threading.Thread(target=lambda: done.setdefault(
        "result", run_sweep(config, progress=False, echo=lambda _: None)))
    driver.start()
    cell = tmp_path / "req" / "100K" / "lr=3.00e-03_seed=0"
    deadline = time.time() + 90
    while time.time() < deadline:
        events = records.read_jsonl(cell / "events.jsonl")
        if any(e["event"] == "checkpoint" and e["step"] >= 8 for e in events):
            break
        time.sleep(0.1)
    else:
        pytest.fail("no checkpoint within 90 s")
    job_id = records.read_json(cell / "lock")["job_id"]
    folder = tmp_path / "req" / ".submitit" / "slurm" / "%j"
    submitit.SlurmJob(folder=folder, job_id=job_id)._interrupt(timeout=True)
    driver.join(timeout=150)
    assert not driver.is_alive(), "the sweep did not finish after the requeue"
    assert collect_runs(config.out).status.tolist() == ["ok"]
    first, second = starts(cell)
    assert first["step"] == 0 and second["resumed"] and second["step"] >= 8
    attempts = cells.read_attempts(cell)
    assert [a["outcome"] for a in attempts] == ["preempted", "ok"]
    assert attempts[0]["job_id"] == attempts[1]["job_id"] == job_id  # requeued, not resubmitted
