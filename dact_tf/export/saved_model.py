"""SavedModel export of a `DactClassifier` for TensorFlow Serving.

The export is a plain `tf.Module` saved with `tf.saved_model.save`, with
explicit `tf.function` signatures, in TF Serving's layout
`<export_dir_base>/<version>/saved_model.pb`. Reloading it needs only
`tensorflow` (plus `tensorflow_text` for the text signatures): no dact_tf,
Keras or keras-hub code.

Two choices matter (both measured; the tests pin them):

- The module tracks the model's **raw `tf.Variable`s**, not the Keras model.
  With the Keras model tracked, the SavedModel works in TensorFlow, but
  `tf.lite.TFLiteConverter.from_saved_model` cannot freeze Keras 3's
  variables: it keeps them as `VAR_HANDLE`/`READ_VARIABLE` ops with no
  initial values, and the `.tflite` file computes garbage (or fails in the
  early-exit `WHILE`). Tracking the Keras model as well also stores the
  weights twice (the variables file grew 2.4x on a tiny model).
- The version folder is written to a hidden temporary folder next to it and
  renamed into place, so TF Serving (which polls the base folder for
  numeric subfolders) never sees a half-written version and a failed export
  leaves nothing behind.
"""

import json
import os
import re
import shutil
import tempfile

import tensorflow as tf

from dact_tf.utils import files

from dact_tf.export import metadata
from dact_tf.export.metadata import (  # noqa: F401 (public names)
    ASSETS_EXTRA, CLASSIFICATION_OUTPUTS, FULL_DEPTH, INPUT_KEYS, METADATA_FILENAME,
    REGRESSION_OUTPUTS, SERVE_BUDGET, SERVE_ONE, SERVE_TEXT, SERVE_TEXT_PAIR, SERVING_DEFAULT,
    VOCABULARY_FILENAME, output_keys, read_metadata)
from dact_tf.export.precision import float32_model
from dact_tf.export.text import make_packer
from dact_tf.export.text import write_vocabulary

_TMP_PREFIX = ".tmp-dact-export-"
_VERSION_RE = re.compile(r"^[0-9]+$")


def existing_versions(export_dir_base):
    """The integer versions already exported under `export_dir_base`.

    Args:
        export_dir_base: str, the base folder (may not exist).

    Returns:
        A sorted list of int (folders whose name is a non-negative integer).

    Example:
    >>> existing_versions("/tmp/does/not/exist")
    []
    """
    if not os.path.isdir(export_dir_base):
        return []
    return sorted(
        int(name)
        for name in os.listdir(export_dir_base)
        if _VERSION_RE.match(name)
        and os.path.isdir(os.path.join(export_dir_base, name))
    )


def export_saved_model(
    model,
    export_dir_base,
    version=None,
    tokenizer=None,
    sequence_length=None,
    text_pair=False,
    truncate="round_robin",
    text_signatures=True,
):
    """Exports a `DactClassifier` as a versioned SavedModel for TF Serving.

    Writes `<export_dir_base>/<version>/` atomically: everything is written
    to a hidden temporary folder in `export_dir_base` and renamed into place
    at the end; if anything fails, the temporary folder is removed and no
    version folder appears (earlier versions are never touched).

    Signatures (all with the serving tag):

    - `serving_default`: int32 `token_ids`, `padding_mask`, `segment_ids`,
      each `[batch, seq]` (`padding_mask`: 1 for real tokens, 0 for
      padding). Runs the per-example early-exit loop. Outputs, classification:
      `probabilities` float32 `[batch, num_classes]`, `predictions` int32
      `[batch]`, `layers_executed` int32 `[batch]`; regression: `scores`
      float32 `[batch]`, `layers_executed`.
    - `full_depth`: same inputs and outputs, every block runs (the answers
      the early exit guarantees to match; `layers_executed` is N).
    - `serve_budget`: the token-id inputs plus int32 `max_layers` `[batch]`
      (>= 1), a cap on each row's blocks (anytime answers under a latency
      budget: DACT's accumulated answer, a baseline's last head). The usual
      outputs plus bool `exact` `[batch]`: the row finished by the exit rule
      within its cap, so its answer is the uncapped one (DACT: the
      full-depth prediction).
    - `serve_one`: `serving_default` for one row at a time (inputs
      `[1, seq]`). Its graph holds only the batch-1 path (the blocks as a
      chain of `tf.cond`s), so the batch size need not be tested in the
      graph: the lowest latency for callers that send one request at a
      time (the same answers as `serving_default`).
    - `serve_text` (only with `tokenizer`): string `text` `[batch]`;
      tokenization, `[CLS] text [SEP]` packing and truncation to
      `sequence_length` run inside the graph (`dact_tf.export.text.
      TextPacker`: the same ids as keras-hub's
      `BertTextClassifierPreprocessor`, padded only to the batch's longest
      row), then the early-exit model runs. Same outputs.
    - `serve_text_pair` (with `tokenizer` and `text_pair=True`): string
      `text_a`, `text_b` `[batch]`, packed as `[CLS] a [SEP] b [SEP]` with
      segment ids 0/1.

    With a tokenizer, loading the export needs the tokenizer's TF Text ops
    (`import tensorflow_text` before `tf.saved_model.load`; in TF Serving,
    a build that links TF Text, as the official images do with an older
    release). The packing itself uses core ops only: keras-hub's own
    preprocessor would add `TFText>RoundRobinTrim`, which TF Serving's
    embedded TF Text lacks. For a server without TF Text, export without
    `tokenizer` and tokenize on the client (`assets.extra/vocab.txt`).

    Input checks run in the graph and raise `InvalidArgumentError` (HTTP
    400 in TF Serving): token ids outside `[0, vocabulary_size)`, sequences
    longer than the backbone's `max_sequence_length`, `padding_mask` or
    `segment_ids` shaped unlike `token_ids`, an empty batch.

    Extra files: `assets.extra/dact_tf_metadata.json` (task, label names,
    num_layers, max_sequence_length, vocabulary size, signatures, versions)
    and, with a tokenizer, `assets.extra/vocab.txt` (one token per line, id
    = line number) for clients that tokenize themselves (e.g. TFLite). The
    vocabulary is also a SavedModel asset (`assets/vocab.txt`, reachable as
    `loaded.vocabulary_file` after `tf.saved_model.load`). TF Serving ignores
    both extras.

    Args:
        model: a `dact_tf.models.DactClassifier` (built; weights as trained).
        export_dir_base: str, the model's base folder (TF Serving's
            `--model_base_path`); created if missing. Local filesystem (the
            atomic rename needs a POSIX rename).
        version: int >= 0 or None. None picks one more than the largest
            existing version (1 for an empty folder). An existing version is
            an error: versions are immutable.
        tokenizer: None, a `keras_hub.models.BertTokenizer` (e.g. from
            `dact_tf.models.backbones.load_backbone`), or a keras-hub
            `BertTextClassifierPreprocessor` (then `sequence_length` and
            `truncate` come from it). Adds the text signatures. None: the
            model's own `preprocessor` if it has one (`DactTextClassifier`).
        sequence_length: int, the packed length for the text signatures
            (default and maximum: the backbone's `max_sequence_length`).
        text_pair: bool, also export `serve_text_pair` (sentence-pair tasks
            such as MRPC, RTE, QNLI); `"only"`: export `serve_text_pair` and
            no single-sentence `serve_text` (a pair model given one sentence
            would answer without a word; `dact-tf export` does this for pair
            models).
        truncate: `"round_robin"` or `"waterfall"`, how text pairs are cut to
            `sequence_length`.
        text_signatures: bool. False exports the token-id signatures only
            (no TF Text op in the graph: `saved_model_cli run` and servers
            without TF Text load it) and, given a `tokenizer`, still writes
            `assets.extra/vocab.txt` for clients that tokenize themselves.

    Returns:
        str, the path of the new version folder.

    Raises:
        FileExistsError: `version` already exists.
        ValueError: bad arguments.

    Example:
    ```python
    path = export_saved_model(model, "/models/sst2", tokenizer=tokenizer)
    # /models/sst2/1; then, for example:
    # docker run -p 8501:8501 -v /models/sst2:/models/sst2 \
    #   -e MODEL_NAME=sst2 tensorflow/serving
    loaded = tf.saved_model.load(path)   # import tensorflow_text first
    out = loaded.signatures["serve_text"](text=tf.constant(["a fine film"]))
    out["predictions"], out["layers_executed"]
    ```
    """
    _check_model(model)
    model = float32_model(model)
    if tokenizer is None:  # a `DactTextClassifier` exports its own preprocessor
        tokenizer = getattr(model, "preprocessor", None)
    export_dir_base = os.fspath(export_dir_base)
    if version is not None:
        version = int(version)
        if version < 0:
            raise ValueError(f"`version` must be >= 0, got {version}.")
    packer = None
    if tokenizer is not None:
        packer = make_packer(model, tokenizer, sequence_length, truncate)
    elif text_pair:
        raise ValueError("`text_pair` needs a `tokenizer`.")
    if text_pair not in (False, True, "only"):
        raise ValueError(f"`text_pair` must be True, False or 'only', got {text_pair!r}.")
    vocabulary_only = None
    if not text_signatures:
        vocabulary_only, packer, text_pair = (packer.tokenizer if packer else None), None, False

    os.makedirs(export_dir_base, exist_ok=True)
    if version is not None and os.path.exists(
        os.path.join(export_dir_base, str(version))
    ):
        raise FileExistsError(
            f"Version {version} already exists in {export_dir_base}; "
            "versions are immutable: pick another (or version=None)."
        )
    _remove_stale_temporaries(export_dir_base)
    tmp_dir = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=export_dir_base)
    try:
        vocabulary_file = None
        if packer is not None or vocabulary_only is not None:
            extra = os.path.join(tmp_dir, ASSETS_EXTRA)
            os.makedirs(extra)
            path = os.path.join(extra, VOCABULARY_FILENAME)
            write_vocabulary(packer.tokenizer if packer else vocabulary_only, path)
            if packer is not None:
                vocabulary_file = path
        module, signatures = build_serving_module(
            model,
            packer=packer,
            text_pair=text_pair,
            vocabulary_file=vocabulary_file,
        )
        tf.saved_model.save(module, tmp_dir, signatures=signatures)
        target_version = _commit(
            tmp_dir, export_dir_base, version, model, packer, signatures
        )
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return os.path.join(export_dir_base, str(target_version))


def _remove_stale_temporaries(export_dir_base):
    """Removes the temporary folders of exports whose process is gone (killed)."""
    for name in os.listdir(export_dir_base):
        match = re.match(re.escape(_TMP_PREFIX) + r"(\d+)-", name)
        if match and not files.process_alive(match.group(1)):
            shutil.rmtree(os.path.join(export_dir_base, name), ignore_errors=True)


def build_serving_module(
    model, packer=None, text_pair=False, vocabulary_file=None
):
    """Builds the `tf.Module` and signatures that `export_saved_model` saves.

    Useful to save somewhere else (e.g. `tf.saved_model.save(module, path,
    signatures=signatures)` on a remote filesystem) or to call the serving
    functions in-process.

    Args:
        model: a `DactClassifier`.
        packer: None or a `dact_tf.export.text.TextPacker`: adds
            `serve_text`.
        text_pair: bool, add `serve_text_pair` (needs `packer`); `"only"`:
            `serve_text_pair` without `serve_text`.
        vocabulary_file: str or None, the tokenizer's vocabulary written one
            token a line (the SavedModel asset). None writes it to a new
            temporary folder.

    Returns:
        `(module, signatures)`: the module (tracks the model's raw
        `tf.Variable`s and, with a packer, the vocabulary asset) and a
        dict from signature key to `tf.function`.

    Example:
    ```python
    module, signatures = build_serving_module(model)
    out = signatures["serving_default"](
        token_ids=ids, padding_mask=mask, segment_ids=segments)
    ```
    """
    _check_model(model)
    keys = output_keys(model.task)
    module = tf.Module(name="dact_serving")
    # Raw tf.Variables only: see the module docstring (TFLite freezing,
    # no duplicated weights). The Keras model is reached by closure.
    module.dact_variables = _raw_variables(model)

    with_segments = "segment_ids" in model.input_keys

    def run(features, full_depth, max_layers=None):
        out = model(features, training=False, full_depth=full_depth, max_layers=max_layers)
        names = keys if max_layers is None else tuple(keys) + ("exact",)
        return {k: tf.identity(out[k], name=k) for k in names}

    def features(token_ids, padding_mask, segment_ids=None):
        f = {"token_ids": token_ids, "padding_mask": tf.not_equal(padding_mask, 0)}
        if with_segments:
            f["segment_ids"] = segment_ids
        return f

    # The signatures take the inputs the backbone reads (BERT-like encoders:
    # segment ids too; RoBERTa-like ones: none).
    input_keys = INPUT_KEYS if with_segments else INPUT_KEYS[:2]
    specs = [tf.TensorSpec([None, None], tf.int32, name=k) for k in input_keys]
    one_row_specs = [tf.TensorSpec([1, None], tf.int32, name=k) for k in input_keys]
    if with_segments:

        def predict(token_ids, padding_mask, segment_ids):
            return run(features(token_ids, padding_mask, segment_ids), False)

        def predict_full_depth(token_ids, padding_mask, segment_ids):
            return run(features(token_ids, padding_mask, segment_ids), True)

        def predict_budget(token_ids, padding_mask, segment_ids, max_layers):
            return run(features(token_ids, padding_mask, segment_ids), False, max_layers)
    else:

        def predict(token_ids, padding_mask):
            return run(features(token_ids, padding_mask), False)

        def predict_full_depth(token_ids, padding_mask):
            return run(features(token_ids, padding_mask), True)

        def predict_budget(token_ids, padding_mask, max_layers):
            return run(features(token_ids, padding_mask), False, max_layers)

    # Attribute names matter: TFLiteConverter.from_saved_model treats an
    # object with a `serve` attribute as a Keras `model.export()` artifact and
    # then converts `serving_default` only.
    module.predict = tf.function(predict, input_signature=specs)
    module.predict_full_depth = tf.function(predict_full_depth, input_signature=specs)
    module.predict_one = tf.function(predict, input_signature=one_row_specs)
    module.predict_budget = tf.function(
        predict_budget, input_signature=specs + [tf.TensorSpec([None], tf.int32, "max_layers")])
    signatures = {
        SERVING_DEFAULT: module.predict,
        FULL_DEPTH: module.predict_full_depth,
        SERVE_BUDGET: module.predict_budget,
        SERVE_ONE: module.predict_one,
    }
    if packer is None:
        if text_pair:
            raise ValueError("`text_pair=True` needs a `packer`.")
        return module, signatures
    _add_text_signatures(module, signatures, lambda f: run(features(
        f["token_ids"], f["padding_mask"], f["segment_ids"]), False), packer, text_pair,
        vocabulary_file)
    return module, signatures


def _add_text_signatures(module, signatures, run_features, packer, text_pair, vocabulary_file):
    """Adds `serve_text` (and `serve_text_pair`) and the vocabulary asset to `module`.

    `run_features(f)` answers the packer's features `f`.
    """
    if vocabulary_file is None:
        vocabulary_file = os.path.join(
            tempfile.mkdtemp(prefix="dact_vocab_"), VOCABULARY_FILENAME
        )
        write_vocabulary(packer.tokenizer, vocabulary_file)
    module.vocabulary_file = tf.saved_model.Asset(vocabulary_file)

    def predict_text(text):
        return run_features(packer(text))

    if text_pair != "only":
        module.predict_text = tf.function(
            predict_text,
            input_signature=[tf.TensorSpec([None], tf.string, name="text")],
        )
        signatures[SERVE_TEXT] = module.predict_text
    if text_pair:

        def predict_text_pair(text_a, text_b):
            return run_features(packer((text_a, text_b)))

        module.predict_text_pair = tf.function(
            predict_text_pair,
            input_signature=[
                tf.TensorSpec([None], tf.string, name="text_a"),
                tf.TensorSpec([None], tf.string, name="text_b"),
            ],
        )
        signatures[SERVE_TEXT_PAIR] = module.predict_text_pair


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def _check_model(model):
    needed = ("backbone", "encoder", "task", "num_layers", "num_classes")
    missing = [a for a in needed if not hasattr(model, a)]
    if missing:
        raise TypeError(
            "`model` must be a dact_tf DactClassifier; "
            f"{type(model).__name__} lacks {missing}."
        )
    if not model.built:
        raise ValueError("`model` is not built.")


def _raw_variables(model):
    seen, out = set(), []
    for v in model.variables:
        raw = getattr(v, "value", v)
        if not isinstance(raw, tf.Variable):
            raise TypeError(
                f"Variable {getattr(v, 'path', v)} is not backed by a "
                "tf.Variable: the model must use Keras' TensorFlow backend."
            )
        if id(raw) not in seen:
            seen.add(id(raw))
            out.append(raw)
    return out


def _commit(tmp_dir, export_dir_base, version, model, packer, signatures):
    """Writes the metadata into `tmp_dir` and renames it to the version folder.

    Returns the version used. With `version=None`, the next free number is
    taken; if a concurrent export takes it first, the next one is tried.
    """
    extra = os.path.join(tmp_dir, ASSETS_EXTRA)
    os.makedirs(extra, exist_ok=True)
    explicit = version is not None
    while True:
        if not explicit:
            taken = [
                int(n) for n in os.listdir(export_dir_base) if _VERSION_RE.match(n)
            ]
            version = max(taken) + 1 if taken else 1
        with open(os.path.join(extra, METADATA_FILENAME), "w", encoding="utf-8") as f:
            json.dump(metadata.build(model, version, packer, signatures), f, indent=2)
        target = os.path.join(export_dir_base, str(version))
        if os.path.lexists(target):
            if explicit:
                raise FileExistsError(
                    f"Version {version} already exists in {export_dir_base}."
                )
            continue  # Taken meanwhile: the next pass picks a larger number.
        try:
            # mkdtemp made the folder private (0700): a server running as
            # another user must read it, so it gets the umask's permissions.
            files.publish(tmp_dir)
            # Atomic on POSIX: TF Serving sees no folder or the whole export.
            os.rename(tmp_dir, target)
            return version
        except OSError:
            if explicit or not os.path.lexists(target):
                raise
