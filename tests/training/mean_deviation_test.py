"""Tests of the regression risk `MeanDeviation`: the betting bound on a mean loss, and a
certified halting mode that bounds the mean distance of an early score from full depth."""

import math

import numpy as np
import pytest

from dact_tf.calibration import certify
from dact_tf.calibration import risk_bounds
from dact_tf.calibration import risks
from dact_tf.config import ModelConfig
from dact_tf.models.dact_classifier import DactClassifier
from dact_tf.training import train_lib
from tests.testing import assert_keras_round_trip_exits_alike
from tests.testing import betting_log_capital
from tests.testing import dataset
from tests.testing import synthetic_task
from tests.testing import tiny_backbone


@pytest.mark.parametrize("seed,n,delta", [(0, 50, 0.05), (1, 400, 0.05), (2, 1000, 0.1)])
def test_the_bound_is_where_the_betting_capital_reaches_one_over_delta(seed, n, delta):
    rng = np.random.default_rng(seed)
    x = np.where(rng.random(n) < 0.6, 0.0, rng.beta(1, 8, n))
    bound = risk_bounds.mean_upper_bound(x, delta)
    target = math.log(1 / delta)
    assert betting_log_capital(x, bound, delta) >= target - 1e-9  # rejected at the bound
    assert betting_log_capital(x, bound - 1e-6, delta) < target  # and not just below it
    assert x.mean() < bound < 1.0


def test_the_bound_covers_a_known_mean_in_at_least_one_minus_delta_of_draws():
    rng = np.random.default_rng(3)
    delta, n, repeats = 0.1, 200, 600
    draws = {  # name: (sampler, true mean)
        "bernoulli 0.05": (lambda: (rng.random(n) < 0.05).astype(float), 0.05),
        "mostly zero": (lambda: np.where(rng.random(n) < 0.7, 0.0, rng.beta(2, 10, n)),
                        0.3 * 2 / 12),
        "uniform": (lambda: rng.random(n), 0.5),
    }
    for name, (sample, mean) in draws.items():
        covered = np.mean([risk_bounds.mean_upper_bound(sample(), delta) >= mean
                           for _ in range(repeats)])
        assert covered >= 1 - delta, (name, covered)


def test_the_rows_order_does_not_matter_even_when_they_come_grouped():
    # Rows held out of a file keep its order, and files come grouped (STS-B by genre): a
    # bet on the low-loss group first would grow its capital against the true mean. The
    # rows are bet on shuffled, with a fixed seed, whatever order they come in.
    rng = np.random.default_rng(5)
    x = np.where(rng.random(400) < 0.5, 0.0, rng.beta(1, 8, 400))
    bound = risk_bounds.mean_upper_bound(x, 0.05)
    assert risk_bounds.mean_upper_bound(np.sort(x), 0.05) == bound
    assert risk_bounds.mean_upper_bound(np.sort(x)[::-1], 0.05) == bound
    assert risk_bounds.mean_difference_upper_bound(np.sort(x - 0.1), 0.05) == (
        risk_bounds.mean_difference_upper_bound(x - 0.1, 0.05))
    # Three groups of 200 rows, the lightest first, as a grouped file gives them: the bound
    # covers the true mean in at least 1 - delta of the draws (bet in the given order, it
    # fell below it in every draw).
    delta, means = 0.1, (0.01, 0.02, 0.06)
    covered = np.mean([
        risk_bounds.mean_upper_bound(np.concatenate(
            [rng.uniform(m - 0.01, m + 0.01, 200) for m in means]), delta)
        >= np.mean(means) for _ in range(200)])
    assert covered >= 1 - delta, covered


def test_it_adapts_to_the_spread_where_a_rate_bound_cannot():
    # Many losses at 0, some small: far below Hoeffding's bound, close to the mean.
    rng = np.random.default_rng(4)
    x = np.where(rng.random(690) < 0.5, 0.0, rng.beta(1, 20, 690))
    bound = risk_bounds.mean_upper_bound(x, 0.05)
    hoeffding = x.mean() + math.sqrt(math.log(20) / (2 * 690))
    assert bound < x.mean() + 0.25 * (hoeffding - x.mean())
    # Every loss 0: a little above log(1/delta) / (0.75 n), the bound were every bet the
    # largest (the first bets, on a variance still guessed at 1/4, are smaller).
    floor = math.expm1(math.log(20) / 1000) / 0.75
    assert floor < risk_bounds.mean_upper_bound(np.zeros(1000), 0.05) < 1.05 * floor
    # Every loss 1: nothing below 1.
    assert risk_bounds.mean_upper_bound(np.ones(30), 0.05) == 1.0


def test_bad_losses_are_refused_in_one_line():
    for bad, match in (([], "at least one"), ([[0.1]], "1-D"), ([0.2, 1.5], r"\[0, 1\]"),
                       ([0.1, float("nan")], r"\[0, 1\]"), ([-0.1], r"\[0, 1\]")):
        with pytest.raises(ValueError, match=match):
            risk_bounds.mean_upper_bound(bad, 0.05)
    with pytest.raises(ValueError, match="delta"):
        risk_bounds.mean_upper_bound([0.1], 1.0)


def test_the_risk_of_a_bound_and_a_kind():
    assert certify.halting_risk(0.01) == risks.Disagreement(0.01)
    assert certify.halting_risk(0.02, "mean_deviation") == risks.MeanDeviation(0.02)
    same = risks.MeanDeviation(0.03)
    assert certify.halting_risk(same, "disagreement") is same  # a risk stays as given
    with pytest.raises(ValueError, match="one of"):
        certify.halting_risk(0.01, "drop")
    for bad in (0.0, 1.0, "0.1", True):
        with pytest.raises(ValueError, match="max_disagreement"):
            risks.MeanDeviation(bad)
    assert risks.MeanDeviation(np.float32(0.02)).epsilon == pytest.approx(0.02)


def _regressor(seed=5):
    return DactClassifier(tiny_backbone(seed=seed), task="regression", output_range=(0.0, 5.0),
                          tau=0.0, dropout=0.0, halting_bias=0.0, regression_tolerance=0.01,
                          config=ModelConfig.paper())


@pytest.mark.parametrize("method", ["dact", "pabee"])
def test_certified_halting_bounds_the_mean_distance_it_measured(method):
    feats, _ = synthetic_task(300, seed=5)
    model = _regressor()
    if method == "pabee":
        model = DactClassifier(tiny_backbone(seed=5), task="regression",
                               output_range=(0.0, 5.0), method="pabee", dropout=0.0,
                               regression_tolerance=0.01)
    data = dataset(feats, np.zeros(300, "float32"), batch_size=64)
    result = certify.certify_halting(model, data, certify.MeanDeviation(0.05), confidence=0.9)
    certificate = result["certificate"]
    assert certificate["risk_kind"] == "mean_deviation" and certificate["rows"] == 300
    # What the real early-exit loop now does on these rows is what was bounded.
    early, _ = train_lib.predict_dataset(model, data)
    full, _ = train_lib.predict_dataset(model, data, full_depth=True)
    distance = np.abs(early["scores"] - full["scores"]).reshape(300)
    assert distance.mean() == pytest.approx(result["mean_deviation"], abs=1e-5)
    assert distance.mean() / 5.0 == pytest.approx(certificate["observed_rate"], abs=1e-6)
    assert certificate["bound"] == pytest.approx(
        risk_bounds.mean_upper_bound(np.clip(distance / 5.0, 0, 1), 0.1), abs=1e-5)
    assert int((distance > 0.01).sum()) == certificate["at_risk"]
    assert early["layers_executed"].mean() == pytest.approx(result["mean_layers_executed"])
    assert certificate["certified"] and certificate["bound"] <= 0.05
    # `evaluate` reports the certified quantity on any rows.
    scored = train_lib.evaluate(model, data, "regression", full_depth_disagreement=True)
    assert scored["full_depth_mean_deviation"] == pytest.approx(
        certificate["observed_rate"], abs=1e-6)
    line = certify.describe(certificate)
    assert line.startswith("certified: an early score at most 5.00% of the score range")
    if method == "dact":
        # Rows move by more than the tolerance, yet little on average: blocks are saved
        # that the per-row disagreement at the same 5 % could not save.
        assert certificate["at_risk"] > 0 and result["mean_layers_executed"] < 4.0
        other = certify.certify_halting(_regressor(), data, 0.05, confidence=0.9)
        assert other["mean_layers_executed"] > result["mean_layers_executed"]


def test_a_learned_regression_score_fitted_on_other_rows_is_what_the_loop_runs(tmp_path):
    fit_feats, _ = synthetic_task(300, seed=7)
    feats, _ = synthetic_task(300, seed=8)
    data = dataset(feats, np.zeros(300, "float32"), batch_size=64)
    model = _regressor()
    result = certify.certify_halting(
        model, data, certify.MeanDeviation(0.05), confidence=0.9,
        fit_dataset=dataset(fit_feats, np.zeros(300, "float32"), batch_size=64))
    certificate = result["certificate"]
    assert result["knob"] == "halting_threshold" and certificate["fit_rows"] == 300
    # Fitted to call a score within 5 % of the range (0.25) settled, not the 0.01 tolerance.
    assert certify.MeanDeviation(0.05).settled_within(model) == pytest.approx(0.25)
    assert certify.Disagreement(0.05).settled_within(model) == pytest.approx(0.01)
    assert certificate["certified"] and certificate["bound"] <= 0.05
    criterion = model.exit_criterion
    assert criterion.halting_rule == "certified"
    assert len(criterion.consistency_weights) == 5 + model.num_layers
    # The real loop computes the score the certificate replayed.
    early, _ = train_lib.predict_dataset(model, data)
    full, _ = train_lib.predict_dataset(model, data, full_depth=True)
    distance = np.abs(early["scores"] - full["scores"]).reshape(300)
    assert distance.mean() / 5.0 == pytest.approx(certificate["observed_rate"], abs=1e-6)
    assert early["layers_executed"].mean() == pytest.approx(result["mean_layers_executed"])
    assert result["mean_layers_executed"] < model.num_layers
    assert_keras_round_trip_exits_alike(model, feats, early["layers_executed"], tmp_path)


def test_a_classifier_is_refused_before_any_pass():
    feats, labels = synthetic_task(16, seed=1)
    model = DactClassifier(tiny_backbone(), num_classes=2)
    with pytest.raises(ValueError, match="mean_deviation bounds a regression score"):
        certify.certify_halting(model, dataset(feats, labels), certify.MeanDeviation(0.02))
