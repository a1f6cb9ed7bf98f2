"""`certificate_check`: when evaluation rows contradict a halting certificate (no TensorFlow)."""

import math

import numpy as np
import pytest

from dact_tf.calibration import certificate_check
from dact_tf.calibration import risk_bounds


def _certificate(epsilon=0.02, confidence=0.95, risk_kind="disagreement", certified=True):
    return {"kind": "halting", "certified": certified, "epsilon": epsilon,
            "confidence": confidence, "risk_kind": risk_kind}


def test_a_rate_is_checked_with_the_exact_clopper_pearson_lower_bound():
    # SST-2 seed 2 at 2 %: 28 of 872 dev sentences differ, a certificate made on phrases.
    check = certificate_check.check_halting(
        _certificate(), {"num_examples": 872, "full_depth_disagreement": 28 / 872})
    lower = risk_bounds.lower_bound(28, 872, 0.05)
    assert check["lower_bound"] == pytest.approx(lower, rel=1e-12)
    # The exact tail: at the lower bound, 28 or more of 872 has probability 0.05.
    at_least_28 = 1.0 - risk_bounds.binomial_cdf(27, 872, lower)
    assert at_least_28 == pytest.approx(0.05, rel=1e-6)
    assert check["contradicted"] and lower > 0.02
    line = certificate_check.message(check)
    assert line.startswith("Warning: on these 872 rows 3.21% of the early answers differ")
    assert "above the certified 2.00%" in line and "--calibration_file" in line
    assert "--calibration_min_tokens=N" in line
    # Above the bound but within chance: no contradiction, no warning.
    within = certificate_check.check_halting(
        _certificate(), {"num_examples": 872, "full_depth_disagreement": 20 / 872})
    assert within["measured"] > 0.02 and not within["contradicted"]
    assert certificate_check.message(within) is None


def test_a_mean_deviation_is_checked_with_hoeffding():
    results = {"num_examples": 1500, "full_depth_mean_deviation": 0.06}
    check = certificate_check.check_halting(
        _certificate(0.02, risk_kind="mean_deviation"), results)
    assert check["quantity"] == "full_depth_mean_deviation"
    assert check["lower_bound"] == pytest.approx(0.06 - math.sqrt(math.log(20) / 3000))
    assert check["contradicted"]
    assert "mean early distance" in certificate_check.message(check)


@pytest.mark.parametrize("certificate", [
    None, _certificate(certified=False), {"kind": "compute_target", "certified": True}])
def test_nothing_to_check_without_a_certified_halting_certificate(certificate):
    assert certificate_check.check_halting(
        certificate, {"num_examples": 10, "full_depth_disagreement": 0.5}) is None


def test_nothing_to_check_without_the_measured_quantity():
    assert certificate_check.check_halting(
        _certificate(risk_kind="mean_deviation"),
        {"num_examples": 10, "full_depth_disagreement": 0.5}) is None


@pytest.mark.parametrize("risk_kind", ["disagreement", "mean_deviation"])
def test_a_certificate_that_holds_exactly_is_flagged_at_most_delta_of_the_time(risk_kind):
    # True risk exactly at epsilon: a false alarm must come in at most delta of the draws.
    rng = np.random.default_rng(0)
    epsilon, n, draws = 0.05, 400, 4000
    if risk_kind == "disagreement":
        measured = rng.binomial(n, epsilon, size=draws) / n
        key = "full_depth_disagreement"
    else:  # a loss in [0, 1] with mean epsilon
        measured = rng.beta(1.0, 19.0, size=(draws, n)).mean(axis=1)
        key = "full_depth_mean_deviation"
    def alarm_rate(values, epsilon):  # each distinct measured value is checked once
        total = len(values)
        values, counts = np.unique(values, return_counts=True)
        return sum(c for m, c in zip(values, counts) if certificate_check.check_halting(
            _certificate(epsilon, 0.9, risk_kind), {"num_examples": n, key: m})["contradicted"]
        ) / total

    assert alarm_rate(measured, epsilon) <= 0.1
    # ...and a broken one (twice the risk) is caught most of the time.
    if risk_kind == "disagreement":
        assert alarm_rate(rng.binomial(n, 2 * epsilon, size=draws) / n, epsilon) > 0.9
