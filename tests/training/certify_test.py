"""Tests of the certificates: the binomial bound, fixed-sequence testing and certified halting."""

import math
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf

from dact_tf.calibration import certify
from dact_tf.calibration import risk_bounds
from dact_tf.training import train_lib
from dact_tf.config import ModelConfig
from dact_tf.models.dact_classifier import DactClassifier
from tests.testing import assert_keras_round_trip_exits_alike
from tests.testing import dataset
from tests.testing import synthetic_task
from tests.testing import tiny_backbone


def _exact_cdf(k, n, p):
    """P(Binomial(n, p) <= k) in exact rational arithmetic."""
    p = Fraction(p)
    return float(sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1)))


@pytest.mark.parametrize("k,n,delta", [(0, 50, 0.05), (1, 50, 0.05), (3, 120, 0.1),
                                       (7, 200, 0.05), (20, 150, 0.01), (149, 150, 0.05)])
def test_the_upper_bound_is_the_exact_binomial_quantile(k, n, delta):
    bound = risk_bounds.upper_bound(k, n, delta)
    assert _exact_cdf(k, n, bound) == pytest.approx(delta, abs=1e-9)
    # Any smaller rate makes k or fewer rows at risk likelier than delta.
    assert _exact_cdf(k, n, bound * (1 - 1e-6)) > delta
    assert risk_bounds.binomial_cdf(k, n, bound) == pytest.approx(delta, abs=1e-9)


def test_the_bound_matches_known_values_and_edges():
    # No row at risk: (1 - U)^n = delta.
    assert risk_bounds.upper_bound(0, 400, 0.05) == pytest.approx(1 - 0.05 ** (1 / 400))
    assert risk_bounds.upper_bound(0, 400, 0.05) == pytest.approx(0.00746, abs=1e-5)
    assert risk_bounds.upper_bound(5, 400, 0.05) == pytest.approx(0.0261, abs=1e-4)
    assert risk_bounds.upper_bound(5, 1000, 0.05) == pytest.approx(0.01048, abs=1e-5)
    assert risk_bounds.upper_bound(10, 10, 0.05) == 1.0
    for bad in [(-1, 10, 0.05), (11, 10, 0.05), (1, 0, 0.05), (1, 10, 0.0), (1, 10, 1.0),
                (1.5, 10, 0.05), (True, 10, 0.05)]:
        with pytest.raises(ValueError):
            risk_bounds.upper_bound(*bad)


def test_rows_needed_is_about_the_smallest_count_that_certifies():
    n = risk_bounds.rows_needed(0.005, 0.01, 0.05)
    assert risk_bounds.upper_bound(math.ceil(0.005 * n), n, 0.05) <= 0.01
    smaller = int(n * 0.9)
    assert risk_bounds.upper_bound(math.ceil(0.005 * smaller), smaller, 0.05) > 0.01
    assert risk_bounds.rows_needed(0.02, 0.01, 0.05) is None  # the rate is already above


def test_the_drop_bound_is_the_discordant_rate_times_the_worse_share():
    bound = risk_bounds.difference_upper_bound(8, 16, 480, 0.05)
    rate = risk_bounds.upper_bound(24, 480, 0.025)  # rows where the two models differ
    share = risk_bounds.upper_bound(8, 24, 0.025)  # of those, the worse ones
    assert bound == pytest.approx(rate * (2 * share - 1))
    # Each factor is the exact Clopper-Pearson quantile: P(X <= k) = 0.025 at the bound.
    assert _exact_cdf(24, 480, rate) == pytest.approx(0.025, abs=1e-9)
    assert _exact_cdf(8, 24, share) == pytest.approx(0.025, abs=1e-9)
    # Tighter than bounding the two margins apart (upper minus lower, 2.5 % each)...
    margins = (risk_bounds.upper_bound(8, 480, 0.025)
               - risk_bounds.lower_bound(16, 480, 0.025))
    assert margins == pytest.approx(0.0134, abs=1e-4) and bound < 0.01 < margins
    # ...and the lower margin is the exact quantile from below: P(X >= 16) = 0.025.
    upper_tail = 1 - _exact_cdf(15, 480, risk_bounds.lower_bound(16, 480, 0.025))
    assert upper_tail == pytest.approx(0.025, abs=1e-9)
    assert risk_bounds.lower_bound(0, 50, 0.05) == 0.0
    # Mostly better rows: the share's bound is under a half, the drop at most 0.
    assert risk_bounds.difference_upper_bound(2, 20, 480, 0.05) == 0.0
    # No discordant row: the drop is at most the discordant rate's bound.
    assert risk_bounds.difference_upper_bound(0, 0, 400, 0.05) == pytest.approx(
        risk_bounds.upper_bound(0, 400, 0.025))
    for bad in [(300, 300, 480), (-1, 5, 480), (5, -1, 480), (1.5, 2, 480)]:
        with pytest.raises(ValueError):
            risk_bounds.difference_upper_bound(*bad, 0.05)


@pytest.mark.parametrize("worse,better,n,delta", [
    (0.03, 0.02, 600, 0.1),  # a one-point drop from balanced discordant rows
    (0.01, 0.0, 500, 0.1),  # every discordant row worse: the share's bound is 1
    (0.06, 0.05, 300, 0.05),  # many discordant rows
])
def test_the_drop_bound_covers_a_known_drop_in_at_least_one_minus_delta_of_draws(
        worse, better, n, delta):
    rng = np.random.default_rng(2)
    draws = rng.multinomial(n, [worse, better, 1 - worse - better], size=3000)
    covered = np.mean([risk_bounds.difference_upper_bound(int(w), int(b), n, delta)
                       >= worse - better - 1e-12 for w, b, _ in draws])
    assert covered >= 1 - delta, covered


def test_fixed_sequence_stops_at_the_first_failure():
    passed, bounds = risk_bounds.fixed_sequence([0, 1, 9, 2], n=1000, epsilon=0.01, delta=0.05)
    assert passed == 2 and len(bounds) == 3  # the 4th setting is never tested
    assert risk_bounds.fixed_sequence([30], 1000, 0.01, 0.05)[0] == 0


def test_the_bound_covers_a_known_rate_in_at_least_one_minus_delta_of_draws():
    rng = np.random.default_rng(0)
    for rate, n, delta in ((0.01, 500, 0.1), (0.05, 200, 0.05)):
        draws = rng.binomial(n, rate, size=3000)
        covered = np.mean([risk_bounds.upper_bound(int(k), n, delta) >= rate for k in draws])
        assert covered >= 1 - delta, (rate, n, covered)


def test_learn_then_test_keeps_the_chosen_settings_risk_below_epsilon():
    """A grid of settings with known true risks; the certified pick is safe in >= 1 - delta."""
    rng = np.random.default_rng(1)
    true_risks = np.array([0.0, 0.002, 0.005, 0.008, 0.012, 0.02, 0.04])
    epsilon, delta, n, repeats = 0.01, 0.1, 1500, 1000
    bad = 0
    for _ in range(repeats):
        # Each row's risk threshold: a row is at risk under setting j when u < risk_j
        # (nested, as with thresholds on one score).
        u = rng.random(n)
        at_risk = [int((u < r).sum()) for r in true_risks]
        passed, _ = risk_bounds.fixed_sequence(at_risk, n, epsilon, delta)
        if passed and true_risks[passed - 1] > epsilon:
            bad += 1
    assert bad / repeats <= delta
    # And it is not vacuous: it usually certifies past the safest setting.
    assert passed >= 2


def _model(method="dact", seed=2, **kwargs):
    return DactClassifier(tiny_backbone(seed=seed), num_classes=2, tau=0.0, dropout=0.0,
                          halting_bias=0.0, method=method, config=ModelConfig.paper(), **kwargs)


@pytest.mark.parametrize("method,fit", [("dact", False), ("pabee", False), ("deebert", False),
                                        ("deebert", True)])
def test_certified_halting_bounds_the_disagreement_it_counted(method, fit):
    feats, labels = synthetic_task(400, seed=2)
    data = dataset(feats, labels, batch_size=64)
    model = _model(method)
    # With rows to fit on, DeeBERT's grid is their entropies' quantiles (DACT's learned
    # score has its own test below).
    fit_data = dataset(*synthetic_task(300, seed=7), batch_size=64) if fit else None
    result = certify.certify_halting(model, data, max_disagreement=0.1, confidence=0.9,
                                     fit_dataset=fit_data)
    if fit:
        assert result["certificate"]["grid_size"] > len(model.exit_criterion.THRESHOLDS) + 1
    certificate = result["certificate"]
    assert certificate["rows"] == 400 and certificate["kind"] == "halting"
    # What the real early-exit loop now does on these rows is what was counted.
    early, _ = train_lib.predict_dataset(model, data)
    full, _ = train_lib.predict_dataset(model, data, full_depth=True)
    differ = early["predictions"] != full["predictions"]
    assert int(differ.sum()) == certificate["at_risk"]
    assert early["layers_executed"].mean() == pytest.approx(result["mean_layers_executed"])
    assert certificate["bound"] == pytest.approx(
        risk_bounds.upper_bound(certificate["at_risk"], 400, 0.1))
    assert certificate["certified"] and certificate["bound"] <= 0.1
    setting = {result["knob"]: result["value"]}
    if method == "dact" and not certificate["exact"]:
        assert model.exit_criterion.halting_rule == "certified"
    for key, value in setting.items():
        if method != "dact" or not certificate["exact"]:
            assert getattr(model.exit_criterion, key) == pytest.approx(value)


def test_certified_dact_saves_blocks_and_exact_stays_proven_under_a_cap():
    feats, labels = synthetic_task(400, seed=3)
    data = dataset(feats, labels, batch_size=64)
    model = _model(seed=3)
    exact_blocks = train_lib.evaluate(model, data, "classification")["mean_layers_executed"]
    result = certify.certify_halting(model, data, max_disagreement=0.2, confidence=0.9)
    assert model.exit_criterion.halting_rule == "certified"
    assert result["mean_layers_executed"] < exact_blocks
    certified = model.exit_criterion.copy()
    model.configure_exit(halting_slack=0.3)  # some rows stop where the proof holds too
    out = model(feats, max_layers=tf.fill([400], model.num_layers))
    full = model(feats, full_depth=True)
    exact = out["exact"].numpy()
    assert exact.any() and not exact.all()
    # `exact` keeps meaning "proven equal to full depth".
    np.testing.assert_array_equal(out["predictions"].numpy()[exact],
                                  full["predictions"].numpy()[exact])
    # The certified rule's setting survives a save and load, with its certificate.
    model.configure_exit(**certified.get_config())
    model.certificates = {"halting": result["certificate"]}
    restored = DactClassifier.from_config(model.get_config())
    assert restored.exit_criterion == model.exit_criterion
    assert restored.certificates == model.certificates


def test_a_learned_score_fitted_on_other_rows_is_certified_and_the_loop_runs_it(tmp_path):
    fit_feats, fit_labels = synthetic_task(400, seed=5)
    feats, labels = synthetic_task(400, seed=6)
    data = dataset(feats, labels, batch_size=64)
    model = _model(seed=3)
    slack = _model(seed=3)
    by_slack = certify.certify_halting(slack, data, max_disagreement=0.2, confidence=0.9)
    result = certify.certify_halting(model, data, max_disagreement=0.2, confidence=0.9,
                                     fit_dataset=dataset(fit_feats, fit_labels, batch_size=64))
    certificate = result["certificate"]
    assert result["knob"] == "halting_threshold" and certificate["fit_rows"] == 400
    assert certificate["certified"] and not certificate["exact"]
    assert by_slack["certificate"]["fit_rows"] == 0
    criterion = model.exit_criterion
    assert criterion.halting_rule == "certified" and len(criterion.consistency_weights) == 5 + 4
    # The real early-exit loop does what the certificate counted (the score in the loop is
    # the replayed one), and saves blocks.
    early, _ = train_lib.predict_dataset(model, data)
    full, _ = train_lib.predict_dataset(model, data, full_depth=True)
    assert int((early["predictions"] != full["predictions"]).sum()) == certificate["at_risk"]
    assert early["layers_executed"].mean() == pytest.approx(result["mean_layers_executed"])
    assert result["mean_layers_executed"] < model.num_layers
    # `exact` under a cap keeps meaning "proven equal to full depth".
    out = model(feats, max_layers=tf.fill([400], model.num_layers))
    exact = out["exact"].numpy()
    np.testing.assert_array_equal(out["predictions"].numpy()[exact],
                                  full["predictions"][exact])
    # The weights survive a .keras save and load.
    assert_keras_round_trip_exits_alike(model, feats, early["layers_executed"], tmp_path)


def test_too_few_rows_keep_an_exact_setting_and_say_how_many_are_needed():
    feats, labels = synthetic_task(40, seed=4)
    model = _model(seed=4)
    result = certify.certify_halting(model, dataset(feats, labels), max_disagreement=0.01)
    certificate = result["certificate"]
    # 0 of 40 rows bounds the rate only by 7.2 %: nothing is certified at 1 %.
    assert not certificate["certified"] and certificate["exact"]
    assert model.exit_criterion.halting_rule == "tight"
    assert certificate["rows_needed"] > 40
    line = certify.describe(certificate)
    assert line.startswith("not certified: 40 calibration rows") and "would be needed" in line


def test_certifying_is_refused_where_it_cannot_run():
    feats, labels = synthetic_task(16, seed=1)
    data = dataset(feats, labels)
    with pytest.raises(ValueError, match="no exit threshold"):
        certify.certify_halting(_model("static"), data)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="max_disagreement"):
            certify.certify_halting(_model(), data, max_disagreement=bad)
    with pytest.raises(ValueError, match="confidence"):
        certify.certify_halting(_model(), data, confidence=1.5)


def test_the_compute_target_is_certified_against_the_reference():
    feats, labels = synthetic_task(600, seed=2)
    data = dataset(feats, labels, batch_size=64)
    model = _model()
    # A reference that is right everywhere: every wrong answer counts.
    result = certify.certify_compute_target(model, data, data, 2.0, np.asarray(labels),
                                            max_drop=0.7, shared=True)
    certificate = result["certificate"]
    early, _ = train_lib.predict_dataset(model, data)
    wrong = int((early["predictions"] != labels).sum())
    assert certificate["at_risk"] == wrong
    assert early["layers_executed"].mean() == pytest.approx(result["mean_layers_executed"])
    assert certificate["calibration_rows"] == "shared with the selection rows"
    assert certificate["certified"] and not result["limited"]
    assert result["mean_layers_executed"] == pytest.approx(2.0, abs=0.3)
    # A bound the model cannot meet: it stays at the safest shift and says so.
    model = _model()
    result = certify.certify_compute_target(model, data, data, 2.0, np.asarray(labels),
                                            max_drop=0.05)
    assert not result["certificate"]["certified"] and result["limited"]
    assert result["mean_layers_executed"] > 3.5


def test_calibrating_again_starts_from_the_trained_biases_not_the_last_shift():
    from dact_tf.calibration import calibration_run

    feats, labels = synthetic_task(300, seed=7)
    data = dataset(feats, labels, batch_size=64)
    model = _model()
    trained = model.encoder.heads.halting_bias_weight.numpy().copy()
    results = [calibration_run.calibrate(model, data, data, target_blocks=2.0, max_drop=0.7,
                                         verbose=0) for _ in range(2)]
    assert results[0]["shift"] != 0.0
    # The same shift, from the same biases: not the first shift twice.
    assert results[1]["shift"] == results[0]["shift"]
    assert results[1]["mean_layers_executed"] == results[0]["mean_layers_executed"]
    np.testing.assert_allclose(model.encoder.heads.halting_bias_weight.numpy(),
                               trained + results[0]["shift"], atol=1e-5)
    assert calibration_run.undo_shift(model) == results[0]["shift"]
    np.testing.assert_allclose(model.encoder.heads.halting_bias_weight.numpy(), trained,
                               atol=1e-5)
    assert calibration_run.undo_shift(model) == 0.0  # nothing recorded any more


def test_a_target_with_no_bound_records_its_shift_so_the_next_one_undoes_it():
    from dact_tf.calibration import calibration_run

    data = dataset(*synthetic_task(300, seed=7), batch_size=64)
    model = _model()
    trained = model.encoder.heads.halting_bias_weight.numpy().copy()
    results = [calibration_run.calibrate(model, data, data, target_blocks=2.0, max_drop=None,
                                         verbose=0) for _ in range(2)]
    assert results[0]["shift"] != 0.0 and results[1]["shift"] == results[0]["shift"]
    record = model.certificates["compute_target"]
    assert record["certified"] is None and record["value"] == results[0]["shift"]
    assert calibration_run.undo_shift(model) == results[0]["shift"]
    np.testing.assert_allclose(model.encoder.heads.halting_bias_weight.numpy(), trained,
                               atol=1e-5)


def test_a_target_and_a_halting_mode_certify_on_two_random_halves_of_the_rows():
    from dact_tf.calibration import calibration_run

    # The halves: disjoint, together every row, about half each, the same on every call,
    # and independent of the rows' order (a row's half follows its index only).
    ids = np.arange(400)
    rows = dataset({"token_ids": np.stack([ids, ids], axis=1)}, ids, batch_size=32)
    halves = [np.concatenate([y.numpy() for _, y in half])
              for half in calibration_run.split_rows(rows)]
    assert sorted(np.concatenate(halves).tolist()) == ids.tolist()
    assert 150 < len(halves[1]) < 250
    again = [np.concatenate([y.numpy() for _, y in half])
             for half in calibration_run.split_rows(rows)]
    np.testing.assert_array_equal(again[1], halves[1])
    # Both certificates: each on its own half; one alone: on every row.
    feats, labels = synthetic_task(300, seed=7)
    selection, calibration = (dataset(*synthetic_task(200, seed=8), batch_size=64),
                              dataset(feats, labels, batch_size=64))
    model = _model()
    result = calibration_run.calibrate(model, selection, calibration, target_blocks=2.0,
                                       max_drop=0.7, max_disagreement=0.3, verbose=0)
    certificates = model.certificates
    assert certificates["compute_target"]["rows"] + certificates["halting"]["rows"] == 300
    assert 100 < certificates["halting"]["rows"] < 200
    assert result["halting"]["certificate"] == certificates["halting"]
    model = _model()
    calibration_run.calibrate(model, selection, calibration, target_blocks=2.0, max_drop=0.7,
                              verbose=0)
    assert model.certificates["compute_target"]["rows"] == 300
