"""Typed, closed configs: every value is checked against its declared type, naming the key."""
from __future__ import annotations

import pytest

from mm1model.config import ConfigError, from_dict
from mm1model.train import resolve
from mm1model.train_config import OptimizerConfig, TrainConfig
from scaling.law import FitResult
from scaling.sweep_plan import SweepConfig


@pytest.mark.parametrize("cls, data, message", [
    (TrainConfig, {"steps": 20.5}, r"^TrainConfig.steps must be an integer, got 20.5$"),
    (TrainConfig, {"steps": "abc"}, r"^TrainConfig.steps must be an integer, got 'abc'$"),
    (TrainConfig, {"batch_size": "4"}, r"^TrainConfig.batch_size must be an integer, got '4'$"),
    (TrainConfig, {"optimizer": {"lr": "1e-3"}}, r"^TrainConfig.optimizer.lr must be a number, got '1e-3'$"),
    (TrainConfig, {"optimizer": {"betas": [0.9]}}, r"^TrainConfig.optimizer.betas must be a list of 2 values"),
    (TrainConfig, {"compile": "yes"}, r"^TrainConfig.compile must be true or false, got 'yes'$"),
    (TrainConfig, {"data": {"seq_len": 12.0}}, r"^TrainConfig.data.seq_len must be an integer, got 12.0$"),
    (TrainConfig, {"data": 5}, r"^TrainConfig.data must be a table of keys and values, got 5$"),
    (SweepConfig, {"sizes": "w32"}, r"^SweepConfig.sizes must be a list, got 'w32'$"),
    (SweepConfig, {"seeds_by_size": {"w32": 1.5}}, r"^SweepConfig.seeds_by_size.w32 must be an integer, got 1.5$"),
])
def test_a_value_of_the_wrong_type_names_its_key(cls, data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(cls, data)


def test_a_config_file_that_is_not_a_table_is_one_line(tmp_path):
    (tmp_path / "fit.json").write_text("[1, 2, 3]")
    with pytest.raises(ConfigError, match=r"^fit.json must be a table of keys and values .* got list$"):
        FitResult.from_json(tmp_path / "fit.json")


def test_numbers_are_accepted_as_floats_and_lists_as_tuples():
    config = from_dict(TrainConfig, {"optimizer": {"lr": 1, "betas": [0.9, 0.95]}, "z_loss": 0})
    assert config.optimizer.lr == 1.0 and isinstance(config.optimizer.lr, float)
    assert config.optimizer.betas == (0.9, 0.95) and config.z_loss == 0.0


def test_a_warmup_longer_than_the_run_is_stated():
    with pytest.warns(UserWarning, match=r"^optimizer.warmup_steps 2000 exceeds steps 30: the LR never passes 1.5% "
                                         r"of its peak 0.003"):
        resolve(TrainConfig(steps=30, optimizer=OptimizerConfig(lr=3e-3)))
