"""The trainer: schedule, decoupled weight decay, exact resume, signals, divergence, bad input.

Runs use the CPU size 100K at seq_len 128 and batch 8 on one thread (about 10 steps/s), on the
bundled corpus (prepared once; ``$MM1_CORPUS`` points elsewhere).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mm1model import records
from mm1model.checkpoint import checkpoint_keys, read_trainer_state
from mm1model.config import ConfigError, from_dict, to_dict
from mm1model.paper import mm1_peak_lr
from mm1model.train import (TrainConfig, TrainResult, build_model, build_optimizer, load_config, lr_multiplier,
                            main, resolve, torch_weight_decay, train)
from mm1model.train_config import OptimizerConfig

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
COMPARED = ("step", "lr", "loss", "grad_norm", "tokens")  # the deterministic columns of a step row


@pytest.fixture(scope="module")
def corpus() -> str:
    from mm1model.data import default_corpus_dir, prepare_corpus

    prepare_corpus()
    return str(default_corpus_dir())


OPTIMIZER_KEYS = tuple(f.name for f in dataclasses.fields(OptimizerConfig))


def small(corpus: str, run_dir: Path, **changes) -> TrainConfig:
    """30 steps of 100K, warmup 5, cosine to step 30, checkpoints every 5 steps. ``changes`` may
    name optimizer keys (lr, warmup_steps, ...) flat: they go into ``optimizer``."""
    optimizer = {"lr": 3e-3, "warmup_steps": 5, "decay_steps": 30,
                 **{k: changes.pop(k) for k in list(changes) if k in OPTIMIZER_KEYS}}
    base = {"size": "100K", "data": {"corpus": corpus, "seq_len": 128}, "optimizer": optimizer,
            "batch_size": 8, "steps": 30, "eval_interval": 10, "eval_sequences": 16,
            "checkpoint_interval": 5, "threads": 1, "run_dir": str(run_dir)}
    return from_dict(TrainConfig, {**base, **changes})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_on_loopback(nproc: int, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGV`` in ``nproc`` processes that meet on 127.0.0.1 (RANK / WORLD_SIZE /
    MASTER_ADDR / MASTER_PORT, as torchrun sets them, but nothing listens beyond loopback:
    mm1model.distributed.loopback_store). Returns rank 0's stdout and every rank's stderr, and
    the first non-zero exit code."""
    port = free_port()
    procs = []
    for rank in range(nproc):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc), "GLOO_SOCKET_IFNAME": "lo"}
        procs.append(subprocess.Popen([PYTHON, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=timeout) for p in procs]
    code = next((p.returncode for p in procs if p.returncode), 0)
    return subprocess.CompletedProcess(argv, code, outs[0][0], "".join(err for _, err in outs))


def step_rows(run_dir: Path) -> list[dict]:
    return [{k: r[k] for k in COMPARED} for r in records.read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def events(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in records.read_jsonl(run_dir / "events.jsonl") if e["event"] == kind]


def start_subprocess(config: TrainConfig, tmp_path: Path) -> subprocess.Popen:
    path = tmp_path / f"{Path(config.run_dir).name}.json"
    records.write_json(path, to_dict(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([PYTHON, "-m", "mm1model.train", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(run_dir: Path, proc: subprocess.Popen, step: int, event: str = "step", timeout: float = 120) -> None:
    """Poll the records until a step row (or an ``event`` row) for ``step`` exists."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = step_rows(run_dir) if event == "step" else events(run_dir, event)
        if rows and rows[-1]["step"] >= step:
            return
        assert proc.poll() is None, f"trainer exited early: {proc.stderr.read()}"
        time.sleep(0.005)
    raise AssertionError(f"{event} {step} not reached in {timeout} s")


@pytest.fixture(scope="module")
def reference(corpus: str, tmp_path_factory) -> tuple[TrainResult, list[dict]]:
    """The uninterrupted 30-step run every resume test is compared with."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = train(small(corpus, run_dir))
    return result, step_rows(run_dir)


# ------------------------------------------------------------------------------------ recipe
def test_schedule_is_pinned():
    warmup, decay = 100, 1000
    s = lambda t: lr_multiplier(t, warmup, decay, 0.1)  # noqa: E731
    assert s(0) == pytest.approx(0.01)  # (0 + 1) / 100: the first update already moves
    assert s(50) == pytest.approx(0.51)  # warmup / 2
    assert s(99) == pytest.approx(1.0)  # the last warmup update runs at the peak
    assert s(100) == pytest.approx(1.0)  # the cosine starts at the peak
    assert s(325) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))  # 0.86820
    assert s(325) == pytest.approx(0.868198, abs=1e-6)
    assert s(550) == pytest.approx(0.55)  # mid-decay: halfway between peak and floor
    assert s(1000) == pytest.approx(0.1)  # end of decay: 10% of the peak
    assert s(1001) == s(200_000) == 0.1  # flat after
    # the paper's defaults: 2000 warmup, 200k decay counted from step 0
    assert lr_multiplier(101_000, 2000, 200_000) == pytest.approx(0.55)


def test_decoupled_weight_decay_one_step_by_hand():
    """One AdamW step at schedule multiplier s: matrices shrink by exactly (1 - lambda s) whatever
    the peak LR; norms, biases, embeddings do not; Adam's first step moves each weight by lr_t."""
    torch.manual_seed(0)
    lam, step = 0.02, 2  # lambda, and an update inside warmup: s = 3 / 5
    s = lr_multiplier(step, 5, 30)
    for peak in (1e-3, 1e-2):
        config = resolve(TrainConfig(size="100K", optimizer=OptimizerConfig(lr=peak, weight_decay=lam, warmup_steps=5,
                                                                            decay_steps=30)))
        model, _ = build_model(config, torch.device("cpu"))
        optimizer = build_optimizer(model, config)
        assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(lam / peak)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads = {}
        for name, p in model.named_parameters():
            # zero gradient except on one matrix and one norm, where it is +-1 per entry
            g = torch.zeros_like(p)
            if name in ("lm.blocks.0.attention.wq.weight", "lm.norm.weight"):
                g = torch.sign(torch.randn_like(p))
            p.grad, grads[name] = g, g
        for group in optimizer.param_groups:
            group["lr"] = peak * s
        optimizer.step()
        params = dict(model.named_parameters())
        lr_t = peak * s
        wq = "lm.blocks.0.attention.wq.weight"
        # first Adam step: m_hat = g, v_hat = g^2, so the update is lr_t * g / (|g| + eps)
        expected = before[wq] * (1 - lam * s) - lr_t * grads[wq] / (grads[wq].abs() + 1e-8)
        torch.testing.assert_close(params[wq], expected, rtol=0, atol=1e-7)
        w2 = "lm.blocks.1.feed_forward.w2.weight"  # zero gradient: pure decay, 1 - 0.02 * 0.6
        torch.testing.assert_close(params[w2], before[w2] * (1 - 0.012), rtol=1e-6, atol=0)
        for name in ("lm.tok_embeddings.weight", "vit.pos_embed", "lm.blocks.0.attention_norm.weight"):
            torch.testing.assert_close(params[name], before[name], rtol=0, atol=0)
        norm = "lm.norm.weight"  # no decay, only Adam's step
        torch.testing.assert_close(params[norm], before[norm] - lr_t * grads[norm], rtol=0, atol=1e-7)


def test_default_lambda_is_a_tenth_of_peak_lr_and_torch_wd_is_its_ratio():
    config = resolve(TrainConfig(size="100K", optimizer=OptimizerConfig(lr=4e-3))).optimizer
    assert config.weight_decay == pytest.approx(4e-4)
    assert torch_weight_decay(config.weight_decay, config.lr) == pytest.approx(0.1)
    # no peak LR: the trainer has no law of its own and says so (MM1's law is mm1model.paper's)
    with pytest.raises(ConfigError, match=r"^optimizer.lr \(the peak LR\) is not set"):
        resolve(TrainConfig(size="100K"))
    assert mm1_peak_lr(97_600) == pytest.approx(math.exp(-0.4214 * math.log(97_600) - 0.5535))


def test_no_decay_on_norms_biases_embeddings():
    config = resolve(TrainConfig(size="100K", optimizer=OptimizerConfig(lr=1e-3)))
    model, _ = build_model(config, torch.device("cpu"))
    decay, no_decay = build_optimizer(model, config).param_groups
    assert (decay["name"], decay["weight_decay"], no_decay["name"], no_decay["weight_decay"]) == \
        ("decay", pytest.approx(0.1), "no_decay", 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert "lm.tok_embeddings.weight" in kept and "vit.pos_embed" in kept  # (the head is tied to it)
    assert all(model.get_parameter(n).ndim >= 2 for n in decayed)
    assert {"lm.blocks.0.attention.wq.weight", "lm.blocks.0.feed_forward.w1.weight"} <= decayed
    assert not any(n.endswith(("norm.weight", ".bias")) for n in decayed)
    assert len(decayed) + len(kept) == len(list(model.parameters()))


# ------------------------------------------------------------------------------------ bad input
def test_unknown_key_fails_before_training_and_lists_valid_keys(tmp_path, capsys):
    path = tmp_path / "bad.json"
    run_dir = tmp_path / "run"
    path.write_text(json.dumps({"size": "100K", "learning_rate": 1e-3, "run_dir": str(run_dir)}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) learning_rate in TrainConfig; valid keys: size, model"):
        load_config(path)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown key(s) learning_rate") and "optimizer" in err
    assert not run_dir.exists()


def test_bad_values_and_missing_corpus_write_nothing(tmp_path):
    with pytest.raises(ConfigError, match="unknown size 'huge'; valid sizes: 100K, 300K"):
        train(TrainConfig(size="huge", run_dir=str(tmp_path / "a")))
    with pytest.raises(ConfigError, match="micro_batch_size 3 must divide batch_size 8"):
        TrainConfig(batch_size=8, micro_batch_size=3)
    with pytest.raises(ConfigError, match="lr must be a positive number"):
        OptimizerConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match="is not prepared"):
        train(TrainConfig(data=from_dict(TrainConfig, {"data": {"corpus": str(tmp_path / "none"), "seq_len": 128}}).data,
                          optimizer=OptimizerConfig(lr=1e-3), batch_size=8, run_dir=str(tmp_path / "b")))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_different_config_in_the_same_run_dir_is_refused(corpus, tmp_path):
    run_dir = tmp_path / "run"
    train(small(corpus, run_dir, steps=2, eval_sequences=8))
    (run_dir / "result.json").unlink()  # an unfinished run
    with pytest.raises(ConfigError, match="holds a different run \\(differs in optimizer.lr, optimizer.weight_decay\\)"):
        train(small(corpus, run_dir, steps=2, eval_sequences=8, lr=1e-3))


# ------------------------------------------------------------------------------------ records
def test_records_of_a_finished_run(reference, corpus, tmp_path):
    result, rows = reference
    run_dir = Path(result.run_dir)
    assert result.status == "ok" and result.steps == 30 and result.tokens == 30 * 8 * 128
    assert result.params == 97_600 and result.lr == 3e-3
    assert set(result.val_loss_by_source) == {"caption", "interleaved", "text"}
    assert result.final_val_loss == result.best_val_loss < rows[0]["loss"]
    config = records.read_json(run_dir / "config.json")
    assert config["params"] == 97_600 and config["code_version"] and config["optimizer"]["weight_decay"] == pytest.approx(3e-4)
    assert config["data"]["image_size"] == 32 and config["data"]["image_tokens"] == 16  # from the model
    assert load_config(run_dir / "config.json").optimizer.lr == 3e-3  # a run's config.json reads back
    evals = [r for r in records.read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r]
    assert [e["step"] for e in evals] == [10, 20, 30]
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert rows[4]["lr"] == pytest.approx(3e-3) and rows[-1]["lr"] == pytest.approx(3e-3 * lr_multiplier(29, 5, 30))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000020", "step_00000025"]
    # a final run directory returns its result at once, untouched
    mtime = (run_dir / "metrics.jsonl").stat().st_mtime_ns
    assert train(small(corpus, run_dir)) == result
    assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == mtime


# ------------------------------------------------------------------------------------ resume
def test_kill_9_at_step_15_then_restart_is_bitwise_identical(reference, corpus, tmp_path):
    _, expected = reference
    run_dir = tmp_path / "killed"
    config = small(corpus, run_dir)
    proc = start_subprocess(config, tmp_path)
    wait_for(run_dir, proc, 15, event="checkpoint")
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    assert not (run_dir / "result.json").exists()
    result = train(config)
    starts = events(run_dir, "start")
    assert [s["step"] for s in starts] == [0, 15] and starts[1]["resumed"]
    assert step_rows(run_dir) == expected  # steps 1-30, exactly (16-30 recomputed after resume)
    assert result.final_val_loss == reference[0].final_val_loss


def test_sigterm_checkpoints_and_exits_then_corrupt_latest_falls_back(reference, corpus, tmp_path):
    _, expected = reference
    run_dir = tmp_path / "terminated"
    config = small(corpus, run_dir, checkpoint_interval=4)
    proc = start_subprocess(config, tmp_path)
    wait_for(run_dir, proc, 9)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM  # no earlier handler: exit, resumable
    assert not (run_dir / "result.json").exists()
    stopped = events(run_dir, "signal")[0]["step"]
    assert stopped >= 9 and (run_dir / "checkpoints" / f"step_{stopped:08d}").is_dir()
    # the newest checkpoint is torn: resume from the one before, with a warning
    latest = max((run_dir / "checkpoints").glob("step_*"))
    previous = min((run_dir / "checkpoints").glob("step_*"))
    shard = latest / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.warns(RuntimeWarning, match=f"checkpoint .*{latest.name} is unreadable"):
        result = train(config)
    assert events(run_dir, "start")[1]["step"] == int(previous.stem.split("_")[1])
    assert step_rows(run_dir) == expected
    assert result.status == "ok"


def test_signal_is_chained_to_the_previous_handler_after_the_checkpoint(corpus, tmp_path):
    """submitit installs its own SIGUSR2 handler (requeue, then sys.exit); ours runs first."""
    run_dir = tmp_path / "usr2"
    calls = []

    def submitit_like(signum, frame):
        calls.append(sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")))
        raise SystemExit(-1)

    def signal_at_step_3():  # like SLURM, from outside the training loop, once it runs
        while not (step_rows(run_dir) and step_rows(run_dir)[-1]["step"] >= 3) and not done.is_set():
            time.sleep(0.005)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, submitit_like)
    done = threading.Event()
    sender = threading.Thread(target=signal_at_step_3, daemon=True)
    try:
        sender.start()
        with pytest.raises(SystemExit):
            train(small(corpus, run_dir, steps=400, decay_steps=400, checkpoint_interval=0, eval_interval=0))
    finally:
        done.set()
        sender.join()
        signal.signal(signal.SIGUSR2, previous)
    stopped = events(run_dir, "signal")[0]["step"]
    assert calls == [[f"step_{stopped:08d}"]]  # the checkpoint existed when the handler ran
    assert step_rows(run_dir)[-1]["step"] == stopped < 400
    assert not (run_dir / "result.json").exists()
    assert signal.getsignal(signal.SIGUSR2) is previous  # the trainer restored the handlers


# ------------------------------------------------------------------------------------ outcomes
def test_absurd_lr_ends_diverged_quickly_with_a_result(corpus, tmp_path):
    run_dir = tmp_path / "diverged"
    result = train(small(corpus, run_dir, lr=30.0, warmup_steps=2, steps=100, decay_steps=100))
    assert result.status == "diverged" and result.diverged_at_step <= 20
    assert result.final_val_loss is None and result.steps == result.diverged_at_step
    saved = records.read_json(run_dir / "result.json")
    assert saved["status"] == "diverged" and saved["final_val_loss"] is None
    last = step_rows(run_dir)[-1]
    assert not math.isfinite(last["loss"] or math.nan) or last["loss"] > 1.5 * step_rows(run_dir)[0]["loss"]
    assert train(small(corpus, run_dir, lr=30.0, warmup_steps=2, steps=100, decay_steps=100)) == result


def test_an_exception_during_training_writes_failed_and_reraises(corpus, tmp_path):
    # a model whose vocabulary is smaller than the corpus tokenizer's fails at its first forward
    run_dir = tmp_path / "failed"
    with pytest.raises(IndexError):
        train(small(corpus, run_dir, model={"lm": {"vocab_size": 64}}))
    saved = records.read_json(run_dir / "result.json")
    assert saved["status"] == "failed" and saved["error"].startswith("IndexError")


@pytest.mark.slow
def test_tiny_mm1_learns_below_the_unigram_entropy_of_its_text(corpus, tmp_path):
    """200 steps of 100K (batch 8 x 128, ~200k positions) on the bundled corpus.

    The bar is the unigram entropy of the very text it trained on (the labelled tokens of the
    same 200 batches, ~160k tokens; 6.48 nats when measured): the loss of the best model that
    ignores context. Measured: val loss 5.81-5.99 at lr 1e-2 as the model and packer evolved;
    the bar is 0.3 nats below (a 26% lower perplexity). The in-sample entropy of the small
    val set (2.7k tokens over a 4096 vocabulary) is biased low by its singletons, so not the bar.
    """
    from mm1model.data import PackedStream
    from mm1model.tokens import IGNORE_INDEX

    config = small(corpus, tmp_path / "learn", lr=1e-2, warmup_steps=20, decay_steps=200, steps=200,
                   eval_interval=0, eval_sequences=32, checkpoint_interval=0)
    result = train(config)
    stream = PackedStream(resolve(config).data)
    labels = torch.cat([stream.next_batch(8)["labels"].flatten() for _ in range(200)])
    counts = torch.bincount(labels[labels != IGNORE_INDEX]).double()
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * p.log()).sum())
    assert 6.0 < entropy < 7.0
    assert result.status == "ok" and result.final_val_loss < entropy - 0.3


def test_activation_checkpointing_changes_no_number_and_no_checkpoint_key(corpus, tmp_path):
    rows = {}
    for flag in (False, True):
        run_dir = tmp_path / f"ac={flag}"
        train(small(corpus, run_dir, steps=3, checkpoint_interval=2, eval_sequences=8, activation_checkpointing=flag))
        rows[flag] = step_rows(run_dir)
        keys = checkpoint_keys(run_dir / "checkpoints" / "step_00000002")
        assert "model.lm.blocks.0.attention.wq.weight" in keys and not any("_checkpoint_wrapped" in k for k in keys)
    assert rows[True] == rows[False]  # recomputation in backward is the same arithmetic on CPU


def test_bench_json_reports_throughput_mfu_and_memory(capsys):
    from mm1model import bench

    assert bench.main(["--size", "100K", "--steps", "1", "--warmup", "0", "--threads", "1", "--json",
                       "--peak-flops", "1e12"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens_per_s"] == pytest.approx(8 * 128 / out["step_s"])
    assert out["mfu"] == pytest.approx(out["model_flops_per_step"] / out["step_s"] / 1e12)
    # ru_maxrss is the process's lifetime peak: in this pytest process it may predate the bench
    assert out["peak_memory_mb"] >= out["baseline_rss_mb"] > 0 and out["images_per_seq"] == 3
    assert bench.main(["--size", "nope"]) == 2
    assert "unknown size 'nope'" in capsys.readouterr().err


def test_parametrization_groups_are_scheduled_relatively(corpus, tmp_path):
    """Under muP the hidden matrices of w64 (base w32) run at half the scheduled LR, at every step."""
    run_dir = tmp_path / "mup"
    train(small(corpus, run_dir, size="w64", model={"parametrization": "mup", "base_size": "w32"}, steps=3,
                checkpoint_interval=2, eval_sequences=8))
    scheduled = step_rows(run_dir)[1]["lr"]  # the LR of update 2, the last before the checkpoint
    groups = read_trainer_state(run_dir / "checkpoints" / "step_00000002")["param_groups"]
    by_mult = {g["lr_mult"]: g["lr"] for g in groups}
    assert by_mult[1.0] == pytest.approx(scheduled) and by_mult[0.5] == pytest.approx(scheduled / 2)


def test_tensorboard_event_files_hold_the_loss_lr_and_validation_series(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, rows = reference
    events = EventAccumulator(str(Path(result.run_dir) / "tensorboard"))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 31))
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)  # float32 in the file
    assert [e.value for e in events.Scalars("lr/decay")] == pytest.approx([r["lr"] for r in rows], rel=1e-6)
    assert [e.step for e in events.Scalars("val/loss")] == [10, 20, 30]
    assert events.Scalars("val/loss")[-1].value == pytest.approx(result.final_val_loss, rel=1e-6)
    assert {"val/loss_caption", "val/loss_interleaved", "val/loss_text", "train/grad_norm",
            "train/tokens_per_s"} <= set(events.Tags()["scalars"])
