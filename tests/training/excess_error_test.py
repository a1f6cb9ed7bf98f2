"""A regression compute target: the betting bound on a paired difference, and the certificate
on the mean absolute error above the full-depth reference's."""

import math

import numpy as np
import pytest

from dact_tf.calibration import certify
from dact_tf.calibration import risk_bounds
from dact_tf.models.dact_classifier import DactClassifier
from dact_tf.training import train_lib
from tests.testing import betting_log_capital
from tests.testing import dataset
from tests.testing import synthetic_task
from tests.testing import tiny_backbone


@pytest.mark.parametrize("seed,n,delta", [(0, 60, 0.05), (1, 690, 0.05), (2, 1500, 0.1)])
def test_the_difference_bound_is_where_the_capital_reaches_one_over_delta(seed, n, delta):
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(0.004, 0.06, n), -1.0, 1.0)  # two regressors of equal quality
    bound = risk_bounds.mean_difference_upper_bound(x, delta)
    target = math.log(1 / delta)
    assert betting_log_capital(x, bound, delta) >= target - 1e-9
    assert betting_log_capital(x, bound - 1e-6, delta) < target
    assert x.mean() < bound < 1.0


def test_the_difference_bound_covers_a_known_mean_in_at_least_one_minus_delta_of_draws():
    rng = np.random.default_rng(5)
    delta, n, repeats = 0.1, 300, 500
    values, probabilities = np.array([-0.2, -0.02, 0.0, 0.03, 0.4]), [0.1, 0.3, 0.2, 0.3, 0.1]
    mean = float(values @ probabilities)  # 0.023
    covered = np.mean([risk_bounds.mean_difference_upper_bound(
        rng.choice(values, n, p=probabilities), delta) >= mean for _ in range(repeats)])
    assert covered >= 1 - delta
    # Far tighter than bounding the rate of rows worse by any amount: at 690 rows, a paired
    # difference spread like two equal regressors' bounds a 1 % excess.
    x = np.clip(rng.normal(0.0, 0.06, 690), -1.0, 1.0)
    assert risk_bounds.mean_difference_upper_bound(x, 0.05) < 0.01
    # Below the lowest mean tested (-1/3), the bound is -1/3; every difference 1: 1.
    assert risk_bounds.mean_difference_upper_bound(-np.ones(500), 0.05) == pytest.approx(-1 / 3)
    assert risk_bounds.mean_difference_upper_bound(np.ones(30), 0.05) == 1.0
    for bad, match in (([], "at least one"), ([-1.5], r"\[-1, 1\]"), ([float("inf")], "-1")):
        with pytest.raises(ValueError, match=match):
            risk_bounds.mean_difference_upper_bound(bad, 0.05)


def _regressor(seed=4):
    return DactClassifier(tiny_backbone(seed=seed), task="regression", output_range=(0.0, 5.0),
                          tau=0.0, dropout=0.0, halting_bias=4.0)


def test_a_regression_compute_target_bounds_the_mean_excess_error_the_loop_makes():
    feats, _ = synthetic_task(400, seed=9)
    model = _regressor()
    full = model(feats, full_depth=True)["scores"].numpy().reshape(-1)
    # Labels near the model's own full-depth scores, and the reference is that score.
    labels = np.clip(full + np.random.default_rng(0).normal(0, 0.3, 400), 0, 5).astype("float32")
    data = dataset(feats, labels, batch_size=64)
    result = certify.certify_compute_target(model, data, data, 2.0, full, max_drop=0.2,
                                            shared=True)
    certificate = result["certificate"]
    assert certificate["risk_kind"] == "mean_excess_error"
    assert certificate["certified"] and certificate["rows_needed"] is None
    # What the real loop now answers is what was bounded.
    early, _ = train_lib.predict_dataset(model, data)
    scores = early["scores"].reshape(-1)
    excess = np.clip((np.abs(scores - labels) - np.abs(full - labels)) / 5.0, -1, 1)
    assert certificate["observed_rate"] == pytest.approx(excess.mean(), abs=1e-6)
    assert certificate["bound"] == pytest.approx(
        risk_bounds.mean_difference_upper_bound(excess, 0.05), abs=1e-6)
    assert certificate["bound"] <= 0.2
    worse = np.abs(scores - labels) > np.abs(full - labels) + model.encoder.exit_context.tolerance
    assert certificate["at_risk"] == int(worse.sum())
    assert early["layers_executed"].mean() == pytest.approx(result["mean_layers_executed"])
    assert result["mean_layers_executed"] < model.num_layers
    line = certify.describe(certificate)
    assert line.startswith("certified: a mean absolute error at most 20.00% of the score range")
    # A bound the shifts cannot meet: the model stays at the safest shift and says so.
    model = _regressor()
    result = certify.certify_compute_target(model, data, data, 1.0, full, max_drop=0.001)
    assert not result["certificate"]["certified"] and result["limited"]
    assert certify.describe(result["certificate"]).startswith("not certified: 400 calibration")


def test_a_regressors_certified_drop_bounds_the_excess_error_the_loop_makes():
    from dact_tf.calibration import certified_drop

    model = DactClassifier(tiny_backbone(seed=3), task="regression", output_range=(0.0, 5.0),
                           tau=0.0, dropout=0.0, halting_bias=0.0)
    reference = DactClassifier(tiny_backbone(seed=4), task="regression",
                               output_range=(0.0, 5.0), dropout=0.0)
    rng = np.random.default_rng(1)
    splits = []
    for seed in (5, 6):
        feats, _ = synthetic_task(300, seed=seed)
        labels = reference(feats, full_depth=True)["scores"].numpy().reshape(-1)
        splits.append(dataset(feats, np.clip(labels + rng.normal(0, 0.5, 300), 0, 5)
                              .astype("float32"), batch_size=64))
    result = certified_drop.certify_drop_halting(model, *splits, reference=reference,
                                                 max_drop=0.1, confidence=0.9)
    cert = result["certificate"]
    assert cert["risk_kind"] == "mean_excess_error" and cert["certified"]
    assert model.exit_criterion.halting_rule == "certified"
    # The real loop, on the calibration rows, against the reference's full depth.
    early, labels = train_lib.predict_dataset(model, splits[1])
    theirs, _ = train_lib.predict_dataset(reference, splits[1], full_depth=True)
    excess = certify.excess_error(model, early["scores"], theirs["scores"], labels)
    assert cert["observed_rate"] == pytest.approx(excess.mean(), abs=1e-6)
    assert cert["bound"] == pytest.approx(
        risk_bounds.mean_difference_upper_bound(excess, 0.1), abs=1e-6)
    assert early["layers_executed"].mean() == pytest.approx(result["mean_layers_executed"])
    assert result["mean_layers_executed"] < model.num_layers
