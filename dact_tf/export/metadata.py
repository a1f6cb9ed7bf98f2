"""What an export says about itself: signature names and the metadata file.

Every SavedModel version folder carries `assets.extra/dact_tf_metadata.json`
(task, labels, backbone sizes, exit method, signatures, input checks and,
with text signatures, how the text is tokenized), so that a server or a
client can use the export without dact_tf.
"""

import json
import os

import tensorflow as tf

from dact_tf.version import __version__

METADATA_FILENAME = "dact_tf_metadata.json"
VOCABULARY_FILENAME = "vocab.txt"
ASSETS_EXTRA = "assets.extra"

SERVING_DEFAULT = "serving_default"
FULL_DEPTH = "full_depth"
SERVE_TEXT = "serve_text"
SERVE_BUDGET = "serve_budget"
SERVE_ONE = "serve_one"
SERVE_TEXT_PAIR = "serve_text_pair"

INPUT_KEYS = ("token_ids", "padding_mask", "segment_ids")
CLASSIFICATION_OUTPUTS = ("probabilities", "predictions", "layers_executed")
REGRESSION_OUTPUTS = ("scores", "layers_executed")


def output_keys(task):
    """The output names of every serving signature for `task`.

    Args:
        task: `"classification"` or `"regression"`.

    Returns:
        A tuple of str.

    Example:
    >>> output_keys("regression")
    ('scores', 'layers_executed')
    """
    return REGRESSION_OUTPUTS if task == "regression" else CLASSIFICATION_OUTPUTS


def read_metadata(saved_model_dir):
    """Reads `assets.extra/dact_tf_metadata.json` of an export.

    Args:
        saved_model_dir: str, a version folder written by
            `export_saved_model`.

    Returns:
        dict.

    Example:
    ```python
    read_metadata("/models/sst2/1")["label_names"]  # ["negative", "positive"]
    ```
    """
    path = os.path.join(saved_model_dir, ASSETS_EXTRA, METADATA_FILENAME)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def build(model, version, packer, signatures):
    """The metadata dict of `model`'s export `version` (see the module docstring)."""
    backbone = model.backbone
    meta = {
        "format": "dact_tf SavedModel",
        "dact_tf_version": __version__,
        "tensorflow_version": tf.__version__,
        "version": int(version),
        "task": model.task,
        "num_classes": int(model.num_classes),
        "label_names": model.label_names,
        "output_range": model.output_range,
        "num_layers": int(model.num_layers),
        "max_sequence_length": int(backbone.max_sequence_length),
        "vocabulary_size": model.vocabulary_size,
        "num_segments": model.num_segments,
        "method": model.method,
        "exit": model.exit_criterion.get_config(),
        # Before exit methods were objects the only exit setting listed.
        "halting_rule": getattr(model.exit_criterion, "halting_rule", None),
        # What the calibration certified on held-out rows (dact_tf.calibration.certify).
        "certificates": model.certificates,
        "signatures": sorted(signatures),
        "inputs": {k: "int32 [batch, seq]" for k in INPUT_KEYS if k in model.input_keys},
        "outputs": list(output_keys(model.task)),
        "input_checks": {
            "saved_model": [
                "0 <= token_ids < vocabulary_size",
                "seq <= max_sequence_length",
                "padding_mask, segment_ids shaped like token_ids",
                "batch >= 1",
            ],
            "tflite": "none (no Assert builtin): validate inputs in the app",
        },
    }
    if packer is not None:
        tok = packer.tokenizer
        meta["text"] = {
            "vocabulary_file": f"{ASSETS_EXTRA}/{VOCABULARY_FILENAME}",
            "sequence_length": int(packer.sequence_length),
            "truncate": packer.truncate,
            "lowercase": bool(getattr(tok, "lowercase", False)),
            "strip_accents": bool(getattr(tok, "strip_accents", False)),
            "special_tokens": {
                name: getattr(tok, f"{name}_token_id", None)
                for name in ("cls", "sep", "pad", "mask")
            },
            "needs": "import tensorflow_text before tf.saved_model.load",
        }
    return meta
