"""`scaling.recipe` and MM1's law (`scaling.law.mm1_law`): the MM1 recipe for a target, values and origins."""
from __future__ import annotations

import math

import pytest

from mm1model.config import ConfigError
from mm1model.counting import param_counts
from mm1model.paper import MM1_LR_TABLE as MM1_TABLE
from mm1model.paper import mm1_peak_lr as mm1_lr
from mm1model.sizes import get_size
from scaling.law import FitResult, mm1_law
from scaling.recipe import OVERRIDABLE, recipe_for, resolve_target


def test_mm1_law_values():
    assert mm1_lr(3e9) == pytest.approx(5.834e-5, rel=1e-3)
    assert mm1_lr(9e6) == pytest.approx(6.75e-4, rel=1e-3)
    assert mm1_lr(1.2e9) == pytest.approx(8.58e-5, rel=1e-3)
    for size, lr in MM1_TABLE.items():
        assert f"{recipe_for(size).peak_lr:.0e}" == f"{lr:.0e}"


def test_30b_recipe_is_the_papers():
    r = recipe_for("30B", mm1_law())
    assert r.size == "30B" and r.params == param_counts(get_size("30B")).params
    assert r.peak_lr == pytest.approx(2.2e-5, rel=0.03)
    assert r.min_lr == pytest.approx(0.1 * r.peak_lr) and r.weight_decay == pytest.approx(0.1 * r.peak_lr)
    assert (r.warmup_steps, r.decay_steps, r.steps, r.schedule) == (2000, 200_000, 200_000, "cosine")
    assert (r.batch_size, r.seq_len, r.batch_tokens) == (512, 4096, 2_097_152)
    assert (r.max_images, r.image_tokens, r.image_size, r.grad_clip, r.z_loss) == (16, 144, 378, 1.0, 1e-4)
    assert r.total_tokens == 200_000 * 512 * 4096
    assert r.peak_lr_pi95 is None
    assert set(r.origins.values()) == {"paper"}
    assert recipe_for("7B").z_loss == 0.0 and recipe_for("3e10").z_loss == 1e-4


def test_fitted_law_and_user_overrides_carry_their_origins():
    law = FitResult(coefficients={"intercept": -1.0, "ln_params": -0.4},
                    cov=[[0.04, -0.002], [-0.002, 0.0001]], scale=0.01, df_resid=3.0)
    r = recipe_for("3e9", law, {"steps": 1000, "warmup_steps": 100, "weight_decay": 0.0})
    assert r.size is None and r.params == 3e9
    assert r.peak_lr == pytest.approx(math.exp(-1.0 - 0.4 * math.log(3e9)))
    assert r.origins["peak_lr"] == "fit" and r.origins["min_lr"] == "fit"
    assert r.origins["steps"] == r.origins["decay_steps"] == r.origins["total_tokens"] == "user"
    assert r.decay_steps == 1000 and r.total_tokens == 1000 * 512 * 4096
    assert r.weight_decay == 0.0 and r.origins["weight_decay"] == "user"
    lo, hi = r.peak_lr_pi95
    assert lo < r.peak_lr < hi
    user = recipe_for("3e9", law, {"peak_lr": 1e-4})
    assert user.origins["peak_lr"] == user.origins["min_lr"] == "user" and user.min_lr == pytest.approx(1e-5)
    assert user.peak_lr_pi95 is None
    assert r.to_dict()["peak_lr_pi95"] == [lo, hi]


def test_two_feature_law_is_read_at_the_recipes_tokens():
    law = FitResult(coefficients={"intercept": 0.5, "ln_params": -0.7, "ln_tokens": 0.3},
                    features=["params", "tokens"])
    r = recipe_for("1e9", law, {"steps": 100})
    assert r.warmup_steps == 1 and r.origins["warmup_steps"] == "user"  # 1% of a short run
    assert r.peak_lr == pytest.approx(math.exp(0.5 - 0.7 * math.log(1e9) + 0.3 * math.log(100 * 512 * 4096)))


def test_total_convention_counts_embeddings():
    counts = param_counts(get_size("3B"))
    assert resolve_target("3B", "total") == ("3B", float(counts.params_lm_total))
    assert recipe_for("3B", mm1_law("total")).params == counts.params_lm_total > counts.params


@pytest.mark.parametrize("target, overrides, message", [
    ("3B", {"lr": 1e-4}, "unknown recipe key(s) lr; valid: " + ", ".join(OVERRIDABLE)),
    ("3B", {"min_lr": 1.0}, "min_lr 1 exceeds peak_lr"),
    ("3B", {"peak_lr": -1e-4}, "peak_lr must be positive"),
    ("3B", {"warmup_steps": 300_000}, "warmup_steps 300000 exceeds steps 200000"),
    ("3B", {"schedule": "step"}, "unknown schedule 'step'"),
    ("0", {}, "target N must be positive"),
    ("-3e9", {}, "target N must be positive"),
])
def test_bad_recipe_input(target, overrides, message):
    with pytest.raises(ConfigError) as err:
        recipe_for(target, None, overrides)
    assert message in str(err.value)


def test_unknown_size_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="30B"):
        resolve_target("31B")
