"""DACT on every keras-hub encoder family (`dact_tf.models.encoders`)."""

import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from dact_tf.export import saved_model
from dact_tf.export import tflite
from dact_tf.models import encoders
from dact_tf.models.dact_classifier import DactClassifier

VOCAB, SEQ, BATCH = 60, 12, 16
_COMMON = dict(num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=SEQ)

BACKBONES = {
    "bert": lambda: keras_hub.models.BertBackbone(vocabulary_size=VOCAB, num_layers=3, **_COMMON),
    "roberta": lambda: keras_hub.models.RobertaBackbone(
        vocabulary_size=VOCAB, num_layers=3, **_COMMON),
    "xlm_roberta": lambda: keras_hub.models.XLMRobertaBackbone(
        vocabulary_size=VOCAB, num_layers=3, **_COMMON),
    "distil_bert": lambda: keras_hub.models.DistilBertBackbone(
        vocabulary_size=VOCAB, num_layers=3, **_COMMON),
    "electra": lambda: keras_hub.models.ElectraBackbone(
        vocab_size=VOCAB, num_layers=3, embedding_dim=8, **_COMMON),
    # Two groups of one shared block, each run twice: four DACT steps.
    "albert": lambda: keras_hub.models.AlbertBackbone(
        vocabulary_size=VOCAB, num_layers=4, embedding_dim=8, num_groups=2,
        num_inner_repetitions=1, **_COMMON),
}


def _inputs(model, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, SEQ + 1, BATCH)
    mask = np.arange(SEQ)[None, :] < lengths[:, None]
    x = {"token_ids": np.where(mask, rng.integers(2, VOCAB, (BATCH, SEQ)), 0).astype("int32"),
         "padding_mask": mask}
    if "segment_ids" in model.input_keys:
        x["segment_ids"] = (mask & (np.arange(SEQ)[None, :] >= lengths[:, None] // 2)).astype(
            "int32")
    return x


def _model(name, **kwargs):
    keras.utils.set_random_seed(0)
    kwargs.setdefault("halting_bias", -1.0)  # exits spread over the blocks
    return DactClassifier(BACKBONES[name](), num_classes=3, dropout=0.0, **kwargs)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_the_blocks_reproduce_the_backbone(name):
    """Embedding then every block, as DACT runs them, is the backbone's output."""
    model = _model(name)
    x = _inputs(model)
    features, mask = model._standardize_inputs(x)
    h = model._embed(features, training=False)
    for block in model.encoder.blocks:
        h = block(h, padding_mask=mask, training=False)
    expected = model.backbone({k: v for k, v in x.items()})
    expected = expected["sequence_output"] if isinstance(expected, dict) else expected
    np.testing.assert_allclose(h, expected, atol=2e-5)
    assert model.num_layers == model.backbone.num_layers


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_fit_early_exit_and_keras_round_trip(name, tmp_path):
    model = _model(name)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = _inputs(model)
    y = np.arange(BATCH) % 3
    logs = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0])
    early, full = model(x), model(x, full_depth=True)
    np.testing.assert_array_equal(early["predictions"], full["predictions"])
    assert len(set(early["layers_executed"].numpy().tolist())) > 1, "no early exits to test"
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x)["probabilities"], early["probabilities"], atol=1e-6)
    np.testing.assert_array_equal(loaded(x)["layers_executed"], early["layers_executed"])


def test_segment_less_encoders_refuse_segment_ids():
    model = _model("roberta")
    x = dict(_inputs(model), segment_ids=np.zeros((BATCH, SEQ), "int32"))
    with pytest.raises(ValueError, match="RobertaBackbone reads some of"):
        model(x)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_saved_model_and_tflite_exports(name, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model = _model(name)
    x = _inputs(model)
    expected = model(x)
    assert len(np.unique(expected["layers_executed"])) >= 2  # varied exits
    path = saved_model.export_saved_model(model, str(tmp_path / "export"))
    loaded = tf.saved_model.load(path)
    feed = {k: tf.constant(np.asarray(v).astype("int32")) for k, v in x.items()}
    assert set(loaded.signatures["serving_default"].structured_input_signature[1]) == set(feed)
    out = loaded.signatures["serving_default"](**feed)
    np.testing.assert_array_equal(out["predictions"], expected["predictions"])
    np.testing.assert_array_equal(out["layers_executed"], expected["layers_executed"])
    # The guarantee in the export: early exit answers like full depth.
    full = loaded.signatures["full_depth"](**feed)
    np.testing.assert_array_equal(out["predictions"], full["predictions"])
    # One row through the batch-1 graph.
    one = loaded.signatures["serve_one"](**{k: v[:1] for k, v in feed.items()})
    np.testing.assert_array_equal(one["layers_executed"], expected["layers_executed"][:1])
    assert set(saved_model.read_metadata(path)["inputs"]) == set(model.input_keys)

    lite = tflite.export_tflite(path, str(tmp_path / "m.tflite"))
    interpreter = Interpreter(model_path=lite)
    arrays = {k: v.numpy() for k, v in feed.items()}
    out = interpreter.get_signature_runner("serving_default")(**arrays)
    np.testing.assert_array_equal(out["predictions"], expected["predictions"])
    np.testing.assert_array_equal(out["layers_executed"], expected["layers_executed"])
    full = interpreter.get_signature_runner("full_depth")(**arrays)
    np.testing.assert_array_equal(full["predictions"], expected["predictions"])


def test_unknown_encoders_are_refused_with_the_way_to_add_them():
    with pytest.raises(TypeError, match="Register an EncoderAdapter"):
        DactClassifier(keras.Sequential([keras.layers.Dense(2)]), num_classes=2)


def test_a_registered_adapter_wraps_a_custom_encoder():
    class TinyEncoder(keras.Model):
        def __init__(self):
            super().__init__()
            self.embedding = keras.layers.Embedding(VOCAB, 16)
            self.transformer_layers = [keras_hub.layers.TransformerEncoder(32, 2)
                                       for _ in range(2)]
            self.hidden_dim, self.max_sequence_length, self.vocabulary_size = 16, SEQ, VOCAB

    class TinyAdapter(encoders.EncoderAdapter):
        input_keys = ("token_ids", "padding_mask")

        def embed(self, backbone, inputs, training):
            return backbone.embedding(inputs["token_ids"])

    encoders.register(TinyEncoder, TinyAdapter())
    model = DactClassifier(TinyEncoder(), num_classes=2, halting_bias=-1.0)
    x = {"token_ids": np.ones((4, SEQ), "int32"), "padding_mask": np.ones((4, SEQ), bool)}
    np.testing.assert_array_equal(model(x)["predictions"],
                                  model(x, full_depth=True)["predictions"])
