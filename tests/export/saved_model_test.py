"""SavedModel export: fresh-process load, CLI, TF Serving protos, atomicity."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from dact_tf.export import existing_versions
from dact_tf.export import export_saved_model
from dact_tf.export import read_metadata
from dact_tf.export import saved_model as saved_model_lib
from dact_tf.models import DactClassifier
from tests.export.conftest import LABELS
from tests.export.conftest import MAX_LEN
from tests.export.conftest import NUM_LAYERS
from tests.export.conftest import VOCAB_SIZE
from tests.export.conftest import int32_features
from tests.export.conftest import make_model
from tests.export.conftest import run_fresh_python
from tests.export.conftest import small_vocabulary
from tests.testing import tiny_backbone

INPUTS = ("token_ids", "padding_mask", "segment_ids")

# Runs in a new interpreter: TensorFlow only (no dact_tf, keras-hub, TF Text).
FRESH_LOAD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    export_dir, features_path, out_path = sys.argv[1:4]
    loaded = tf.saved_model.load(export_dir)
    info = {"signatures": {}}
    for key, fn in loaded.signatures.items():
        _, inputs = fn.structured_input_signature
        info["signatures"][key] = {
            "inputs": {n: [s.dtype.name, s.shape.as_list()] for n, s in inputs.items()},
            "outputs": {
                n: [s.dtype.name, s.shape.as_list()]
                for n, s in fn.structured_outputs.items()
            },
        }
    features = dict(np.load(features_path))
    results = {}
    for key in ("serving_default", "full_depth"):
        out = loaded.signatures[key](**{k: tf.constant(v) for k, v in features.items()})
        results.update({key + "/" + k: v.numpy() for k, v in out.items()})
    caps = (np.arange(len(features["token_ids"])) % 4 + 1).astype(np.int32)
    out = loaded.signatures["serve_budget"](
        max_layers=tf.constant(caps), **{k: tf.constant(v) for k, v in features.items()})
    results.update({"serve_budget/" + k: v.numpy() for k, v in out.items()})
    results["caps"] = caps
    # Batch 1: the loop must give each example the same answer alone.
    single = [
        loaded.signatures["serving_default"](
            **{k: tf.constant(v[i : i + 1]) for k, v in features.items()}
        )
        for i in range(8)
    ]
    results["single/layers_executed"] = np.concatenate(
        [s["layers_executed"].numpy() for s in single])
    # serve_one: the batch-1 graph (no batch-size test), same answers.
    one = [
        loaded.signatures["serve_one"](
            **{k: tf.constant(v[i : i + 1]) for k, v in features.items()}
        )
        for i in range(8)
    ]
    for name in ("layers_executed", "predictions", "probabilities"):
        results["one/" + name] = np.concatenate([o[name].numpy() for o in one])
    ok = {k: v[:1, :5] for k, v in features.items()}
    bad_inputs = {
        "id_too_large": dict(ok, token_ids=ok["token_ids"] * 0 + VOCAB),
        "id_negative": dict(ok, token_ids=ok["token_ids"] * 0 - 1),
        "too_long": {k: np.ones([1, MAX_LEN + 1], np.int32) for k in ok},
        "mask_shape": dict(ok, padding_mask=ok["padding_mask"][:, :4]),
        "segment_shape": dict(ok, segment_ids=ok["segment_ids"][:, :3]),
        "empty_batch": {k: v[:0] for k, v in ok.items()},
        "empty_rows": {k: v[:, :0] for k, v in ok.items()},
    }
    info["errors"] = {}
    for name, bad in bad_inputs.items():
        try:
            loaded.signatures["serving_default"](
                **{k: tf.constant(v) for k, v in bad.items()})
            info["errors"][name] = None
        except tf.errors.InvalidArgumentError as e:
            info["errors"][name] = "InvalidArgumentError: " + e.message
    info["modules"] = sorted(
        m for m in sys.modules if m.split(".")[0] in ("dact_tf", "keras_hub",
                                                     "tensorflow_text"))
    np.savez(out_path, **results)
    print(json.dumps(info))
    """
).replace("VOCAB", str(VOCAB_SIZE)).replace("MAX_LEN", str(MAX_LEN))


@pytest.fixture(scope="module")
def fresh(plain_export, features, tmp_path_factory):
    """Loads `plain_export` in a fresh TensorFlow-only process."""
    folder = tmp_path_factory.mktemp("fresh")
    script = folder / "fresh_load.py"
    script.write_text(FRESH_LOAD)
    np.savez(folder / "features.npz", **features)
    info = run_fresh_python(
        str(script), plain_export, folder / "features.npz", folder / "out.npz"
    )
    return info, dict(np.load(folder / "out.npz"))


def test_layout_metadata_and_sizes(plain_export, classifier):
    base = os.path.dirname(plain_export)
    assert os.path.basename(plain_export) == "1"
    assert sorted(os.listdir(base)) == ["1"]  # No temporary folder left.
    assert os.path.isfile(os.path.join(plain_export, "saved_model.pb"))
    assert os.path.isdir(os.path.join(plain_export, "variables"))
    meta = read_metadata(plain_export)
    assert meta["task"] == "classification"
    assert meta["label_names"] == LABELS
    assert meta["num_layers"] == NUM_LAYERS
    assert meta["max_sequence_length"] == MAX_LEN
    assert meta["vocabulary_size"] == VOCAB_SIZE
    assert meta["version"] == 1
    assert meta["signatures"] == ["full_depth", "serve_budget", "serve_one", "serving_default"]
    # Each weight stored once (tracking the Keras model too would double it).
    weights_bytes = sum(w.numpy().nbytes for w in classifier.weights)
    data = os.path.join(plain_export, "variables", "variables.data-00000-of-00001")
    assert weights_bytes <= os.path.getsize(data) < 1.5 * weights_bytes


def test_fresh_process_signatures(fresh):
    info, _ = fresh
    assert info["modules"] == []  # Neither dact_tf, keras-hub nor TF Text.
    signatures = info["signatures"]
    assert sorted(signatures) == ["full_depth", "serve_budget", "serve_one", "serving_default"]
    for key in signatures:
        expected = {k: ["int32", [1 if key == "serve_one" else None, None]] for k in INPUTS}
        if key == "serve_budget":
            expected["max_layers"] = ["int32", [None]]
        assert signatures[key]["inputs"] == expected
        batch = 1 if key == "serve_one" else None
        outputs = {
            "probabilities": ["float32", [batch, len(LABELS)]],
            "predictions": ["int32", [batch]],
            "layers_executed": ["int32", [batch]],
        }
        if key == "serve_budget":
            outputs["exact"] = ["bool", [None]]
        assert signatures[key]["outputs"] == outputs


def test_fresh_process_matches_keras_and_exits_early(fresh, classifier, features):
    _, out = fresh
    keras_out = classifier(features, training=False)
    early_layers = out["serving_default/layers_executed"]
    # Early exit gives the full-depth predictions...
    np.testing.assert_array_equal(
        out["serving_default/predictions"], out["full_depth/predictions"]
    )
    np.testing.assert_array_equal(out["full_depth/layers_executed"], NUM_LAYERS)
    # ...and the Keras model's outputs.
    np.testing.assert_allclose(
        out["serving_default/probabilities"],
        keras_out["probabilities"].numpy(),
        atol=1e-5,
    )
    np.testing.assert_array_equal(
        out["serving_default/predictions"], keras_out["predictions"].numpy()
    )
    np.testing.assert_array_equal(early_layers, keras_out["layers_executed"].numpy())
    # It really exits early, at varied blocks, in a mixed batch and alone.
    assert (early_layers < NUM_LAYERS).any()
    assert len(np.unique(early_layers)) >= 2
    np.testing.assert_array_equal(out["single/layers_executed"], early_layers[:8])
    # serve_one (the batch-1 graph) answers each row as serving_default does.
    np.testing.assert_array_equal(out["one/layers_executed"], early_layers[:8])
    np.testing.assert_array_equal(
        out["one/predictions"], out["full_depth/predictions"][:8])
    np.testing.assert_allclose(
        out["one/probabilities"], out["serving_default/probabilities"][:8], atol=1e-5)


def test_fresh_process_input_checks_survive_export(fresh):
    info, _ = fresh
    errors = info["errors"]
    for name, error in errors.items():
        assert error and error.startswith("InvalidArgumentError"), (name, error)
    assert "vocabulary size" in errors["id_too_large"]
    assert "token_ids must be >= 0" in errors["id_negative"]
    assert "maximum" in errors["too_long"]
    assert "padding_mask and token_ids" in errors["mask_shape"]
    assert "segment_ids and token_ids" in errors["segment_shape"]
    assert "empty batch" in errors["empty_batch"]
    assert "sequences of length 0" in errors["empty_rows"]


def test_segment_ids_are_checked(plain_export):
    fn = tf.saved_model.load(plain_export).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="segment_ids"):
        fn(
            token_ids=tf.constant([[2, 5, 3]]),
            padding_mask=tf.constant([[1, 1, 1]]),
            segment_ids=tf.constant([[0, -1, 0]]),
        )


def _cli():
    return os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


def test_saved_model_cli_show_and_run(plain_export, features, classifier, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    show = subprocess.run(
        [_cli(), "show", "--dir", plain_export, "--all"],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert show.returncode == 0, show.stderr[-3000:]
    for text in ("serving_default", "full_depth", "token_ids", "layers_executed",
                 "DT_INT32"):
        assert text in show.stdout
    inputs = []
    for key in INPUTS:
        np.save(tmp_path / f"{key}.npy", features[key][:16])
        inputs.append(f"{key}={tmp_path / f'{key}.npy'}")
    outdir = tmp_path / "out"
    run = subprocess.run(
        [_cli(), "run", "--dir", plain_export, "--tag_set", "serve",
         "--signature_def", "serving_default", "--inputs", ";".join(inputs),
         "--outdir", str(outdir)],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    expected = classifier({k: v[:16] for k, v in features.items()})
    np.testing.assert_array_equal(
        np.load(outdir / "predictions.npy"), expected["predictions"].numpy()
    )
    np.testing.assert_array_equal(
        np.load(outdir / "layers_executed.npy"), expected["layers_executed"].numpy()
    )


def test_tf_serving_predict_request(plain_export, features):
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dact"
    request.model_spec.signature_name = "serving_default"
    batch = {k: v[:32] for k, v in features.items()}
    for key, value in batch.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    parsed = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    assert parsed == request
    assert {k: parsed.inputs[k].dtype for k in INPUTS} == {
        k: tf.int32.as_datatype_enum for k in INPUTS
    }
    loaded = tf.saved_model.load(plain_export)
    fn = loaded.signatures[parsed.model_spec.signature_name]
    from_proto = fn(**{k: tf.make_ndarray(v) for k, v in parsed.inputs.items()})
    direct = fn(**{k: tf.constant(v) for k, v in batch.items()})
    for key in direct:
        np.testing.assert_array_equal(from_proto[key].numpy(), direct[key].numpy())
    # The answer travels back as a PredictResponse.
    response = predict_pb2.PredictResponse()
    for key, value in from_proto.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
    back = predict_pb2.PredictResponse.FromString(response.SerializeToString())
    np.testing.assert_array_equal(
        tf.make_ndarray(back.outputs["predictions"]), direct["predictions"].numpy()
    )


# ----------------------------------------------------------------------------
# Versions and atomicity.
# ----------------------------------------------------------------------------


def _snapshot(folder):
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


def test_failed_export_leaves_no_version(plain_export, classifier, monkeypatch):
    base = os.path.dirname(plain_export)
    before = _snapshot(base)

    def failing_save(obj, export_dir, signatures=None, options=None):
        # Fail part-way: something is already written.
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(classifier, base)
    assert sorted(os.listdir(base)) == ["1"]
    assert _snapshot(base) == before


def test_versions_increment_and_are_immutable(classifier, tmp_path, monkeypatch):
    def fake_save(obj, export_dir, signatures=None, options=None):
        assert sorted(signatures) == ["full_depth", "serve_budget", "serve_one", "serving_default"]
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
            f.write(b"fake")

    monkeypatch.setattr(tf.saved_model, "save", fake_save)
    base = str(tmp_path / "model")
    paths = [export_saved_model(classifier, base) for _ in range(2)]
    assert paths == [os.path.join(base, "1"), os.path.join(base, "2")]
    assert export_saved_model(classifier, base, version=7).endswith("7")
    assert export_saved_model(classifier, base).endswith("8")
    os.makedirs(os.path.join(base, "not_a_version"))
    assert existing_versions(base) == [1, 2, 7, 8]
    with pytest.raises(FileExistsError):
        export_saved_model(classifier, base, version=2)
    assert sorted(os.listdir(base)) == ["1", "2", "7", "8", "not_a_version"]
    assert read_metadata(os.path.join(base, "8"))["version"] == 8


def test_bad_arguments(classifier, tmp_path):
    with pytest.raises(TypeError, match="DactClassifier"):
        export_saved_model(object(), str(tmp_path))
    with pytest.raises(ValueError, match="tokenizer"):
        export_saved_model(classifier, str(tmp_path), text_pair=True)
    with pytest.raises(ValueError, match="version"):
        export_saved_model(classifier, str(tmp_path), version=-1)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------
# Regression.
# ----------------------------------------------------------------------------


def test_regression_export(tmp_path):
    model = make_model("regression", seed=1)
    path = export_saved_model(model, str(tmp_path))
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    assert sorted(fn.structured_outputs) == ["layers_executed", "scores"]
    features = int32_features(64, seed=5)
    inputs = {k: tf.constant(v) for k, v in features.items()}
    early = fn(**inputs)
    full = loaded.signatures["full_depth"](**inputs)
    expected = model(features)
    np.testing.assert_allclose(early["scores"], expected["scores"], atol=1e-5)
    np.testing.assert_array_equal(
        early["layers_executed"], expected["layers_executed"]
    )
    # The regression guarantee: halting moves a score by <= the tolerance.
    tolerance = model.encoder.regression_tolerance
    assert np.abs(early["scores"] - full["scores"]).max() <= tolerance + 1e-6
    assert (early["layers_executed"].numpy() < NUM_LAYERS).any()
    meta = read_metadata(path)
    assert meta["task"] == "regression" and meta["output_range"] == [0.0, 5.0]


def test_vocabulary_written_with_text_export(text_export):
    for folder in ("assets.extra", "assets"):
        path = os.path.join(text_export, folder, "vocab.txt")
        with open(path, encoding="utf-8") as f:
            assert f.read().splitlines() == small_vocabulary()
    meta = read_metadata(text_export)
    assert meta["signatures"] == [
        "full_depth", "serve_budget", "serve_one", "serve_text", "serve_text_pair", "serving_default"
    ]
    assert meta["text"]["sequence_length"] == MAX_LEN
    assert meta["text"]["special_tokens"] == {"cls": 2, "sep": 3, "pad": 0, "mask": 4}
    assert json.loads(json.dumps(meta)) == meta
    assert saved_model_lib.METADATA_FILENAME in os.listdir(
        os.path.join(text_export, "assets.extra")
    )


_EXPORT_FOREVER = """
import sys
from tests.export.conftest import NUM_LAYERS
from tests.testing import tiny_backbone
from dact_tf.export import export_saved_model
from dact_tf.models import DactClassifier

model = DactClassifier(tiny_backbone(num_layers=NUM_LAYERS), num_classes=3)
while True:  # versions 1, 2, ... until killed
    print(export_saved_model(model, sys.argv[1]), flush=True)
"""


def test_export_killed_part_way_leaves_complete_versions_only(tmp_path):
    import signal
    import time

    base = tmp_path / "exports"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", _EXPORT_FOREVER, str(base)],
                            cwd=repo, env=dict(os.environ, PYTHONPATH=repo),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        # Wait for version 1, then kill while a later version is being written.
        assert proc.stdout.readline().strip().endswith("1"), "no first export"
        deadline = time.time() + 120
        while time.time() < deadline:
            if any(name.startswith(".tmp-dact-export-") for name in os.listdir(base)):
                break
            time.sleep(0.01)
        else:
            raise AssertionError("no export in progress to kill")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Only whole versions are visible, and each loads and answers.
    versions = existing_versions(str(base))
    assert versions and versions == list(range(1, len(versions) + 1))
    for v in versions:
        fn = tf.saved_model.load(str(base / str(v))).signatures["serving_default"]
        out = fn(token_ids=tf.constant([[2, 5, 3]]), padding_mask=tf.constant([[1, 1, 1]]),
                 segment_ids=tf.constant([[0, 0, 0]]))
        assert out["layers_executed"].shape == (1,)
    # The killed export's leftover is hidden; the next export takes the next number.
    classifier = DactClassifier(tiny_backbone(num_layers=2), num_classes=2)
    path = export_saved_model(classifier, str(base))
    assert os.path.basename(path) == str(versions[-1] + 1)


def test_wrong_dtype_is_rejected_by_the_signature(plain_export):
    fn = tf.saved_model.load(plain_export).signatures["serving_default"]
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="int32"):
        fn(token_ids=tf.constant([[2.0, 5.0, 3.0]]), padding_mask=tf.constant([[1, 1, 1]]),
           segment_ids=tf.constant([[0, 0, 0]]))


def test_token_id_export_keeps_the_vocabulary_but_no_text_signature(classifier, tmp_path):
    from tests.export.conftest import small_tokenizer

    path = export_saved_model(classifier, str(tmp_path), tokenizer=small_tokenizer(),
                              text_pair=True, text_signatures=False)
    meta = read_metadata(path)
    assert sorted(meta["signatures"]) == ["full_depth", "serve_budget", "serve_one", "serving_default"]
    vocab = os.path.join(path, "assets.extra", "vocab.txt")
    with open(vocab, encoding="utf-8") as f:
        assert len(f.read().splitlines()) == small_tokenizer().vocabulary_size()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        assert b"WordpieceTokenize" not in f.read()


def test_serve_budget_caps_each_row_and_flags_the_exact_answers(fresh, classifier, features):
    _, out = fresh
    caps = out["caps"]
    layers = out["serve_budget/layers_executed"]
    early = out["serving_default/layers_executed"]
    np.testing.assert_array_equal(layers, np.minimum(early, caps))
    # Rows that finished within their cap answer exactly as full depth ...
    exact = out["serve_budget/exact"]
    np.testing.assert_array_equal(exact, early <= caps)
    assert exact.any() and not exact.all()
    np.testing.assert_array_equal(out["serve_budget/predictions"][exact],
                                  out["full_depth/predictions"][exact])
    # ... and every row as the Keras model under the same caps.
    keras_out = classifier(features, max_layers=caps)
    np.testing.assert_array_equal(out["serve_budget/predictions"], keras_out["predictions"])
    np.testing.assert_allclose(out["serve_budget/probabilities"], keras_out["probabilities"],
                               atol=1e-5)


def test_serve_budget_rejects_bad_caps(plain_export, features):
    fn = tf.saved_model.load(plain_export).signatures["serve_budget"]
    batch = {k: tf.constant(v[:4]) for k, v in features.items()}
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_layers"):
        fn(max_layers=tf.constant([1, 0, 2, 3]), **batch)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_layers"):
        fn(max_layers=tf.constant([1, 2]), **batch)


def test_exports_honour_the_umask(classifier, tmp_path):
    """A TF Serving container running as another user must read the export."""
    import stat

    from dact_tf.export import export_tflite

    old = os.umask(0o022)
    try:
        path = export_saved_model(classifier, str(tmp_path / "sm"))
        tfl = export_tflite(path, str(tmp_path / "m.tflite"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    for root, dirs, names in os.walk(path):
        for d in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(root, d)).st_mode) == 0o755, d
        for n in names:
            assert stat.S_IMODE(os.stat(os.path.join(root, n)).st_mode) == 0o644, n
    assert stat.S_IMODE(os.stat(tfl).st_mode) == 0o644


def test_a_killed_exports_temporary_folder_is_removed_by_the_next_export(classifier, tmp_path):
    base = tmp_path / "model"
    base.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = base / f".tmp-dact-export-{dead.pid}-abc"
    (stale / "variables").mkdir(parents=True)
    live = base / f".tmp-dact-export-{os.getpid()}-xyz"  # a running exporter's
    live.mkdir()
    export_saved_model(classifier, str(base))
    assert not stale.exists() and live.exists()
    assert sorted(n for n in os.listdir(base) if not n.startswith(".")) == ["1"]


def test_a_pair_only_export_has_no_single_sentence_signature(classifier, tmp_path):
    """`text_pair="only"` (what `dact-tf export` gives pair models): a single sentence has
    no signature to be answered by, as if it were a whole pair."""
    import tensorflow_text  # noqa: F401  (the text signatures' ops)

    from tests.export.conftest import small_tokenizer

    path = export_saved_model(classifier, str(tmp_path), tokenizer=small_tokenizer(),
                              text_pair="only")
    meta = read_metadata(path)
    assert "serve_text_pair" in meta["signatures"] and "serve_text" not in meta["signatures"]
    loaded = tf.saved_model.load(path)
    assert "serve_text" not in loaded.signatures
    out = loaded.signatures["serve_text_pair"](text_a=tf.constant(["a b", "c"]),
                                               text_b=tf.constant(["d", "e f"]))
    assert out["predictions"].shape == (2,)
    with pytest.raises(ValueError, match="text_pair"):
        export_saved_model(classifier, str(tmp_path / "x"), tokenizer=small_tokenizer(),
                           text_pair="yes")
