"""The recipe at the target's horizon and batch (scaling.recipe with an (N, D, B) law and a batch
law): the batch, steps, warmup, decay and weight decay a known law gives, each with its origin."""
from __future__ import annotations

import math

import pytest

from mm1model import paper
from mm1model.config import ConfigError
from mm1model.counting import param_counts
from mm1model.sizes import get_size
from scaling.law import BatchLaw, FitResult, mm1_law
from scaling.recipe import recipe_for, round_batch, sweep_timescale

N30 = param_counts(get_size("30B")).params
MM1_TOKENS = paper.STEPS * paper.BATCH_SIZE * paper.SEQ_LEN  # 4.19e11


def law() -> FitResult:
    """ln lr* = 1 - 0.5 ln N + 0.1 ln D - 0.05 ln B; Step Law's batch law B* = 0.58 D^0.571 tokens;
    one sweep optimum at lr 1e-2 over 300 steps with MM1's decay (tau = 1/(0.1 x 1e-2 x 300) runs)."""
    return FitResult(
        coefficients={"intercept": 1.0, "ln_params": -0.5, "ln_tokens": 0.1, "ln_batch": -0.05},
        features=["params", "tokens", "batch"], schedule="wsd", weight_decay_ratio=0.1,
        optima=[{"size": "w256", "params": 1.7e6, "lr_opt": 1e-2, "steps": 300}],
        batch_law=BatchLaw(coefficients={"intercept": math.log(paper.STEP_LAW_BATCH_COEF),
                                         "ln_tokens": paper.STEP_LAW_BATCH_EXPONENT}, features="tokens"))


def test_round_batch_is_nearest_in_log_among_multiples():
    assert round_batch(613.0, 8) == 616 and round_batch(611.0, 8) == 608
    assert round_batch(3.0, 8) == 8  # never below one batch per rank
    with pytest.raises(ConfigError, match="not a positive number"):
        round_batch(float("nan"))


def test_the_batch_law_sets_the_batch_and_the_steps_follow_from_the_budget():
    r = recipe_for("30B", law(), batch_multiple=8)
    b_tokens = paper.STEP_LAW_BATCH_COEF * MM1_TOKENS ** paper.STEP_LAW_BATCH_EXPONENT
    assert b_tokens / paper.SEQ_LEN == pytest.approx(613.3, abs=0.1)  # Step Law at MM1's budget
    assert r.batch_size == 616 and r.origins["batch_size"] == "fit"
    assert r.steps == math.ceil(MM1_TOKENS / (616 * 4096)) == 166_234 and r.origins["steps"] == "fit"
    assert (r.decay_steps, r.origins["decay_steps"]) == (r.steps, "fit")
    assert (r.warmup_steps, r.origins["warmup_steps"]) == (2000, "paper")
    assert r.total_tokens == r.steps * 616 * 4096
    assert r.schedule == "wsd" and r.origins["schedule"] == "fit"
    expected = math.exp(1.0 - 0.5 * math.log(N30) + 0.1 * math.log(r.total_tokens) - 0.05 * math.log(616 * 4096))
    assert r.peak_lr == pytest.approx(expected, rel=1e-12) and r.origins["peak_lr"] == "fit"
    # MM1's weight-decay rule: 0.1 x peak, derived from the fitted LR
    assert r.weight_decay == pytest.approx(0.1 * r.peak_lr) and r.origins["weight_decay"] == "fit"
    assert r.weight_decay_timescale == pytest.approx(1 / (0.1 * r.peak_lr * r.steps))


def test_tokens_fix_the_budget_and_the_timescale_rule_holds_the_sweeps_fraction():
    r = recipe_for("30B", law(), tokens=1e12, weight_decay_rule="timescale", batch_multiple=8)
    assert sweep_timescale(law()) == pytest.approx(1 / (0.1 * 1e-2 * 300)) == pytest.approx(10 / 3)
    b = paper.STEP_LAW_BATCH_COEF * 1e12 ** paper.STEP_LAW_BATCH_EXPONENT / 4096
    assert b == pytest.approx(1007.1, abs=0.1) and r.batch_size == round_batch(b, 8) == 1008
    assert r.steps == math.ceil(1e12 / (1008 * 4096)) == 242_204 and r.origins["total_tokens"] == "user"
    assert r.weight_decay == pytest.approx(1 / (10 / 3 * r.steps)) and r.origins["weight_decay"] == "fit"
    assert r.weight_decay_timescale == pytest.approx(10 / 3)
    assert r.weight_decay_rule == "timescale"


def test_overrides_still_win_over_the_batch_law():
    r = recipe_for("30B", law(), {"batch_size": 512, "weight_decay": 1e-6})
    assert (r.batch_size, r.steps) == (512, paper.STEPS)
    assert r.origins["batch_size"] == r.origins["steps"] == "paper" or r.origins["batch_size"] == "user"
    assert r.origins["batch_size"] == "user" and r.weight_decay == 1e-6 and r.origins["weight_decay"] == "user"


def test_mm1s_law_has_no_timescale_to_hold():
    with pytest.raises(ConfigError, match="timescale needs a fitted law"):
        recipe_for("30B", mm1_law(), weight_decay_rule="timescale")
    with pytest.raises(ConfigError, match="not all three"):
        recipe_for("30B", law(), {"steps": 10, "batch_size": 8}, tokens=1e9)


def test_a_batch_law_whose_exponent_may_be_zero_keeps_mm1s_batch():
    """As in the CPU demonstration: B* moved from 4 to 8 sequences over 4x the tokens, but with
    4 of 6 optima at the grid's edge the exponent's CI spans 0; read 6 decades out it would give
    the sweep's own batch. The recipe keeps MM1's batch and says why."""
    unresolved = law()
    unresolved.batch_law.ci95 = {"intercept": [-2.7, 8.8], "ln_tokens": [-0.21, 0.77]}
    r = recipe_for("30B", unresolved, batch_multiple=8)
    assert (r.batch_size, r.steps, r.origins["batch_size"]) == (512, paper.STEPS, "paper")
    assert r.notes == ("batch: the batch law's D exponent, 95% CI [-0.21, +0.77], includes 0, so it cannot say "
                       "how B grows to this budget; MM1's batch 512 kept (--batch-size chooses another)",)
    assert recipe_for("30B", law(), batch_multiple=8).notes == ()
