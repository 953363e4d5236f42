"""Sharded checkpoints: nothing executes on load, a kill mid-save loses nothing, and a run saved
by 4 processes resumes in 2 on the same trajectory."""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mm1model import records
from mm1model.checkpoint import checkpoint_paths, read_trainer_state
from mm1model.config import ConfigError, to_dict
from mm1model.train import train

from test_train import REPO, corpus, small, step_rows  # noqa: F401 (corpus is a fixture)


class _Payload:
    """Unpickling this touches a marker file: proof that a load executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_an_old_pickle_checkpoint_is_refused_and_never_unpickled(corpus, tmp_path):  # noqa: F811
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    config = small(corpus, run_dir, steps=2, eval_sequences=8)
    planted = run_dir / "checkpoints" / "step_00000001.pt"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(pickle.dumps({"step": 1, "model": _Payload(marker)}))
    with pytest.raises(ConfigError, match=r"step_00000001.pt is a checkpoint in the old single-file pickle format"):
        train(config)
    assert not marker.exists()
    assert not (run_dir / "result.json").exists()  # a refusal, not a failed run


def test_a_planted_metadata_pickle_is_refused_and_the_previous_checkpoint_used(corpus, tmp_path):  # noqa: F811
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    config = small(corpus, run_dir, steps=6, checkpoint_interval=2, eval_sequences=8)
    train(config)
    (run_dir / "result.json").unlink()  # make it resumable again
    newest, previous = checkpoint_paths(run_dir)[:2]
    (newest / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.warns(RuntimeWarning, match=r"step_00000004 is unreadable .*refusing to load pathlib.Path.touch"):
        result = train(config)
    assert not marker.exists()
    starts = [e for e in records.read_jsonl(run_dir / "events.jsonl") if e["event"] == "start"]
    assert starts[-1]["step"] == int(previous.name.split("_")[1]) == 2
    assert result.status == "ok"


def test_a_save_killed_midway_leaves_the_previous_checkpoint_in_charge(corpus, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    config = small(corpus, run_dir, steps=5, checkpoint_interval=2, eval_sequences=8)
    train(config)
    (run_dir / "result.json").unlink()
    # a save of step 6 that died before its rename: shards on disk, never renamed
    shutil.copytree(checkpoint_paths(run_dir)[0], run_dir / "checkpoints" / ".step_00000006.partial")
    assert [p.name for p in checkpoint_paths(run_dir)] == ["step_00000004", "step_00000002"]
    state = read_trainer_state(checkpoint_paths(run_dir)[0])
    assert state["step"] == 4 and state["world_size"] == 1 and set(state["lanes"]) == {"0"}
    assert isinstance(state["rng"][0]["torch"], list)  # RNG states are JSON, not pickled objects


def _torchrun(nproc: int, config_path: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                             str(nproc), "-m", "mm1model.train", str(config_path)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow
def test_saved_by_4_processes_killed_then_resumed_by_2_follows_a_straight_run(corpus, tmp_path):  # noqa: F811
    """torchrun x4, checkpoint at step 10, kill -9, torchrun x2 on the same run directory, against
    a straight run of 2 processes (cheaper on 2 cores than one of 4; the data order does not
    depend on the world size).

    Tolerance: 1e-4 nats on every step's loss, as for 2 processes against 1
    (tests/test_train_dist.py): the world size changes the order of the gradient reductions, so
    the runs differ by float rounding (about 1e-6 here), 100x below the median step-to-step change.
    The same world size on CPU is bitwise (tests/test_train.py's kill -9 test)."""
    common = dict(micro_batch_size=2, steps=16, decay_steps=16, eval_interval=0, checkpoint_interval=10,
                  eval_sequences=16)
    paths = {}
    for name in ("straight", "killed"):
        config = small(corpus, tmp_path / name, **common)
        paths[name] = tmp_path / f"{name}.json"
        records.write_json(paths[name], to_dict(config))
    straight = _torchrun(2, paths["straight"])
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-3000:]

    killed_dir = tmp_path / "killed"
    proc = _torchrun(4, paths["killed"])
    deadline = time.time() + 600
    while not checkpoint_paths(killed_dir) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    # torchrun and its 4 workers (each in a session of its own), no handler runs
    subprocess.run(["pkill", "-9", "-f", str(paths["killed"])], check=False)
    proc.wait()
    while subprocess.run(["pgrep", "-f", str(paths["killed"])], capture_output=True).returncode == 0:
        time.sleep(0.05)
    assert not (killed_dir / "result.json").exists()
    assert read_trainer_state(checkpoint_paths(killed_dir)[0])["world_size"] == 4

    resumed = _torchrun(2, paths["killed"])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    starts = [e for e in records.read_jsonl(killed_dir / "events.jsonl") if e["event"] == "start"]
    assert (starts[-1]["step"], starts[-1]["world_size"], starts[-1]["resumed"]) == (10, 2, True)
    a, b = step_rows(tmp_path / "straight"), step_rows(killed_dir)
    assert [r["step"] for r in b] == list(range(1, 17))
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-4, rel=0)
        assert y["lr"] == x["lr"] and y["tokens"] == x["tokens"]
    ok = [records.read_json(tmp_path / n / "result.json") for n in ("straight", "killed")]
    assert ok[1]["final_val_loss"] == pytest.approx(ok[0]["final_val_loss"], abs=1e-4)
