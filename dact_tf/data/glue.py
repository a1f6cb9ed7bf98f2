"""GLUE tasks: specs, strict local parsing, and one tfds route for both sources.

Two sources give the same `tf.data.Dataset` of feature dicts, with the
feature names, label ids and splits of tensorflow-datasets' `glue/<task>`:

- `source="tfds"` (the default when no `glue_dir` is given): `glue/<task>`
  from tensorflow-datasets, downloaded and prepared on first use. Offline,
  `tfds.load` retries for about 200 s before failing; here the download host
  is probed first and a clear `ConnectionError` comes within seconds.
- `source="local"`: GLUE TSV files in `<glue_dir>/<TASK>/{train,dev}.tsv`
  (the layout of the GLUE zip files). Rows are validated strictly (see
  `dact_tf.data.tsv`) and then stored as a tensorflow-datasets dataset with
  `tfds.dataset_builders.store_as_tfds_dataset`, cached by content hash, and
  read back through tfds like the online route.

`builtin_sst2_dir()` is a small SST-2 folder shipped with the package (a
class-balanced 2,000-row train subset and the full dev set, in GLUE's SST-2
format), so `load_glue("sst2", glue_dir=builtin_sst2_dir())` works anywhere.
"""

import dataclasses
import importlib.resources
import os

import numpy as np
from absl import logging

from dact_tf import config as config_lib
from dact_tf.data import network
from dact_tf.data import tsv
from dact_tf.data.tfds_store import default_data_dir  # noqa: F401 (public here too)
from dact_tf.data.tfds_store import store_as_tfds
from dact_tf.data.tfds_store import tfds_features  # noqa: F401 (public here too)

_DEFAULT_DOWNLOAD_HOST = "dl.fbaipublicfiles.com"
_SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv"}
_SPLIT_ALIASES = {"dev": "validation", "valid": "validation"}


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is stored, labelled and scored.

    Args:
        name: str. Short name (`"sst2"`), as in `tfds` `glue/<name>`.
        folder: str. Folder in the GLUE layout (`"SST-2"`).
        num_columns: int. Columns of every row of its TSV files.
        header: bool. Whether the files start with a header line.
        text_column: int. Column of the first text.
        pair_column: int or None. Column of the second text.
        label_column: int. Column of the label.
        text_feature: str. Feature name of the first text in tfds.
        pair_feature: str or None. Feature name of the second text.
        label_names: tuple of str or None. tfds class names in id order;
            `None` for regression (STS-B).
        file_labels: tuple of str or None. How each class is written in the
            TSV file, in id order.
        metrics: tuple of str. Metric names (see `dact_tf.data.metrics`).

    Example:
    ```python
    task = glue_task("mrpc")
    task.pair_feature, task.metrics  # "sentence2", ("accuracy", "f1")
    ```
    """

    name: str
    folder: str
    num_columns: int
    header: bool
    text_column: int
    pair_column: int
    label_column: int
    text_feature: str
    pair_feature: str
    label_names: tuple
    file_labels: tuple
    metrics: tuple

    @property
    def tfds_name(self):
        """str: the tensorflow-datasets name, e.g. `"glue/sst2"`."""
        return f"glue/{self.name}"

    @property
    def is_regression(self):
        """bool: whether the label is a float score (STS-B)."""
        return self.label_names is None

    @property
    def num_classes(self):
        """int: number of classes; 1 (one output) for regression."""
        return 1 if self.label_names is None else len(self.label_names)


GLUE_TASKS = {
    task.name: task
    for task in (
        GlueTask(
            name="sst2", folder="SST-2", num_columns=2, header=True,
            text_column=0, pair_column=None, label_column=1,
            text_feature="sentence", pair_feature=None,
            label_names=("negative", "positive"), file_labels=("0", "1"),
            metrics=("accuracy",),
        ),
        GlueTask(
            name="mrpc", folder="MRPC", num_columns=5, header=True,
            text_column=3, pair_column=4, label_column=0,
            text_feature="sentence1", pair_feature="sentence2",
            label_names=("not_equivalent", "equivalent"),
            file_labels=("0", "1"), metrics=("accuracy", "f1"),
        ),
        GlueTask(
            name="rte", folder="RTE", num_columns=4, header=True,
            text_column=1, pair_column=2, label_column=3,
            text_feature="sentence1", pair_feature="sentence2",
            label_names=("entailment", "not_entailment"), file_labels=None,
            metrics=("accuracy",),
        ),
        GlueTask(
            name="cola", folder="CoLA", num_columns=4, header=False,
            text_column=3, pair_column=None, label_column=1,
            text_feature="sentence", pair_feature=None,
            label_names=("unacceptable", "acceptable"),
            file_labels=("0", "1"), metrics=("matthews_corrcoef",),
        ),
        GlueTask(
            name="stsb", folder="STS-B", num_columns=10, header=True,
            text_column=7, pair_column=8, label_column=9,
            text_feature="sentence1", pair_feature="sentence2",
            label_names=None, file_labels=None,
            metrics=("pearson", "spearman"),
        ),
        GlueTask(
            name="qnli", folder="QNLI", num_columns=4, header=True,
            text_column=1, pair_column=2, label_column=3,
            text_feature="question", pair_feature="sentence",
            label_names=("entailment", "not_entailment"), file_labels=None,
            metrics=("accuracy",),
        ),
    )
}


def glue_task(name):
    """Returns the `GlueTask` spec for a task name.

    Args:
        name: str. `"sst2"`, `"mrpc"`, `"rte"`, `"cola"`, `"stsb"` or
            `"qnli"`; also accepts `"glue/sst2"`, `"SST-2"`, `"sst-2"`.

    Returns:
        GlueTask.

    Raises:
        ValueError: an unknown task.

    Example:
    ```python
    glue_task("SST-2").label_names  # ("negative", "positive")
    ```
    """
    if isinstance(name, GlueTask):
        return name
    key = str(name).lower().removeprefix("glue/").replace("-", "")
    if key not in GLUE_TASKS:
        raise ValueError(
            f"Unknown GLUE task {name!r}; supported: {sorted(GLUE_TASKS)}."
        )
    return GLUE_TASKS[key]


def canonical_split(split):
    """Maps `"dev"` to tfds' `"validation"`; checks the split name.

    Args:
        split: str. `"train"`, `"validation"` or `"dev"`.

    Returns:
        str: `"train"` or `"validation"`.

    Example:
    ```python
    canonical_split("dev")  # "validation"
    ```
    """
    split = _SPLIT_ALIASES.get(split, split)
    if split not in _SPLIT_FILES:
        raise ValueError(
            f"Unknown split {split!r}; use 'train' or 'validation' ('dev'). "
            "GLUE test labels are not public."
        )
    return split


def glue_file(task, split, glue_dir):
    """Returns the path of a split's TSV file.

    `glue_dir` may be a folder in the GLUE layout (holding `<TASK>/`, e.g.
    `SST-2/`) or the task's own folder (holding `train.tsv`/`dev.tsv`, like
    `builtin_sst2_dir()`). The GLUE layout wins when both match.

    Args:
        task: str or GlueTask.
        split: str. `"train"` or `"validation"`/`"dev"`.
        glue_dir: str. See above.

    Returns:
        str: `<glue_dir>/<TASK>/{train,dev}.tsv`, or
        `<glue_dir>/{train,dev}.tsv` when only that folder exists (not
        checked to exist as a file).

    Example:
    ```python
    glue_file("sst2", "dev", "/data/glue")  # "/data/glue/SST-2/dev.tsv"
    glue_file("sst2", "dev", builtin_sst2_dir())  # ".../resources/sst2/dev.tsv"
    ```
    """
    task = glue_task(task)
    glue_dir = os.fspath(glue_dir)
    filename = _SPLIT_FILES[canonical_split(split)]
    task_folder = os.path.join(glue_dir, task.folder)
    if not os.path.isdir(task_folder) and any(
        os.path.isfile(os.path.join(glue_dir, name))
        for name in _SPLIT_FILES.values()
    ):
        task_folder = glue_dir
    return os.path.join(task_folder, filename)


def read_glue_file(task, path):
    """Parses and validates one GLUE TSV file of a task.

    Args:
        task: str or GlueTask.
        path: str. A file in the task's GLUE format.

    Returns:
        TextExamples, in file order, with the task's tfds label ids.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed row; the message is `"<path>:<line>: ..."`.

    Example:
    ```python
    examples = read_glue_file("sst2", f"{builtin_sst2_dir()}/dev.tsv")
    len(examples)  # 872
    ```
    """
    task = glue_task(task)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {task.name} file at {path}.")
    _, rows = tsv.read_rows(
        path, delimiter="\t", quoting=False, header=task.header,
        num_columns=task.num_columns,
    )
    return tsv.rows_to_examples(
        rows,
        path=path,
        text_column=task.text_column,
        label_column=task.label_column,
        text_pair_column=task.pair_column,
        label_names=task.label_names,
        file_labels=task.file_labels,
        regression=task.is_regression,
        label_range=config_lib.REGRESSION_OUTPUT_RANGE if task.is_regression else None,
    )


def read_glue(task, split, glue_dir):
    """Parses one split of a task from a folder in the GLUE layout.

    Args:
        task: str or GlueTask.
        split: str. `"train"` or `"validation"`/`"dev"`.
        glue_dir: str. See `glue_file`.

    Returns:
        TextExamples.

    Example:
    ```python
    read_glue("rte", "dev", "/data/glue").label_names
    # ("entailment", "not_entailment")
    ```
    """
    return read_glue_file(task, glue_file(task, split, glue_dir))


def builtin_sst2_dir():
    """Returns the folder of the SST-2 sample shipped with dact_tf.

    It holds `train.tsv` (2,000 rows: 1,000 per class, drawn at random with
    a fixed seed from GLUE's 67,349) and `dev.tsv` (GLUE's full 872-row dev
    set), in GLUE's SST-2 format; see `dact_tf/resources/README.md`. Pass it
    as `glue_dir` for the task `"sst2"`.

    Returns:
        str: the folder path.

    Example:
    ```python
    ds = load_glue("sst2", "train", glue_dir=builtin_sst2_dir())
    ```
    """
    resources = importlib.resources.files("dact_tf") / "resources"
    path = os.fspath(resources / "sst2")
    if not os.path.isfile(os.path.join(path, "train.tsv")):
        raise FileNotFoundError(
            f"The shipped SST-2 sample is missing from {path}; reinstall "
            "dact_tf (package_data 'resources/**/*')."
        )
    return path


# ----------------------------------------------------------------------------
# The tensorflow-datasets route.
# ----------------------------------------------------------------------------


def load_glue(
    task,
    split="train",
    *,
    source="auto",
    glue_dir=None,
    data_dir=None,
    online_timeout=3.0,
):
    """Loads a GLUE split as a `tf.data.Dataset` of tfds-style feature dicts.

    Args:
        task: str or GlueTask. `"sst2"`, `"mrpc"`, `"rte"`, `"cola"`,
            `"stsb"` or `"qnli"`.
        split: str. `"train"` or `"validation"` (`"dev"`).
        source: `"auto"` (local when `glue_dir` is given, else tfds),
            `"local"` or `"tfds"`.
        glue_dir: str or None. For the local route: a folder in the GLUE
            layout (`<TASK>/{train,dev}.tsv`) or the task's own folder
            (`{train,dev}.tsv`, e.g. `builtin_sst2_dir()` for SST-2).
        data_dir: str or None. tfds data folder. Local route: where the
            validated rows are stored (default `default_data_dir()`). tfds
            route: tfds' `data_dir` (default: tfds' own).
        online_timeout: float. Seconds the tfds route waits for the download
            host before giving up (only when the data is not prepared yet).

    Returns:
        `tf.data.Dataset` of dicts, e.g. for SST-2 `{"sentence": string [],
        "label": int64 [], "idx": int32 []}`; STS-B labels are float32.

    Raises:
        ConnectionError: tfds route, data not prepared, and no network.
        FileNotFoundError / ValueError: local route, a missing or malformed
            file.

    Example:
    ```python
    ds = load_glue("sst2", "validation", glue_dir=builtin_sst2_dir())
    ds = load_glue("mrpc", "train")  # tfds, needs internet the first time
    ```
    """
    task = glue_task(task)
    split = canonical_split(split)
    if source == "auto":
        source = "local" if glue_dir is not None else "tfds"
    if source == "local":
        if glue_dir is None:
            raise ValueError("source='local' needs `glue_dir`.")
        examples = read_glue(task, split, glue_dir)
        return store_as_tfds(
            examples,
            name=f"dact_glue_{task.name}",
            split=split,
            text_feature=task.text_feature,
            pair_feature=task.pair_feature,
            data_dir=data_dir,
        )
    if source == "tfds":
        return _load_from_tfds(task, split, data_dir, online_timeout)
    raise ValueError(
        f"Unknown source {source!r}; use 'auto', 'local' or 'tfds'."
    )


def _load_from_tfds(task, split, data_dir, online_timeout):
    import tensorflow_datasets as tfds

    builder = tfds.builder(task.tfds_name, data_dir=data_dir)
    if not builder.is_prepared():
        config = builder.builder_config
        host = network.url_host(getattr(config, "data_url", "") or "") or (
            _DEFAULT_DOWNLOAD_HOST
        )
        if not network.can_connect(host, timeout=online_timeout):
            raise ConnectionError(
                f"tfds dataset {task.tfds_name!r} is not prepared in "
                f"{builder.data_dir} and its download host {host} cannot be "
                f"reached (no internet?). tfds.load would retry for minutes. "
                "Offline, use local GLUE files: load_glue(task, split, "
                "glue_dir=<folder with <TASK>/train.tsv and dev.tsv>), or "
                "for SST-2 the shipped sample: "
                "glue_dir=dact_tf.data.builtin_sst2_dir()."
            )
        logging.info("Downloading and preparing %s", task.tfds_name)
        builder.download_and_prepare()
    return builder.as_dataset(split=split, shuffle_files=False)


def dataset_to_examples(dataset, task):
    """Reads a (small) feature-dict dataset back into `TextExamples`.

    Handy for evaluation with NumPy metrics and for tests comparing routes.

    Args:
        dataset: `tf.data.Dataset` from `load_glue`.
        task: str or GlueTask.

    Returns:
        TextExamples.
    """
    task = glue_task(task)
    texts, pairs, labels = [], [], []
    for example in dataset.as_numpy_iterator():
        texts.append(example[task.text_feature].decode("utf-8"))
        if task.pair_feature is not None:
            pairs.append(example[task.pair_feature].decode("utf-8"))
        labels.append(example["label"])
    dtype = np.float32 if task.is_regression else np.int32
    return tsv.TextExamples(
        texts=tuple(texts),
        labels=np.asarray(labels, dtype=dtype),
        pairs=tuple(pairs) if task.pair_feature is not None else None,
        label_names=task.label_names,
        source=task.tfds_name,
    )


__all__ = [
    "GLUE_TASKS",
    "GlueTask",
    "builtin_sst2_dir",
    "canonical_split",
    "dataset_to_examples",
    "default_data_dir",
    "glue_file",
    "glue_task",
    "load_glue",
    "read_glue",
    "read_glue_file",
    "store_as_tfds",
    "tfds_features",
]
