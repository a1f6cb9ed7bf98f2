"""Text examples stored as tensorflow-datasets datasets, cached by content.

`store_as_tfds` writes a `TextExamples` (see `dact_tf.data.tsv`) once with
`tfds.dataset_builders.store_as_tfds_dataset` and reads it back through
tfds, so local files and tfds' own `glue/<task>` reach the pipeline the
same way (`dact_tf.data.glue.load_glue`).
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile

import numpy as np

from dact_tf.utils import files

_CACHE_FORMAT = 1  # bump when the stored layout changes


def default_data_dir():
    """Returns where locally stored tfds datasets go.

    `$DACT_TF_CACHE/tfds` (default `~/.cache/dact_tf/tfds`). The online
    route uses tfds' own default (`$TFDS_DATA_DIR` or
    `~/tensorflow_datasets`) unless a `data_dir` is given.

    Returns:
        str.
    """
    root = os.environ.get("DACT_TF_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "dact_tf"
    )
    return os.path.join(root, "tfds")


def tfds_features(text_feature="text", pair_feature=None, label_names=None):
    """Builds the tfds `FeaturesDict` used for stored text datasets.

    Mirrors tfds' `glue/<task>`: text features, an int32 `idx` and a
    `label` (a `ClassLabel`, or float32 for regression).

    Args:
        text_feature: str. Name of the first text.
        pair_feature: str or None. Name of the second text.
        label_names: sequence of str or None (regression).

    Returns:
        `tfds.features.FeaturesDict`.
    """
    import tensorflow_datasets as tfds

    features = {text_feature: tfds.features.Text(), "idx": np.int32}
    if pair_feature is not None:
        features[pair_feature] = tfds.features.Text()
    if label_names is None:
        features["label"] = np.float32
    else:
        features["label"] = tfds.features.ClassLabel(names=list(label_names))
    return tfds.features.FeaturesDict(features)


def store_as_tfds(
    examples,
    *,
    name,
    split="train",
    text_feature="text",
    pair_feature="text_pair",
    data_dir=None,
):
    """Stores examples as a tensorflow-datasets dataset and reads it back.

    The dataset is written once with
    `tfds.dataset_builders.store_as_tfds_dataset` into
    `<data_dir>/<name>-<hash>/`, where the hash covers the texts, labels,
    label names and feature names; later calls with the same content read
    the stored copy. Writing goes to a temporary folder that is renamed into
    place, so parallel processes never read half-written data. Order is the
    file order (`disable_shuffling=True`).

    Args:
        examples: TextExamples.
        name: str. Dataset name, snake_case (e.g. `"dact_glue_sst2"`).
        split: str. Split name to store the examples under.
        text_feature: str. Feature name of the texts.
        pair_feature: str. Feature name of the pairs (used when
            `examples.pairs` is set).
        data_dir: str or None. Root folder; default `default_data_dir()`.

    Returns:
        `tf.data.Dataset` of dicts `{text_feature: string [],
        pair_feature: string [] (pairs only), "label": int64 [] or
        float32 [], "idx": int32 []}`.

    Example:
    ```python
    from dact_tf.data.glue import builtin_sst2_dir, read_glue

    ds = store_as_tfds(read_glue("sst2", "dev", builtin_sst2_dir()),
                       name="dact_glue_sst2", split="validation",
                       text_feature="sentence")
    next(iter(ds))["sentence"]
    ```
    """
    import tensorflow_datasets as tfds

    if examples.pairs is None:
        pair_feature = None
    data_dir = os.fspath(data_dir or default_data_dir())
    key = _content_key(examples, name, split, text_feature, pair_feature)
    folder = os.path.join(data_dir, f"{name}-{key}")
    version_dir = os.path.join(folder, name, "1.0.0")
    if not os.path.isfile(os.path.join(version_dir, "dataset_info.json")):
        os.makedirs(data_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=data_dir)
        try:
            # tfds prints "Downloading and preparing dataset" and "downloaded and
            # prepared" to stdout, though nothing is downloaded: keep them out.
            with contextlib.redirect_stdout(io.StringIO()):
                _store(tfds, name, examples, text_feature, pair_feature, split, tmp)
            files.publish(tmp)  # mkdtemp makes it private: the umask's permissions
            try:
                os.rename(tmp, folder)
            except OSError:
                # Another process stored the same content first.
                if not os.path.isfile(
                    os.path.join(version_dir, "dataset_info.json")
                ):
                    raise
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    builder = tfds.builder_from_directory(version_dir)
    return builder.as_dataset(split=split, shuffle_files=False)


def _store(tfds, name, examples, text_feature, pair_feature, split, data_dir):
    """`tfds.dataset_builders.store_as_tfds_dataset` of `examples` under `data_dir`."""
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name,
        version="1.0.0",
        features=tfds_features(text_feature, pair_feature, examples.label_names),
        split_datasets={split: _example_dicts(examples, text_feature, pair_feature)},
        data_dir=data_dir,
        description=f"Stored by dact_tf from {examples.source}.",
        disable_shuffling=True,
    )


def _example_dicts(examples, text_feature, pair_feature):
    for i in range(len(examples)):
        example = {
            text_feature: examples.texts[i],
            "label": examples.labels[i].item(),
            "idx": i,
        }
        if pair_feature is not None:
            example[pair_feature] = examples.pairs[i]
        yield i, example


def _content_key(examples, name, split, text_feature, pair_feature):
    digest = hashlib.sha256()
    header = [_CACHE_FORMAT, name, split, text_feature, pair_feature,
              examples.label_names]
    digest.update(json.dumps(header).encode())
    for i in range(len(examples)):
        digest.update(examples.texts[i].encode())
        digest.update(b"\x00")
        if examples.pairs is not None:
            digest.update(examples.pairs[i].encode())
        digest.update(b"\x01")
    digest.update(np.ascontiguousarray(examples.labels).tobytes())
    return digest.hexdigest()[:16]
