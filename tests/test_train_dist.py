"""FSDP2 data parallelism: 2 CPU processes (gloo, torchrun) follow the 1-process run.

Both runs have the same global batch (8) in micro-batches of 4: with ``micro_batch_size`` set,
the data each micro-batch draws does not depend on the world size, so the 1-process run
accumulates over exactly the two micro-batches the two ranks compute. What remains different is
floating-point order: FSDP2 averages gradients in its reduce-scatter where one process adds the
two halves during backward, and the loss mean is taken in another order. Those are relative
differences of ~1e-7 per step; measured over 16 steps the losses agree to 7e-6 (largest absolute
difference). Tolerance: 1e-4 absolute on each step's loss (~1e-5 relative), 100x smaller than
the median loss change between consecutive steps here, so a wrong batch split (a missing or
duplicated micro-batch, gradients summed instead of averaged, another rank's data) fails.
The 2-process checkpoint then resumes in 1 process (full state dicts) and stays on the track.
"""
from __future__ import annotations

import shutil

import pytest

from mm1model import records
from mm1model.config import to_dict
from mm1model.train import train

from test_train import corpus, run_on_loopback, small, step_rows  # noqa: F401 (corpus is a fixture)


def test_two_process_fsdp2_follows_the_one_process_trajectory(corpus, tmp_path):  # noqa: F811
    common = dict(micro_batch_size=4, steps=16, decay_steps=16, eval_interval=0, checkpoint_interval=8)
    one = train(small(corpus, tmp_path / "one", **common))
    config = small(corpus, tmp_path / "two", **common)
    path = tmp_path / "two.json"
    records.write_json(path, to_dict(config))
    proc = run_on_loopback(2, ["-m", "mm1model.train", str(path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = records.read_json(tmp_path / "two" / "result.json")
    assert records.read_json(tmp_path / "two" / "config.json")["world_size"] == 2
    a, b = step_rows(tmp_path / "one"), step_rows(tmp_path / "two")
    assert [r["step"] for r in b] == list(range(1, 17))
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-4, rel=0)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-2)
        assert y["lr"] == x["lr"] and y["tokens"] == x["tokens"]
    changes = sorted(abs(x["loss"] - y["loss"]) for x, y in zip(a[1:], a[:-1]))
    assert changes[len(changes) // 2] > 1e-2  # the tolerance is 100x below the median step-to-step change
    assert two["final_val_loss"] == pytest.approx(one.final_val_loss, abs=1e-4)
    assert set(two["val_loss_by_source"]) == set(one.val_loss_by_source)

    # The 2-process run's step-8 checkpoint (gathered from the shards) resumes in 1 process.
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "two", moved)
    (moved / "result.json").unlink()
    resumed = train(small(corpus, moved, **common))
    assert [e["step"] for e in records.read_jsonl(moved / "events.jsonl") if e["event"] == "start"] == [0, 8]
    for x, y in zip(a, step_rows(moved)):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-4, rel=0)
    assert resumed.final_val_loss == pytest.approx(one.final_val_loss, abs=1e-4)
