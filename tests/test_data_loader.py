"""Loader workers: real DataLoader worker processes, exact resumption, every record once."""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from mm1model import records
from mm1model.config import ConfigError
from mm1model.data import split_of
from mm1model.data.loader import LaneBatches
from mm1model.data.stream import PackedStream, clear_document_cache
from mm1model.tokens import EOD_ID, IMAGE_END_ID
from mm1model.train import train

from test_data import TEXT_ONLY, _config, _numbered_corpus
from test_train import corpus, events, small, step_rows  # noqa: F401 (corpus is a fixture)

FIELDS = ("input_ids", "labels", "doc_ids", "position_ids", "source")
BUNDLED_RECORDS = 7012  # records of the bundled corpus (its manifest's items, all sources)


def _sharded_corpus(out: Path, n: int, per_shard: int) -> Path:
    """The numbered corpus of test_data, its text source in shards of ``per_shard`` records."""
    _numbered_corpus(out, n=60)
    (out / "text" / "prose.jsonl").unlink()
    for first in range(0, n, per_shard):
        lines = "".join(f'{{"id": "text-{i}", "text": "record {i} alone."}}\n'
                        for i in range(first, min(n, first + per_shard)))
        (out / "text" / f"prose-{first // per_shard:05d}.jsonl").write_text(lines)
    return out


def _sequences(steps: list[list[dict]]) -> list[dict]:
    """Every sequence of some steps, in order (step, lane, row), with its images."""
    out = []
    for step in steps:
        for batch in step:
            n_images = 0
            for row in range(batch["input_ids"].shape[0]):
                count = int((batch["input_ids"][row] == IMAGE_END_ID).sum())
                out.append({**{f: batch[f][row] for f in FIELDS},
                            "images": batch["images"][n_images:n_images + count]})
                n_images += count
    return out


def test_a_resumed_loader_with_two_workers_yields_the_same_next_100_sequences(tmp_path):
    # captions and interleaved documents permuted whole (60 records); text read through a shuffle buffer
    config = dataclasses.replace(_config(_sharded_corpus(tmp_path / "c", 120, 9), seed=5), num_workers=2, prefetch=3,
                                 shuffle_buffer=70)
    first = LaneBatches(config, lanes=[0, 1], n_lanes=2, micro_size=2)
    for _ in range(7):  # an odd number: the next step is worker 1's
        first.next_step()
    state = json.loads(json.dumps({str(k): v for k, v in first.lane_states().items()}))
    assert state["0"]["next_worker"] == 1 and len(state["0"]["workers"]) == 2
    expected = _sequences([first.next_step() for _ in range(25)])  # 25 steps x 2 lanes x 2 = 100
    first.close()  # the workers die with what they had prefetched: the state does not need it
    clear_document_cache()
    resumed = LaneBatches(config, lanes=[0, 1], n_lanes=2, micro_size=2)
    resumed.load_lane_states(state)
    got = _sequences([resumed.next_step() for _ in range(25)])
    resumed.close()
    assert len(got) == len(expected) == 100
    for a, b in zip(expected, got):
        assert all(torch.equal(a[f], b[f]) for f in FIELDS)
        assert len(a["images"]) == len(b["images"]) and all(torch.equal(x, y) for x, y in zip(a["images"], b["images"]))
    # sequences really come from both sub-streams, not from one worker twice
    assert not torch.equal(expected[0]["input_ids"], expected[4]["input_ids"])
    with pytest.raises(ConfigError, match="ran 2 loader workers, this run 0"):
        LaneBatches(dataclasses.replace(config, num_workers=0), [0, 1], 2, 2).load_lane_states(state)


@pytest.mark.parametrize("shuffle_buffer", [10_000, 5])
def test_two_ranks_times_two_workers_see_every_record_once_per_epoch(tmp_path, shuffle_buffer):
    numbered = _sharded_corpus(tmp_path / "c", 60, 9)
    config = dataclasses.replace(_config(numbered, TEXT_ONLY, seq_len=96), num_workers=2, shuffle_buffer=shuffle_buffer)
    train = [i for i in range(60) if split_of(f"text-{i}") == "train"]
    seen = []
    for rank in range(2):
        loader = LaneBatches(config, lanes=[rank], n_lanes=2, micro_size=1)
        streams = loader.streams[rank]
        docs, text = [[], []], ["", ""]
        while any(s.cursor["text"]["epoch"] == 0 for s in streams):
            worker = loader.next_worker
            row = {f: t[0] for f, t in loader.next_step()[0].items() if f != "images"}
            for doc in row["doc_ids"].unique().tolist():
                ids = row["input_ids"][row["doc_ids"] == doc]
                text[worker] += streams[0].tokenizer.decode(ids[ids > IMAGE_END_ID].tolist())
                if ids[-1] == EOD_ID:
                    docs[worker].append(int(text[worker].split()[1]))
                    text[worker] = ""
        loader.close()
        for worker, stream in enumerate(streams):
            # the sequence that finished a sub-stream's epoch may have gone on into the next one
            seen += docs[worker][:len(range(stream.shard, len(train), stream.num_shards))]
    assert sorted(seen) == train  # 4 sub-streams (2 ranks x 2 workers): every train record once


class _Requeued(Exception):
    """What submitit's handler does after our checkpoint, in short: leave the training loop."""


def _requeue(signum, frame):
    raise _Requeued(signum)


def test_a_run_with_workers_preempted_through_its_process_group_resumes_exactly(corpus, tmp_path):  # noqa: F811
    """SIGTERM to the trainer and its loader workers (as SLURM signals a whole job step): the
    workers ignore it, the trainer checkpoints and leaves; the resumed run's steps equal an
    uninterrupted run's."""
    def config(name):
        return small(corpus, tmp_path / name, steps=6, batch_size=8, micro_batch_size=4, eval_interval=0,
                     eval_sequences=8, checkpoint_interval=2, data={"corpus": corpus, "seq_len": 128, "num_workers": 2})

    train(config("straight"))
    run_dir = tmp_path / "preempted"

    exit_codes = []

    def preempt():
        while not step_rows(run_dir):
            time.sleep(0.005)
        workers = multiprocessing.active_children()
        for pid in [p.pid for p in workers] + [os.getpid()]:
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)
        exit_codes.extend(p.exitcode for p in workers)

    previous = signal.signal(signal.SIGTERM, _requeue)
    killer = threading.Thread(target=preempt)
    try:
        killer.start()
        with pytest.raises(_Requeued):
            train(config("preempted"))
    finally:
        killer.join()
        signal.signal(signal.SIGTERM, previous)
    assert len(exit_codes) == 2 and -signal.SIGTERM not in exit_codes  # None: alive; 0: shut down by the loader
    stopped = events(run_dir, "signal")[0]["step"]
    assert 1 <= stopped < 6
    state = records.read_json(run_dir / "checkpoints" / f"step_{stopped:08d}" / "trainer.json")
    assert state["lanes"]["0"]["next_worker"] == stopped % 2
    train(config("preempted"))
    assert events(run_dir, "start")[1]["step"] == stopped
    assert step_rows(run_dir) == step_rows(tmp_path / "straight")


def test_a_lanes_index_memory_does_not_grow_with_the_corpus(tmp_path):
    """Text sources of 10x and 100x the bundled corpus's records, in shards of 10,000: a stream
    holds its buffer and its half of one shard's index, so its index bytes stay put; permuting
    every record (what a source of at most shuffle_buffer records gets) would hold all of them."""
    held, nbytes = [], []
    for scale in (10, 100):
        big = _sharded_corpus(tmp_path / f"x{scale}", scale * BUNDLED_RECORDS, 10_000)
        config = _config(big, TEXT_ONLY, seq_len=64, shuffle_buffer=1000)
        stream = PackedStream(config, rank=1, world_size=2)
        for _ in range(3):
            next(stream)
        order = stream._orders["text", 0]
        held.append(len(order.buffer) + len(order.shard_refs))
        nbytes.append(stream.index_bytes())
        clear_document_cache()
    # 1000 in the buffer and this stream's half of one shard's ~9,500 train records, at either scale
    assert all(1000 + 4600 < h < 1000 + 4900 for h in held), held
    assert abs(nbytes[1] - nbytes[0]) < 0.02 * nbytes[0], nbytes  # a digit more per key, more files
    assert all(800_000 < b < 1_200_000 for b in nbytes), nbytes  # whole-permuted: ~340 MB at 100x


def test_the_data_bench_reports_supply_per_worker_count_beside_the_planners_demand(corpus, capsys):  # noqa: F811
    from mm1model.bench import main as bench_main
    from scaling.plan import PlanConfig, make_plan

    assert bench_main(["--data", "--json", "--workers", "0,1", "--seq-len", "256", "--image-size", "32",
                       "--image-tokens", "16", "--batch-size", "2", "--steps", "2", "--sizes", "9M", "--corpus",
                       corpus]) == 0
    supply0, supply1, need = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [supply0["workers"], supply1["workers"]] == [0, 1] and supply0["sequences"] == 4
    assert supply0["sequences_per_s"] > 0 and supply0["images_per_s"] >= 0
    plan = make_plan(PlanConfig(size="9M", seq_len=256, images_per_sequence=need["images_per_sequence"], nodes=1))
    assert not plan.activation_checkpointing  # the planner's step time is the bench's where it keeps activations
    assert need["step_time_s"] == pytest.approx(plan.step_time_s, rel=1e-12) and need["gpus"] == 8
    assert need["sequences_per_s"] == pytest.approx(512 / 8 / plan.step_time_s)  # MM1's batch over 8 ranks
    assert need["busy"]["1"] == pytest.approx(min(1.0, supply1["sequences_per_s"] / need["sequences_per_s"]))
    # in the training process, packing and the step take turns
    assert need["busy"]["0"] == pytest.approx(supply0["sequences_per_s"] / (supply0["sequences_per_s"] + need["sequences_per_s"]))
