"""The wsd schedule: the multiplier pinned at fixed steps (hand-computed), the cosine one unchanged."""
from __future__ import annotations

import math

import pytest

from mm1model.config import ConfigError
from mm1model.train import lr_multiplier
from mm1model.train_config import OptimizerConfig


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
])
def test_bad_schedule_is_one_config_error(make, message):
    with pytest.raises(ConfigError, match=message) as err:
        make()
    assert "\n" not in str(err.value)
