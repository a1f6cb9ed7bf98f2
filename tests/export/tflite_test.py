"""TFLite export: builtin ops only, early-exit WHILE kept, same answers."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from dact_tf.export import check_tflite_model
from dact_tf.export import convert_saved_model
from dact_tf.export import export_saved_model
from dact_tf.export import export_tflite
from dact_tf.export import tflite_ops
from dact_tf.export import tflite_signatures
from tests.export.conftest import NUM_LAYERS
from tests.export.conftest import int32_features
from tests.export.conftest import make_model

SIGNATURES = ("serving_default", "full_depth")


@pytest.fixture(scope="module")
def tflite_files(plain_export, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite")
    return {
        mode: export_tflite(plain_export, str(folder / f"dact_{mode}.tflite"), mode)
        for mode in ("none", "dynamic", "float16")
    }


@pytest.fixture(scope="module")
def saved_model_outputs(plain_export, features):
    loaded = tf.saved_model.load(plain_export)
    inputs = {k: tf.constant(v) for k, v in features.items()}
    return {
        key: {k: v.numpy() for k, v in loaded.signatures[key](**inputs).items()}
        for key in SIGNATURES
    }


def _run(path, signature, features):
    runner = Interpreter(model_path=path).get_signature_runner(signature)
    return runner(**features)


def test_builtin_ops_only_with_while(tflite_files):
    for mode, path in tflite_files.items():
        ops = check_tflite_model(path)
        assert ops["WHILE"] == 2, mode  # The early-exit loops (uncapped, serve_budget).
        assert ops["IF"] >= NUM_LAYERS - 1, mode  # The tree picking a block.
        assert not any(op.startswith("Flex") for op in ops), mode
        # The SavedModel's asserts are dropped (no Assert builtin).
        assert not any("ASSERT" in op.upper() for op in ops), mode
        assert tflite_signatures(path) == sorted(
            SIGNATURES + ("serve_budget", "serve_one")), mode


def test_serve_budget_matches_the_saved_model(tflite_files, plain_export, features):
    caps = (np.arange(len(features["token_ids"])) % 4 + 1).astype(np.int32)
    loaded = tf.saved_model.load(plain_export)
    want = loaded.signatures["serve_budget"](
        max_layers=tf.constant(caps), **{k: tf.constant(v) for k, v in features.items()})
    got = _run(tflite_files["none"], "serve_budget", dict(features, max_layers=caps))
    for key in ("predictions", "layers_executed", "exact"):
        np.testing.assert_array_equal(got[key], want[key].numpy())
    np.testing.assert_allclose(got["probabilities"], want["probabilities"].numpy(), atol=1e-5)
    assert (got["layers_executed"] <= caps).all()


def test_serve_one_answers_each_row_like_serving_default(tflite_files, features):
    # The batch-1 IF chain against the same file's early-exit loop, row by
    # row (both read the same weights: exact in every mode).
    for mode, path in tflite_files.items():
        interpreter = Interpreter(model_path=path)
        one = interpreter.get_signature_runner("serve_one")
        loop = interpreter.get_signature_runner("serving_default")
        for i in range(len(features["token_ids"])):
            row = {k: v[i:i + 1] for k, v in features.items()}
            want, got = loop(**row), one(**row)
            np.testing.assert_array_equal(got["layers_executed"], want["layers_executed"], mode)
            np.testing.assert_array_equal(got["predictions"], want["predictions"], mode)
            np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)


def test_float32_matches_saved_model(tflite_files, features, saved_model_outputs):
    for key in SIGNATURES:
        got = _run(tflite_files["none"], key, features)
        want = saved_model_outputs[key]
        np.testing.assert_array_equal(got["predictions"], want["predictions"])
        np.testing.assert_array_equal(got["layers_executed"], want["layers_executed"])
        np.testing.assert_allclose(
            got["probabilities"], want["probabilities"], atol=1e-5
        )
    layers = saved_model_outputs["serving_default"]["layers_executed"]
    assert (layers < NUM_LAYERS).any()
    # Batch 1 (the signature runner resizes the dynamic inputs per call).
    runner = Interpreter(model_path=tflite_files["none"]).get_signature_runner(
        "serving_default"
    )
    for i in range(6):
        one = runner(**{k: v[i : i + 1] for k, v in features.items()})
        assert one["layers_executed"][0] == layers[i]


def test_quantized_agreement(tflite_files, features, saved_model_outputs):
    want = saved_model_outputs["serving_default"]
    sizes = {mode: os.path.getsize(path) for mode, path in tflite_files.items()}
    report = {}
    for mode in ("dynamic", "float16"):
        got = _run(tflite_files[mode], "serving_default", features)
        report[mode] = {
            "predictions": float((got["predictions"] == want["predictions"]).mean()),
            "layers_executed": float(
                (got["layers_executed"] == want["layers_executed"]).mean()
            ),
            "max_prob_diff": float(
                np.abs(got["probabilities"] - want["probabilities"]).max()
            ),
            "bytes": sizes[mode],
        }
        # This test model's weights are tiny next to its three signatures'
        # graphs (float16 adds a DEQUANTIZE per weight): sizes stay within 5%
        # here; benchmarks/EXPORT_RESULTS.md has the real 2x and 4x.
        assert sizes[mode] < 1.05 * sizes["none"], sizes
    print("TFLite quantized agreement with the SavedModel:", report, sizes)
    assert report["float16"]["predictions"] >= 0.95, report
    assert report["float16"]["layers_executed"] >= 0.95, report
    assert report["dynamic"]["predictions"] >= 0.8, report
    assert report["dynamic"]["layers_executed"] >= 0.8, report


def test_tflite_from_model_regression(tmp_path):
    model = make_model("regression", seed=2)
    path = export_tflite(model, str(tmp_path / "reg.tflite"))
    assert os.listdir(tmp_path) == ["reg.tflite"]
    features = int32_features(48, seed=8)
    got = _run(path, "serving_default", features)
    want = model(features)
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)
    np.testing.assert_array_equal(got["layers_executed"], want["layers_executed"])


@pytest.mark.parametrize("task, kwargs", [
    # Mean pooling must stay within builtins (a [:, :, None] slice is not).
    ("classification", {"pooling": "mean"}),
    ("regression", {"pooling": "mean"}),
    # The baselines' exit tests too, with the same exits as Keras.
    ("classification", {"method": "pabee", "patience": 1}),
    ("regression", {"method": "pabee", "patience": 1, "regression_tolerance": 0.5}),
    ("classification", {"method": "deebert", "entropy_threshold": 1.05}),
    ("classification", {"method": "static", "num_layers": 2}),
    # Halting units that read their answer's confidence (a REDUCE_MAX).
    ("classification", {"halting_confidence": -3.0}),
    # DACT's certified rule with a learned consistency score (top-k, argmax, gather).
    ("classification", {"halting_rule": "certified", "halting_threshold": 0.62,
                        "consistency_weights": [6.0, 3.0, 1.0, -2.0, 1.0, 0.0, -0.5, -1.0, -1.5]}),
    # And a regressor's (abs, clip, a count of blocks left).
    ("regression", {"halting_rule": "certified", "halting_threshold": 0.72,
                    "consistency_weights": [4.0, -2.0, 2.0, -1.0, 1.0, 0.0, -0.5, -1.0, -1.5]}),
    # A calibrated pass-through (a mask beside the trained halting biases).
    ("classification", {"pass_through": 2}),
])
def test_tflite_variants_convert_and_match(tmp_path, task, kwargs):
    kwargs = dict(kwargs)
    pass_through = kwargs.pop("pass_through", 0)
    model = make_model(task, seed=4 if "pooling" in kwargs else 2, **kwargs)
    model.encoder.heads.pass_budget_through(pass_through)
    path = export_tflite(model, str(tmp_path / "variant.tflite"))
    features = int32_features(48, seed=9 if "pooling" in kwargs else 5)
    got, want = _run(path, "serving_default", features), model(features)
    key = "scores" if task == "regression" else "probabilities"
    np.testing.assert_allclose(got[key], want[key], atol=1e-5)
    np.testing.assert_array_equal(got["layers_executed"], want["layers_executed"])
    if kwargs.get("method") in ("pabee", "deebert") or "consistency_weights" in kwargs:
        assert len(set(np.asarray(want["layers_executed"]).tolist())) > 1
    assert np.min(got["layers_executed"]) > pass_through  # no row stops in a passed block


def test_tflite_has_no_input_checks(tflite_files, plain_export):
    """Bad ids are not validated in TFLite: out-of-range gathers fail."""
    ok = int32_features(1, seed=1)
    bad = dict(ok, token_ids=ok["token_ids"] * 0 + 1000)
    runner = Interpreter(model_path=tflite_files["none"]).get_signature_runner(
        "serving_default"
    )
    with pytest.raises(RuntimeError, match="GATHER|out of bounds"):
        runner(**bad)


def test_flex_ops_are_refused(tmp_path):
    module = tf.Module()
    module.f = tf.function(
        lambda x: {"y": tf.math.bincount(x, minlength=3)},
        input_signature=[tf.TensorSpec([None], tf.int32, name="x")],
    )
    path = str(tmp_path / "flex")
    tf.saved_model.save(module, path, signatures={"serving_default": module.f})
    with pytest.raises(ValueError, match="DenseBincount"):
        convert_saved_model(path, ["serving_default"])
    converter = tf.lite.TFLiteConverter.from_saved_model(path)
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    flex = converter.convert()
    assert tflite_ops(flex)["FlexDenseBincount"] == 1
    with pytest.raises(ValueError, match="FlexDenseBincount"):
        check_tflite_model(flex)


def test_unfrozen_keras_variables_are_refused(tmp_path):
    """A module tracking a Keras 3 layer converts to unfrozen variables."""
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    module = tf.Module()
    module.layer = layer
    module.f = tf.function(
        lambda x: {"y": layer(x)},
        input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")],
    )
    path = str(tmp_path / "keras_tracked")
    tf.saved_model.save(module, path, signatures={"serving_default": module.f})
    content = convert_saved_model(path, ["serving_default"])
    assert tflite_ops(content)["READ_VARIABLE"] > 0
    with pytest.raises(ValueError, match="not frozen"):
        check_tflite_model(content)


def test_bad_arguments(plain_export, tmp_path):
    with pytest.raises(ValueError, match="quantize"):
        export_tflite(plain_export, str(tmp_path / "x.tflite"), quantize="int8")
    with pytest.raises(ValueError, match="signature"):
        export_tflite(plain_export, str(tmp_path / "x.tflite"), signatures=())
    assert os.listdir(tmp_path) == []


def test_a_mixed_bfloat16_model_exports_in_float32_and_converts(tmp_path, features):
    # Trained with --mixed_precision=mixed_bfloat16, a model keeps bfloat16
    # layers; the TFLite converter has no bfloat16 kernels.
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = make_model(seed=3)
        model({k: tf.constant(v) for k, v in features.items()})
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.backbone.compute_dtype == "bfloat16"
    saved = export_saved_model(model, str(tmp_path / "sm"))
    path = export_tflite(saved, str(tmp_path / "mixed.tflite"))
    loaded = tf.saved_model.load(saved)
    inputs = {k: tf.constant(v) for k, v in features.items()}
    early = loaded.signatures["serving_default"](**inputs)
    full = loaded.signatures["full_depth"](**inputs)
    assert early["probabilities"].dtype == tf.float32
    np.testing.assert_array_equal(early["predictions"].numpy(), full["predictions"].numpy())
    got = _run(path, "serving_default", features)
    np.testing.assert_array_equal(got["layers_executed"], early["layers_executed"].numpy())
    np.testing.assert_allclose(got["probabilities"], early["probabilities"].numpy(), atol=1e-5)
    # Straight from the in-memory model too (what `dact-tf export --format=tflite`
    # does): it used to keep the bfloat16 graph, which has no builtins.
    direct = _run(export_tflite(model, str(tmp_path / "direct.tflite")), "serving_default",
                  features)
    np.testing.assert_array_equal(direct["layers_executed"], got["layers_executed"])
    np.testing.assert_allclose(direct["probabilities"], got["probabilities"], atol=1e-5)
    # The float32 export answers like the bfloat16 model, to bfloat16's precision.
    keras_out = model(inputs, full_depth=True)
    np.testing.assert_allclose(
        full["probabilities"].numpy(), keras.ops.convert_to_numpy(keras_out["probabilities"]),
        atol=0.05)
