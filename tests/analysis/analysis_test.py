"""Tests of dact_tf.evaluation.analysis (replayed exits, exit curves) and dact_tf.evaluation.plots."""

import csv

import numpy as np
import pytest

from dact_tf.evaluation import analysis
from dact_tf.evaluation import plots
from dact_tf.training import train_lib
from dact_tf.models.dact_classifier import DactClassifier
from tests.testing import dataset
from tests.testing import synthetic_task
from tests.testing import tiny_backbone


def _model(method="dact", seed=3, **kwargs):
    return DactClassifier(tiny_backbone(seed=seed), num_classes=2, dropout=0.0, method=method,
                          halting_bias=0.5, **kwargs)


@pytest.mark.parametrize("confidence", [0.0, -4.0])
def test_replayed_exits_equal_the_early_exit_loop_for_any_bias_shift(confidence):
    feats, labels = synthetic_task(64, seed=4)
    data = dataset(feats, labels)
    model = _model(halting_confidence=confidence)
    trace, traced_labels = analysis.trace_dataset(model, data)
    np.testing.assert_array_equal(traced_labels, labels)
    for shift in (-2.0, 0.0, 1.5):
        exits, answers = analysis.replay_exits(model, trace, shift=shift)
        model.encoder.heads.shift_halting_bias(shift)
        real, _ = train_lib.predict_dataset(model, data)
        model.encoder.heads.shift_halting_bias(-shift)
        np.testing.assert_array_equal(exits, real["layers_executed"])
        np.testing.assert_allclose(answers, real["probabilities"], atol=1e-5)


@pytest.mark.parametrize("method,knob", [("pabee", "patience"),
                                         ("deebert", "entropy_threshold")])
def test_exit_curve_points_equal_the_model_run_at_that_setting(method, knob):
    feats, labels = synthetic_task(64, seed=6)
    data = dataset(feats, labels)
    model = _model(method)
    trace, labels = analysis.trace_dataset(model, data)
    curve = analysis.exit_curve(model, trace, labels, "classification")
    assert curve and all(p["knob"] == knob for p in curve)
    blocks = [p["mean_layers_executed"] for p in curve]
    assert blocks == sorted(blocks)
    before = model.exit_criterion.get_config()
    for point in curve[:3]:
        model.configure_exit(**{knob: point["value"]})
        real = train_lib.evaluate(model, data, "classification")
        assert real["mean_layers_executed"] == pytest.approx(point["mean_layers_executed"])
        assert real["accuracy"] == pytest.approx(point["accuracy"])
    # The sweep leaves the model's own setting alone.
    model.configure_exit(**before)
    analysis.exit_curve(model, trace, labels, "classification")
    assert model.exit_criterion.get_config() == before


def test_static_truncation_has_no_knob_and_empty_datasets_are_refused():
    feats, labels = synthetic_task(16, seed=1)
    model = _model("static")
    trace, labels = analysis.trace_dataset(model, dataset(feats, labels))
    assert analysis.exit_curve(model, trace, labels, "classification") == []
    with pytest.raises(ValueError, match="empty dataset"):
        analysis.trace_dataset(model, dataset(feats, labels).take(0))


def test_per_block_table_explains_its_columns():
    feats, labels = synthetic_task(32, seed=2)
    model = _model()
    report = analysis.per_block_report(model, dataset(feats, labels), "classification")
    text = analysis.format_per_block(report)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == model.num_layers + 1  # the header and one row per block
    for column in ("head accuracy:", "a_n accuracy:", "mean p_n", "exits:"):
        assert column in text


def test_write_model_report_writes_plots_and_csvs_that_match_the_model(tmp_path):
    feats, labels = synthetic_task(64, seed=7)
    data = dataset(feats, labels)
    model = _model()
    paths = plots.write_model_report(model, data, "classification", str(tmp_path / "p"))
    for key in ("plot", "histogram"):
        with open(paths[key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(paths["per_block_csv"]) as f:
        rows = list(csv.DictReader(f))
    real = train_lib.evaluate(model, data, "classification")
    assert [int(r["exits"]) for r in rows] == real["layers_histogram"]
    assert paths["metric"] == pytest.approx(real["accuracy"])
    assert paths["mean_layers_executed"] == pytest.approx(real["mean_layers_executed"])
    with open(paths["exit_curve_csv"]) as f:
        curve = list(csv.DictReader(f))
    assert curve[0]["knob"] == "halting_bias_shift" and len(curve) >= 2
    with open(paths["budget_csv"]) as f:
        budget = list(csv.DictReader(f))
    assert [int(r["max_layers"]) for r in budget] == [1, 2, 3, 4]
    capped = train_lib.evaluate(model, data, "classification", max_layers=2)
    assert float(budget[1]["accuracy"]) == pytest.approx(capped["accuracy"])
    assert float(budget[1]["exact_fraction"]) == pytest.approx(capped["exact_fraction"])
    shift0 = [r for r in curve if float(r["value"]) == 0.0]
    if shift0:  # kept unless a neighbouring shift gave the same exits
        assert float(shift0[0]["accuracy"]) == pytest.approx(real["accuracy"])
