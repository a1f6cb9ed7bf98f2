"""Tests for dact_tf.data.glue: specs, strict parsing, the two tfds routes."""

import hashlib
import os
import shutil
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dact_tf.data import glue
from dact_tf.data import network
from dact_tf.data import tsv

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata", "glue")
SHARED_GLUE = os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared",
                 "data", "glue")
)
needs_shared = pytest.mark.skipif(
    not os.path.isdir(SHARED_GLUE), reason="../shared/data/glue is absent"
)

# From ../shared/data/glue/SOURCES.md (published GLUE statistics).
SHARED_COUNTS = {
    ("sst2", "train"): [29780, 37569],
    ("sst2", "validation"): [428, 444],
    ("mrpc", "train"): [1194, 2474],
    ("mrpc", "validation"): [129, 279],
    ("rte", "train"): [1249, 1241],
    ("rte", "validation"): [146, 131],
    ("cola", "train"): [2528, 6023],
    ("cola", "validation"): [322, 721],
    ("qnli", "validation"): [2702, 2761],
    ("stsb", "train"): 5749,
    ("stsb", "validation"): 1500,
}
SST2_DEV_SHA256 = (
    "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0"
)
SUBSET_SEED = 2109


def test_glue_task_aliases_and_errors():
    assert glue.glue_task("SST-2") is glue.GLUE_TASKS["sst2"]
    assert glue.glue_task("glue/sts-b").name == "stsb"
    assert glue.glue_task("stsb").is_regression
    assert glue.glue_task("stsb").num_classes == 1
    assert glue.glue_task("cola").num_classes == 2
    with pytest.raises(ValueError, match="Unknown GLUE task 'mnli'"):
        glue.glue_task("mnli")
    assert glue.canonical_split("dev") == "validation"
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        glue.canonical_split("test")


@pytest.mark.parametrize("name", sorted(glue.GLUE_TASKS))
def test_specs_match_tfds_glue_features(name, tmp_path):
    """The local route gives tfds' glue/<task> features, names and ids."""
    task = glue.glue_task(name)
    # tfds.builder() needs no network: it only builds the DatasetInfo.
    reference = tfds.builder(task.tfds_name, data_dir=str(tmp_path)).info
    ours = glue.tfds_features(
        task.text_feature, task.pair_feature, task.label_names
    )
    assert ours.get_tensor_spec() == reference.features.get_tensor_spec()
    if task.is_regression:
        assert reference.features["label"].dtype == np.float32
    else:
        assert tuple(reference.features["label"].names) == task.label_names


# ----------------------------------------------------------------------------
# Parsing (fixtures: always run).
# ----------------------------------------------------------------------------


def test_parse_fixtures_of_every_task():
    sst2 = glue.read_glue("sst2", "train", TESTDATA)
    assert len(sst2) == 6 and sst2.pairs is None
    assert sst2.texts[0] == "hide new secretions from the parental units "
    np.testing.assert_array_equal(sst2.labels, [0, 0, 1, 0, 0, 0])

    mrpc = glue.read_glue("mrpc", "train", TESTDATA)  # BOM header
    assert mrpc.label_names == ("not_equivalent", "equivalent")
    assert mrpc.texts[0].startswith("Amrozi accused his brother")
    assert mrpc.pairs[0].startswith("Referring to him as only")
    np.testing.assert_array_equal(mrpc.labels, [1, 0, 1, 0, 1, 1])

    rte = glue.read_glue("rte", "dev", TESTDATA)  # string labels
    np.testing.assert_array_equal(rte.labels, [1, 0, 1, 1, 0, 0])
    assert rte.pairs[0] == "Christopher Reeve had an accident."

    cola = glue.read_glue("cola", "dev", TESTDATA)  # no header, no final \n
    assert len(cola) == 6
    assert cola.texts[-1] == "The more you would want, the less you would eat."

    stsb = glue.read_glue("stsb", "train", TESTDATA)
    assert stsb.is_regression and stsb.labels.dtype == np.float32
    np.testing.assert_allclose(stsb.labels[:2], [5.0, 3.8])
    assert stsb.pairs[0] == "An air plane is taking off."

    qnli = glue.read_glue("qnli", "validation", TESTDATA)
    assert qnli.texts[0].startswith("What came into force after the new")
    np.testing.assert_array_equal(qnli.labels, [0, 1, 1, 0, 1, 1])


def corrupt(tmp_path, folder, split, line_number, new_line):
    """Copies a fixture to tmp_path and replaces one line (1-based)."""
    source = os.path.join(TESTDATA, folder, f"{split}.tsv")
    target_dir = tmp_path / folder
    target_dir.mkdir(parents=True, exist_ok=True)
    lines = open(source, "rb").read().split(b"\n")
    lines[line_number - 1] = new_line.encode("utf-8")
    (target_dir / f"{split}.tsv").write_bytes(b"\n".join(lines))
    return str(tmp_path)


@pytest.mark.parametrize(
    "task, folder, line, row, message",
    [
        ("sst2", "SST-2", 3, "a fine film\t2",
         r"SST-2/train\.tsv:3: unknown label '2'"),
        ("sst2", "SST-2", 4, "no label here",
         r"SST-2/train\.tsv:4: expected 2 columns, found 1"),
        ("sst2", "SST-2", 5, " \t1", r"SST-2/train\.tsv:5: empty text"),
        ("stsb", "STS-B", 2,
         "0\tg\tf\ty\t1\tn\tn\tA man.\tA woman.\tfive",
         r"STS-B/train\.tsv:2: label 'five' is not a number"),
        ("stsb", "STS-B", 3,
         "0\tg\tf\ty\t1\tn\tn\tA man.\tA woman.\t100",
         r"STS-B/train\.tsv:3: label '100' is outside the score range \[0, 5\]"),
        ("stsb", "STS-B", 4,
         "0\tg\tf\ty\t1\tn\tn\tA man.\tA woman.\t-3",
         r"STS-B/train\.tsv:4: label '-3' is outside the score range \[0, 5\]"),
        ("rte", "RTE", 6, "5\tA.\tB.\tentails",
         r"RTE/train\.tsv:6: unknown label 'entails'"),
        ("mrpc", "MRPC", 7, "1\t1\t2\tonly one sentence",
         r"MRPC/train\.tsv:7: expected 5 columns, found 4"),
        ("cola", "CoLA", 1, "src\t1\t\t", r"CoLA/train\.tsv:1: empty text"),
    ],
)
def test_malformed_glue_rows_name_file_and_line(tmp_path, task, folder, line,
                                                row, message):
    glue_dir = corrupt(tmp_path, folder, "train", line, row)
    with pytest.raises(ValueError, match=message):
        glue.read_glue(task, "train", glue_dir)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_bytes(b"")
    with pytest.raises(ValueError, match=r"train\.tsv: the file is empty"):
        glue.read_glue("sst2", "train", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="No sst2 file"):
        glue.read_glue("sst2", "dev", str(tmp_path))


def test_glue_file_accepts_glue_root_or_task_folder():
    assert glue.glue_file("sst2", "dev", TESTDATA) == os.path.join(
        TESTDATA, "SST-2", "dev.tsv"
    )
    task_folder = os.path.join(TESTDATA, "SST-2")
    assert glue.glue_file("sst2", "train", task_folder) == os.path.join(
        task_folder, "train.tsv"
    )


# ----------------------------------------------------------------------------
# The real GLUE copy (skipped where ../shared is absent).
# ----------------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("task, split", sorted(SHARED_COUNTS))
def test_parse_real_glue_files(task, split):
    examples = glue.read_glue(task, split, SHARED_GLUE)
    expected = SHARED_COUNTS[(task, split)]
    if glue.glue_task(task).is_regression:
        assert len(examples) == expected
        assert examples.labels.min() == 0.0 and examples.labels.max() == 5.0
    else:
        np.testing.assert_array_equal(np.bincount(examples.labels), expected)
    assert all(text.strip() for text in examples.texts)


# ----------------------------------------------------------------------------
# The shipped SST-2 sample.
# ----------------------------------------------------------------------------


def test_builtin_sst2_sample_is_small_balanced_and_parses():
    folder = glue.builtin_sst2_dir()
    sizes = [os.path.getsize(os.path.join(folder, name))
             for name in ("train.tsv", "dev.tsv")]
    assert sum(sizes) < 300_000
    train = glue.read_glue("sst2", "train", folder)
    dev = glue.read_glue("sst2", "validation", folder)
    assert len(train) == 2000 and len(dev) == 872
    np.testing.assert_array_equal(np.bincount(train.labels), [1000, 1000])
    np.testing.assert_array_equal(np.bincount(dev.labels), [428, 444])
    with open(os.path.join(folder, "dev.tsv"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == SST2_DEV_SHA256


@needs_shared
def test_builtin_sst2_sample_is_reproducible_from_glue():
    """Re-draws the subset as dact_tf/resources/README.md describes."""
    source = os.path.join(SHARED_GLUE, "SST-2", "train.tsv")
    full = glue.read_glue_file("sst2", source)
    indices = tsv.balanced_subset_indices(full.labels, 1000, seed=SUBSET_SEED)
    lines = open(source, "rb").read().split(b"\n")
    expected = b"\n".join([lines[0]] + [lines[i + 1] for i in indices]) + b"\n"
    shipped = os.path.join(glue.builtin_sst2_dir(), "train.tsv")
    assert open(shipped, "rb").read() == expected


# ----------------------------------------------------------------------------
# load_glue: local files through tfds, and the online route failing fast.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("task, split", [("mrpc", "train"), ("stsb", "dev"),
                                         ("cola", "dev")])
def test_local_route_goes_through_tfds(tmp_path, task, split):
    spec = glue.glue_task(task)
    ds = glue.load_glue(task, split, glue_dir=TESTDATA,
                        data_dir=str(tmp_path))
    reference = tfds.builder(spec.tfds_name, data_dir=str(tmp_path / "ref"))
    assert ds.element_spec == reference.info.features.get_tensor_spec()
    back = glue.dataset_to_examples(ds, task)
    parsed = glue.read_glue(task, split, TESTDATA)
    assert back.texts == parsed.texts and back.pairs == parsed.pairs
    np.testing.assert_array_equal(back.labels, parsed.labels)
    idx = [int(x["idx"]) for x in ds.as_numpy_iterator()]
    assert idx == list(range(len(parsed)))
    # A tfds dataset on disk: readable with plain tfds, no dact_tf code.
    (folder,) = [p for p in os.listdir(tmp_path) if p.startswith("dact_glue")]
    builder = tfds.builder_from_directory(
        os.path.join(tmp_path, folder, f"dact_glue_{spec.name}", "1.0.0")
    )
    assert builder.info.splits[glue.canonical_split(split)].num_examples == 6


def test_local_route_caches_by_content(tmp_path):
    glue_dir = tmp_path / "glue"
    shutil.copytree(TESTDATA, glue_dir)
    data_dir = tmp_path / "tfds"
    first = glue.load_glue("sst2", "train", glue_dir=str(glue_dir),
                           data_dir=str(data_dir))
    folders = sorted(os.listdir(data_dir))
    assert len(folders) == 1 and folders[0].startswith("dact_glue_sst2-")
    mtime = os.path.getmtime(data_dir / folders[0])
    again = glue.load_glue("sst2", "train", glue_dir=str(glue_dir),
                           data_dir=str(data_dir))
    assert sorted(os.listdir(data_dir)) == folders
    assert os.path.getmtime(data_dir / folders[0]) == mtime
    assert [x["sentence"] for x in first.as_numpy_iterator()] == [
        x["sentence"] for x in again.as_numpy_iterator()
    ]
    # Edit the file: a new stored copy, with the new content.
    path = glue_dir / "SST-2" / "train.tsv"
    path.write_bytes(path.read_bytes().replace(b"hide new", b"show new"))
    edited = glue.load_glue("sst2", "train", glue_dir=str(glue_dir),
                            data_dir=str(data_dir))
    assert len(os.listdir(data_dir)) == 2  # no temporary folders left
    assert next(edited.as_numpy_iterator())["sentence"].startswith(b"show")


def test_store_as_tfds_custom_examples(tmp_path):
    examples = tsv.TextExamples(
        texts=("good", "bad", "fine"), pairs=("a", "b", "c"),
        labels=np.array([1, 0, 2], np.int32), label_names=("n", "p", "z"),
    )
    ds = glue.store_as_tfds(examples, name="custom_text", split="train",
                            data_dir=str(tmp_path))
    rows = list(ds.as_numpy_iterator())
    assert [r["text"] for r in rows] == [b"good", b"bad", b"fine"]
    assert [r["text_pair"] for r in rows] == [b"a", b"b", b"c"]
    assert [r["label"] for r in rows] == [1, 0, 2]


def test_online_route_fails_fast_when_offline(tmp_path, monkeypatch):
    probed = []

    def offline(host, port=443, timeout=3.0):
        probed.append((host, timeout))
        return False

    monkeypatch.setattr(network, "can_connect", offline)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="dl.fbaipublicfiles.com"):
        glue.load_glue("sst2", "train", data_dir=str(tmp_path))
    assert time.monotonic() - start < 10
    assert probed == [("dl.fbaipublicfiles.com", 3.0)]
    # "auto" without glue_dir is the tfds route too.
    with pytest.raises(ConnectionError, match="builtin_sst2_dir"):
        glue.load_glue("rte", "dev", source="auto", data_dir=str(tmp_path))


def test_online_route_reads_prepared_data_without_network(tmp_path,
                                                          monkeypatch):
    """A prepared glue/<task> is read from disk; the network is not probed."""

    def must_not_probe(*args, **kwargs):
        raise AssertionError("probed the network for prepared data")

    monkeypatch.setattr(network, "can_connect", must_not_probe)
    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "is_prepared", lambda self: True
    )
    sentinel = tf.data.Dataset.range(3)
    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "as_dataset",
        lambda self, split, shuffle_files: sentinel,
    )
    assert glue.load_glue("sst2", "validation",
                          data_dir=str(tmp_path)) is sentinel


def test_can_connect_gives_up_quickly():
    start = time.monotonic()
    assert not network.can_connect("host.invalid", timeout=1.0)
    assert time.monotonic() - start < 3


def test_bad_source_arguments():
    with pytest.raises(ValueError, match="needs `glue_dir`"):
        glue.load_glue("sst2", source="local")
    with pytest.raises(ValueError, match="Unknown source"):
        glue.load_glue("sst2", source="web", glue_dir=TESTDATA)
