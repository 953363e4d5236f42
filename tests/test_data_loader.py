"""Loader workers: real DataLoader worker processes, exact resumption, every record once."""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import re
import signal
import threading
import time
from collections import Counter
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

from test_data import INTERLEAVED_ONLY, TEXT_ONLY, _config, _numbered_corpus
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


def test_one_worker_sends_the_streams_sequences_with_a_micro_batchs_images_in_one_buffer(tmp_path):
    """One worker packs exactly what the training process would (sub-stream 0 of 1 is the lane's
    stream); the images arrive as views of one uint8 buffer per micro-batch, pixel for pixel."""
    config = _config(_numbered_corpus(tmp_path / "c"), seed=3)
    steps = {}
    for workers in (0, 1):
        lanes = LaneBatches(dataclasses.replace(config, num_workers=workers), lanes=[0, 1], n_lanes=2, micro_size=3)
        steps[workers] = [lanes.next_step() for _ in range(6)]
        lanes.close()
        clear_document_cache()
    plain, sent = _sequences(steps[0]), _sequences(steps[1])
    assert len(plain) == len(sent) == 36 and sum(len(s["images"]) for s in sent) > 20
    for a, b in zip(plain, sent):
        assert all(torch.equal(a[f], b[f]) for f in FIELDS)
        assert len(a["images"]) == len(b["images"]) and all(torch.equal(x, y) for x, y in zip(a["images"], b["images"]))
    for batch in (b for step in steps[1] for b in step):
        images = batch["images"]
        assert all(i.dtype == torch.uint8 and i.shape[0] == 3 for i in images)
        assert len({i.untyped_storage().data_ptr() for i in images}) == 1  # one buffer, one shared segment


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


def _bad_mid_run(out: Path, bad: str) -> Path:
    """A corpus that passes start-up and fails once packing reaches the bad part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _numbered_corpus(out, n=60)
    if bad == "every text blank":  # the field is there (the start-up check passes), its text is not
        (out / "text" / "prose.jsonl").write_text("".join(f'{{"id": "text-{i}", "text": "  "}}\n' for i in range(60)))
    else:  # start-up indexes the good shard only (both splits exceed the buffer); the epoch meets the other
        _parquet_corpus(out, 200, 200, 100)
        pq.write_table(pa.table({"id": ["x"], "body": ["not OBELICS"]}), out / "interleaved" / "docs-00001.parquet")
    return out


@pytest.mark.parametrize("bad,mixture,message", [
    ("every text blank", TEXT_ONLY, r"every text record of split train is bad \(skipped: \{'empty_text': 57\}\)"),  # 57 of 60 in train
    ("a Parquet shard without texts", INTERLEAVED_ONLY, r".*/docs-00001.parquet has no texts or images column \(its "
     r"columns: id, body\); an interleaved .parquet needs OBELICS' texts\[\] and images\[\] \(id optional\)"),
])
def test_a_workers_config_error_reaches_the_trainer_as_the_streams_one_line(tmp_path, bad, mixture, message):
    config = _config(_bad_mid_run(tmp_path / "c", bad), mixture, seq_len=64, shuffle_buffer=5)
    errors = []
    for workers in (0, 1):
        lanes = LaneBatches(dataclasses.replace(config, num_workers=workers), lanes=[0], n_lanes=1, micro_size=4)
        with pytest.raises(ConfigError) as caught:
            for _ in range(100):
                lanes.next_step()
        lanes.close()
        clear_document_cache()
        errors.append(str(caught.value))
    assert errors[1] == errors[0] and "\n" not in errors[1], errors  # not DataLoader's 26-line re-raise
    assert re.fullmatch(message, errors[1]), errors[1]


def test_loader_workers_share_the_ranks_document_cache_budget(tmp_path):
    from mm1model.data import stream

    config = dataclasses.replace(_config(_numbered_corpus(tmp_path / "c"), TEXT_ONLY), num_workers=2)
    lanes = LaneBatches(config, lanes=[0], n_lanes=1, micro_size=2)
    assert stream._DOC_CACHE.limit_bytes == stream.DOCUMENT_CACHE_BYTES == 512 * 2**20  # the training process's
    try:
        lanes._loader().worker_init_fn(0)  # what each of the 2 worker processes runs first
        assert stream._DOC_CACHE.limit_bytes == 256 * 2**20  # 2 x 256 MB: the rank's 512 MB
    finally:
        stream.share_document_cache(1)


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


def _parquet_corpus(out: Path, n: int, per_shard: int, row_group: int) -> Path:
    """The numbered corpus of test_data, its interleaved source in OBELICS Parquet shards of
    ``per_shard`` text-only documents, ``row_group`` rows per row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _numbered_corpus(out, n=60)
    (out / "interleaved" / "docs.parquet").unlink()
    for first in range(0, n, per_shard):
        numbers = range(first, min(n, first + per_shard))
        table = pa.table({"id": [f"doc-{i}" for i in numbers],
                          "texts": pa.array([[f"record {i} alone."] for i in numbers], pa.list_(pa.string())),
                          "images": pa.array([[None]] * len(numbers), pa.list_(pa.binary()))})
        pq.write_table(table, out / "interleaved" / f"docs-{first // per_shard:05d}.parquet", row_group_size=row_group)
    return out


@pytest.mark.parametrize("kind", ["text", "interleaved"])
def test_a_lanes_index_memory_does_not_grow_with_the_corpus(tmp_path, kind):
    """Sources of 10x and 100x the bundled corpus's records, in shards of 10,000 (text: JSONL;
    interleaved: Parquet in row groups of 1,000): a stream holds its buffer and its half of one
    shard's index, so its index bytes stay put; permuting every record (what a source of at most
    shuffle_buffer records gets) would hold all of them. The Parquet reader holds two row groups
    of texts/images, however many shards it has read."""
    held, nbytes, reader_bytes = [], [], []
    for scale in (10, 100):
        n = scale * BUNDLED_RECORDS
        if kind == "text":
            big, mixture = _sharded_corpus(tmp_path / f"x{scale}", n, 10_000), TEXT_ONLY
        else:
            big, mixture = _parquet_corpus(tmp_path / f"x{scale}", n, 10_000, 1000), INTERLEAVED_ONLY
        config = _config(big, mixture, seq_len=64, shuffle_buffer=1000)
        stream = PackedStream(config, rank=1, world_size=2)
        for _ in range(3):
            next(stream)
        order = stream._orders[kind, 0]
        held.append(len(order.buffer) + len(order.shard_refs))
        nbytes.append(stream.index_bytes())
        if kind == "interleaved":
            reader = stream.readers[kind]
            for path in reader.paths[:7]:  # a record of each of 7 full shards: still two row groups held
                assert reader.load(reader.index_path(path, Counter())[0], Counter()) is not None
            assert len(reader._row_groups) == 2
            reader_bytes.append(reader.held_bytes())
        clear_document_cache()
    # 1000 in the buffer and this stream's half of one shard's ~9,500 train records, at either scale
    assert all(1000 + 4600 < h < 1000 + 4900 for h in held), held
    assert abs(nbytes[1] - nbytes[0]) < 0.02 * nbytes[0], nbytes  # a digit more per key, more files
    if kind == "text":  # measured 0.908 / 0.913 MB
        assert all(800_000 < b < 1_200_000 for b in nbytes), nbytes  # whole-permuted: ~340 MB at 100x
    else:  # measured 1.064 / 1.064 MB (a ref's (row group, row) is a tuple); two row groups: ~70 kB
        assert all(950_000 < b < 1_200_000 for b in nbytes), nbytes
        assert reader_bytes[0] == reader_bytes[1] and 60_000 < reader_bytes[0] < 80_000, reader_bytes


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
