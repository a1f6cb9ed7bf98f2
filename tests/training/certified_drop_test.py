"""Tests of the certified drop: DACT's halting shift and learned score under one bound."""

import copy

import keras
import numpy as np
import pytest

from dact_tf.calibration import calibration_run
from dact_tf.calibration import certified_drop
from dact_tf.calibration import certify
from dact_tf.calibration import halting_bias
from dact_tf.calibration import risk_bounds
from dact_tf.config import ModelConfig
from dact_tf.models.dact_classifier import DactClassifier
from dact_tf.training import train_lib
from tests.testing import dataset
from tests.testing import synthetic_task
from tests.testing import tiny_backbone


def _model(method="dact", seed=3, **kwargs):
    return DactClassifier(tiny_backbone(seed=seed), num_classes=2, tau=0.0, dropout=0.0,
                          halting_bias=0.0, method=method, config=ModelConfig.paper(), **kwargs)


def _rows(count, seed):
    return dataset(*synthetic_task(count, seed=seed), batch_size=64)


def test_the_certificate_counts_what_the_loop_then_does_against_the_reference():
    model, reference = _model(seed=3), _model(seed=4)
    selection, rows = _rows(400, 5), _rows(400, 6)
    bias_before = model.encoder.heads.halting_bias_weight.numpy().copy()
    result = certified_drop.certify_drop_halting(model, selection, rows, reference=reference,
                                                 max_drop=0.2, confidence=0.9)
    cert = result["certificate"]
    assert cert["kind"] == "compute_target" and cert["certified"]
    assert cert["knob"] == "halting_bias_shift+halting_threshold"
    assert cert["reference"] == "the full-depth model" and cert["fit_rows"] == 400
    assert cert["value"] == result["halting_threshold"] and cert["shift"] == result["shift"]
    # The real early-exit loop, on the calibration rows, against the reference's full depth.
    early, labels = train_lib.predict_dataset(model, rows)
    theirs, _ = train_lib.predict_dataset(reference, rows, full_depth=True)
    worse, better = certify.against_reference(model, early["predictions"],
                                              theirs["predictions"], labels)
    assert (int(worse.sum()), int(better.sum())) == (cert["at_risk"], cert["better"])
    assert cert["bound"] == pytest.approx(
        risk_bounds.difference_upper_bound(cert["at_risk"], cert["better"], 400, 0.1))
    assert cert["bound"] <= 0.2
    assert early["layers_executed"].mean() == pytest.approx(result["mean_layers_executed"])
    assert result["mean_layers_executed"] < model.num_layers
    # The model runs the certified rule at the chosen shift.
    criterion = model.exit_criterion
    assert criterion.halting_rule == "certified"
    assert criterion.halting_threshold == pytest.approx(result["halting_threshold"])
    np.testing.assert_allclose(model.encoder.heads.halting_bias_weight.numpy(),
                               bias_before + result["shift"], rtol=0, atol=1e-5)
    assert "Certified drop" in certified_drop.message(result)
    # The choice survives a config round trip.
    restored = DactClassifier.from_config(model.get_config())
    assert restored.exit_criterion == criterion


def test_the_candidates_are_tested_safest_first_along_a_frontier():
    model, reference = _model(seed=3), _model(seed=4)
    trace, labels = halting_bias.trace_trained_halting(model, _rows(300, 7))
    ref = np.asarray(certify.reference_predictions(reference, _rows(300, 7))[0])
    path = certified_drop.frontier(model, trace, np.asarray(labels),
                                   ref, lambda shift: np.full(model.num_layers, shift))
    blocks = [c[0] for c in path]
    drops = [c[1] for c in path]
    assert len(path) >= 2
    assert blocks == sorted(blocks, reverse=True)  # most blocks first
    assert all(a < b for a, b in zip(drops, drops[1:]))  # each step costs more
    assert all(1.0 <= b <= model.num_layers for b in blocks)
    assert {c[2] for c in path} <= set(certified_drop.SHIFTS)


def test_a_drop_that_cannot_be_certified_leaves_the_model_as_trained_under_its_proven_rule():
    reference, model = _trained_reference(), _model(seed=3)
    bias_before = model.encoder.heads.halting_bias_weight.numpy().copy()
    trained, _ = train_lib.predict_dataset(model, _rows(40, 6))
    result = certified_drop.certify_drop_halting(model, _rows(200, 5), _rows(40, 6),
                                                 reference=reference, max_drop=0.01)
    cert = result["certificate"]
    assert not cert["certified"] and cert["at_risk"] > cert["better"]
    assert cert["rows_needed"] is None or cert["rows_needed"] > 40
    assert model.exit_criterion.halting_rule == "tight" and result["shift"] == 0.0
    np.testing.assert_array_equal(model.encoder.heads.halting_bias_weight.numpy(), bias_before)
    after, _ = train_lib.predict_dataset(model, _rows(40, 6))
    np.testing.assert_array_equal(after["layers_executed"], trained["layers_executed"])
    assert result["mean_layers_executed"] == pytest.approx(result["before"])
    assert certify.describe(cert).startswith("not certified: 40 calibration rows")
    assert not result["kept"] and certified_drop.message(result).startswith(
        "No certified drop: the model keeps its trained halting under the proven rule")


def _trained_reference(seed=4):
    """A reference trained on the task: against an untrained model the drop is large."""
    reference = _model(seed=seed)
    reference.compile(optimizer=keras.optimizers.Adam(3e-3))
    reference.fit(_rows(400, 9), epochs=4, verbose=0)
    return reference


def test_a_drop_that_cannot_be_certified_keeps_the_previous_calibration():
    model = _model(seed=3)
    calibration_run.calibrate(model, _rows(200, 5), _rows(200, 6), target_blocks=2.0,
                              max_drop=None, max_disagreement=0.3, confidence=0.9, verbose=0)
    assert model.exit_criterion.halting_rule == "certified"
    exit_before = model.exit_criterion.copy()
    certificates = copy.deepcopy(model.certificates)
    biases = model.encoder.heads.halting_bias_weight.numpy().copy()
    before, _ = train_lib.predict_dataset(model, _rows(40, 6))
    result = calibration_run.calibrate_drop(model, _rows(200, 5), _rows(40, 6),
                                            reference=_trained_reference(), max_drop=0.01,
                                            verbose=0)
    assert not result["certificate"]["certified"] and result["kept"]
    assert model.exit_criterion == exit_before and model.certificates == certificates
    np.testing.assert_allclose(model.encoder.heads.halting_bias_weight.numpy(), biases,
                               atol=1e-5)
    after, _ = train_lib.predict_dataset(model, _rows(40, 6))
    np.testing.assert_array_equal(after["layers_executed"], before["layers_executed"])
    np.testing.assert_array_equal(after["predictions"], before["predictions"])
    # What the result reports is what the kept model does on those rows.
    assert result["mean_layers_executed"] == pytest.approx(before["layers_executed"].mean())
    assert certified_drop.message(result).startswith(
        "No certified drop: the model keeps its previous calibration")


def test_refusals():
    rows = _rows(32, 1)
    for method in ("pabee", "deebert"):
        with pytest.raises(ValueError, match="needs a DACT model"):
            certified_drop.certify_drop_halting(_model(method), rows, rows)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        certified_drop.certify_drop_halting(_model(), rows, rows, max_drop=1.0)
    with pytest.raises(ValueError, match="needs its bound"):
        calibration_run.calibrate_drop(_model(), rows, rows, max_drop=None)
    for method in ("pabee", "deebert"):
        with pytest.raises(ValueError, match="--certified_risk=drop certifies DACT"):
            calibration_run.check_flags(method, "certified", 0.01, 0.01, 0.95, "drop")


def test_calibrate_drop_records_one_certificate():
    model, reference = _model(seed=3), _model(seed=4)
    result = calibration_run.calibrate_drop(model, _rows(300, 5), _rows(300, 6),
                                            reference=reference, max_drop=0.25, confidence=0.9,
                                            verbose=0)
    assert result["mode"] == "certified_drop" and "halting" not in result
    assert model.certificates == {"compute_target": result["certificate"]}
    assert result["holdout_layers_executed"] == pytest.approx(
        result["selection_layers_executed"], abs=1e-6)
    # A bad bound is refused before the model changes: the shift and certificate stay.
    biases = model.encoder.heads.halting_bias_weight.numpy().copy()
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        calibration_run.calibrate_drop(model, _rows(64, 5), _rows(64, 6), max_drop=1.5)
    np.testing.assert_array_equal(model.encoder.heads.halting_bias_weight.numpy(), biases)
    assert model.certificates == {"compute_target": result["certificate"]}


def test_a_new_halting_mode_after_a_certified_drop_voids_it_and_its_shift():
    model, reference = _model(seed=3), _model(seed=4)
    trained = model.encoder.heads.halting_bias_weight.numpy().copy()
    result = calibration_run.calibrate_drop(model, _rows(300, 5), _rows(300, 6),
                                            reference=reference, max_drop=0.25, confidence=0.9,
                                            verbose=0)
    assert result["shift"] != 0.0
    # The drop was certified for the shift with the threshold a new halting mode replaces.
    calibration_run.calibrate(model, _rows(300, 5), _rows(300, 6), max_disagreement=0.3,
                              confidence=0.9, verbose=0)
    assert "compute_target" not in model.certificates
    np.testing.assert_allclose(model.encoder.heads.halting_bias_weight.numpy(), trained,
                               atol=1e-5)


def test_training_refuses_a_certified_drop_it_cannot_give_before_any_work(tmp_path):
    from dact_tf import config
    from dact_tf.data import builtin_sst2_dir

    model_config, train_config = config.recipe("certified")
    cases = ((config.DataConfig(task="sst2", data_dir=builtin_sst2_dir()),
              config.ModelConfig.certified(method="pabee"),
              "--method=pabee certifies --certified_risk=disagreement"),
             (config.DataConfig(task="sst2", data_dir=builtin_sst2_dir()),
              config.ModelConfig(halting_rule="certified", certified_risk="mean_deviation"),
              "--certified_risk=mean_deviation bounds a regression score"))
    for data_config, model_config, message in cases:
        model_dir = tmp_path / "model"
        with pytest.raises(ValueError, match=message):
            train_lib.train(str(model_dir), data_config, model_config, train_config)
        assert not model_dir.exists()
