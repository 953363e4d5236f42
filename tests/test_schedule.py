"""The wsd schedule, and horizons branched from a wsd trunk's checkpoint.

The multiplier is pinned at fixed steps (hand-computed); the cosine one is unchanged. The key
property: a wsd run to horizon T started ``init_from`` a longer wsd trunk's checkpoint at T's
``cooldown_start`` trains exactly the losses of a straight run to T (bitwise, one CPU thread),
because both schedules sit at the peak until then. Runs are ``small`` ones (100K, batch 8 x 128).
"""
from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path

import pytest

from mm1model import records
from mm1model.checkpoint import checkpoint_paths, step_dir
from mm1model.config import ConfigError
from mm1model.train import TrainConfig, lr_multiplier, train
from mm1model.train_config import OptimizerConfig

from test_train import corpus, events, small, step_rows  # noqa: F401 (corpus is a fixture)

TRUNK_STEPS, HORIZON = 30, 20
BRANCH_STEP = OptimizerConfig(schedule="wsd", warmup_steps=5, decay_steps=HORIZON).cooldown_start  # 16


def wsd(corpus: str, run_dir: Path, steps: int, **changes) -> TrainConfig:  # noqa: F811
    """A small wsd run of ``steps`` (to horizon decay_steps = steps unless given), evaluated at 10
    and at the end, checkpointed every 5 steps."""
    return small(corpus, run_dir, **{"schedule": "wsd", "steps": steps, "decay_steps": steps, **changes})


@pytest.fixture(scope="module")
def trunk(corpus, tmp_path_factory) -> Path:  # noqa: F811
    """The 30-step wsd trunk, keeping its checkpoint at the 20-step horizon's cooldown start."""
    run_dir = tmp_path_factory.mktemp("trunk") / "run"
    assert train(wsd(corpus, run_dir, TRUNK_STEPS, save_steps=(BRANCH_STEP,))).status == "ok"
    return run_dir


# ------------------------------------------------------------------------------------ multiplier
@pytest.mark.parametrize("shape, at_27, at_29", [
    ("linear", 0.55, 0.25),  # 0.1 + 0.9 (1 - p), p = 3/6 and 5/6
    ("1-sqrt", 0.363604, 0.178416),  # 0.1 + 0.9 (1 - sqrt(p))
])
def test_wsd_multiplier_is_pinned(shape, at_27, at_29):
    s = lambda t: lr_multiplier(t, 5, 30, 0.1, "wsd", 0.2, shape)  # noqa: E731
    assert OptimizerConfig(schedule="wsd", warmup_steps=5, decay_steps=30).cooldown_start == 24  # 30 - 0.2 x 30
    assert s(0) == pytest.approx(0.2)  # the warmup is cosine's: (0 + 1) / 5
    assert s(4) == s(5) == s(10) == s(23) == 1.0  # the peak from the last warmup update to the cooldown
    assert s(24) == 1.0  # the cooldown starts at the peak
    assert s(27) == pytest.approx(at_27, abs=1e-6)
    assert s(29) == pytest.approx(at_29, abs=1e-6)
    assert s(30) == s(1000) == 0.1  # the floor at decay_steps, flat after
    config = OptimizerConfig(lr=2e-3, schedule="wsd", warmup_steps=5, decay_steps=30, cooldown_shape=shape)
    assert [config.lr_at(t) for t in (0, 10, 27, 30)] == [2e-3 * s(t) for t in (0, 10, 27, 30)]


def test_cosine_multiplier_is_unchanged():
    assert lr_multiplier(325, 100, 1000, 0.1) == 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))  # 0.868198
    assert lr_multiplier(325, 100, 1000, 0.1) == lr_multiplier(325, 100, 1000, 0.1, "cosine", 0.5, "1-sqrt")
    assert lr_multiplier(550, 100, 1000, 0.1) == pytest.approx(0.55)
    assert lr_multiplier(50, 100, 1000) == pytest.approx(0.51)
    assert lr_multiplier(1000, 100, 1000) == 0.1
    cosine = OptimizerConfig(lr=1.0, warmup_steps=5, decay_steps=30)
    assert cosine.cooldown_start == 5 and cosine.lr_at(17) == lr_multiplier(17, 5, 30)


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("make, message", [
    (lambda: OptimizerConfig(cooldown_shape="cosine"), r"unknown cooldown_shape 'cosine'; valid: linear, 1-sqrt"),
    (lambda: OptimizerConfig(cooldown_fraction=0.0), r"cooldown_fraction must be in \(0, 1\], got 0.0"),
    (lambda: OptimizerConfig(cooldown_fraction=1.5), r"cooldown_fraction must be in \(0, 1\], got 1.5"),
    (lambda: OptimizerConfig(schedule="wsd", warmup_steps=10, decay_steps=20, cooldown_fraction=0.6),
     r"the wsd cooldown starts at step 8 .* before warmup_steps 10 end"),
    (lambda: TrainConfig(steps=30, save_steps=(10, 30)), r"save_steps must lie in \[1, steps\) = \[1, 30\) .*got 30$"),
    (lambda: TrainConfig(steps=30, save_steps=(0,)), r"save_steps must lie in .*got 0$"),
    (lambda: TrainConfig(init_from=" "), r"init_from must be a checkpoint directory or null"),
])
def test_bad_schedule_and_save_steps_are_one_config_error(make, message):
    with pytest.raises(ConfigError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_bad_init_from_is_one_config_error_and_writes_nothing(trunk, corpus, tmp_path):  # noqa: F811
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (tmp_path / "none", HORIZON, {}, r"init_from .*none does not exist or is not a directory"),
        (empty, HORIZON, {}, r"init_from .*empty is not a checkpoint this run can load \(FileNotFoundError"),
        (step_dir(trunk, BRANCH_STEP), BRANCH_STEP, {},
         rf"holds step {BRANCH_STEP}, not before this run's steps {BRANCH_STEP}"),
        (step_dir(trunk, BRANCH_STEP), HORIZON, {"micro_batch_size": 4}, r"has 1 data lanes, this run 2"),
    ]
    for i, (path, steps, changes, message) in enumerate(cases):
        run_dir = tmp_path / f"run{i}"
        with pytest.raises(ConfigError, match=message) as err:
            train(wsd(corpus, run_dir, steps, init_from=str(path), **changes))
        assert "\n" not in str(err.value)
        assert not run_dir.exists()


# ------------------------------------------------------------------------------------ branching
def test_branch_from_the_trunk_equals_a_straight_run_bitwise(trunk, corpus, tmp_path):  # noqa: F811
    straight = train(wsd(corpus, tmp_path / "straight", HORIZON))
    branch_dir = tmp_path / "branch"
    # an own checkpoint at step 18, for the resume below
    config = wsd(corpus, branch_dir, HORIZON, init_from=str(step_dir(trunk, BRANCH_STEP)), checkpoint_interval=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the trunk trained this run's first 16 steps: no warning
        branch = train(config)
    expected = step_rows(tmp_path / "straight")
    assert [r["lr"] for r in expected] == [3e-3 * lr_multiplier(t, 5, HORIZON, 0.1, "wsd") for t in range(HORIZON)]
    assert step_rows(branch_dir) == expected  # every step: 1-16 from the trunk, 17-20 trained here
    assert branch.final_val_loss == straight.final_val_loss and branch.best_val_loss == straight.best_val_loss
    assert branch.steps == HORIZON and branch.status == "ok"
    trunk_rows = [r for r in records.read_jsonl(trunk / "metrics.jsonl") if r["step"] <= BRANCH_STEP]
    assert records.read_jsonl(branch_dir / "metrics.jsonl")[:len(trunk_rows)] == trunk_rows  # eval rows too
    (start,) = events(branch_dir, "start")
    assert start["step"] == BRANCH_STEP and start["init_from"] == config.init_from and not start["resumed"]
    # once it has a checkpoint of its own, the branch resumes from it: init_from is no longer read
    (branch_dir / "result.json").unlink()
    moved = tmp_path / "trunk_checkpoints"
    shutil.move(trunk / "checkpoints", moved)
    try:
        assert train(config).final_val_loss == straight.final_val_loss
    finally:
        shutil.move(moved, trunk / "checkpoints")
    resumed = events(branch_dir, "start")[1]
    assert resumed["step"] == 18 and resumed["resumed"] and "init_from" not in resumed
    assert step_rows(branch_dir) == expected


def test_a_branch_after_its_own_cooldown_start_is_warned_about(trunk, corpus, tmp_path):  # noqa: F811
    # horizon 18 cools down from update 14 (still at the peak: p = 0), so update 15 runs below
    # the peak, where the trunk ran at it
    with pytest.warns(UserWarning, match=r"differs from this run in the scheduled LR from update 15 on"):
        train(wsd(corpus, tmp_path / "late", 18, init_from=str(step_dir(trunk, BRANCH_STEP))))


def test_save_steps_survive_rotation_and_a_resume(corpus, tmp_path):  # noqa: F811
    run_dir = tmp_path / "trunk"
    # the first leg stops at 14 (its last checkpoint: save step 12); the second resumes to 30
    # and adds a save step, as a sweep that learns of a new horizon would
    train(wsd(corpus, run_dir, 14, decay_steps=30, save_steps=(12,), keep_checkpoints=1, eval_sequences=8))
    (run_dir / "result.json").unlink()
    result = train(wsd(corpus, run_dir, 30, save_steps=(12, 16), keep_checkpoints=1, eval_sequences=8))
    assert result.status == "ok" and events(run_dir, "start")[1]["step"] == 12
    assert [p.name for p in checkpoint_paths(run_dir)] == ["step_00000025", "step_00000016", "step_00000012"]
