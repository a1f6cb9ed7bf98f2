"""Tests for dact_tf.data.tsv: strict TSV/CSV parsing and label mapping."""

import numpy as np
import pytest

from dact_tf.data import tsv


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return str(path)


# ----------------------------------------------------------------------------
# read_rows
# ----------------------------------------------------------------------------


def test_read_rows_reports_line_numbers_and_header(tmp_path):
    path = write(tmp_path, "a.tsv", "sentence\tlabel\ngood \t1\nbad \t0\n")
    header, rows = tsv.read_rows(path)
    assert header == ["sentence", "label"]
    assert rows == [(2, ["good ", "1"]), (3, ["bad ", "0"])]


def test_read_rows_without_header_or_final_newline(tmp_path):
    path = write(tmp_path, "a.tsv", "x\t1\ny\t0")
    header, rows = tsv.read_rows(path, header=False)
    assert header is None
    assert rows == [(1, ["x", "1"]), (2, ["y", "0"])]


def test_read_rows_drops_bom_and_crlf(tmp_path):
    path = write(tmp_path, "a.tsv", b"\xef\xbb\xbfQuality\ttext\r\n1\thi\r\n")
    header, rows = tsv.read_rows(path)
    assert header == ["Quality", "text"]
    assert rows == [(2, ["1", "hi"])]


def test_tsv_keeps_quotes_literally(tmp_path):
    # GLUE rule: no quote handling. A csv reader would swallow the tab.
    path = write(tmp_path, "a.tsv", 'h1\th2\n"He said\t"no" .\n')
    _, rows = tsv.read_rows(path)
    assert rows == [(2, ['"He said', '"no" .'])]


def test_only_newline_splits_lines(tmp_path):
    # \x1c and \u2028 are line breaks for str.splitlines but not for GLUE.
    path = write(tmp_path, "a.tsv", "t\tl\nab\x1ccd\u2028ef\t1\n")
    _, rows = tsv.read_rows(path)
    assert rows == [(2, ["ab\x1ccd\u2028ef", "1"])]


@pytest.mark.parametrize(
    "content, message",
    [
        ("a\tb\nx\t1\ny\n", r"a\.tsv:3: expected 2 columns, found 1"),
        ("a\tb\nx\t1\n\ny\t0\n", r"a\.tsv:3: expected 2 columns, found 1"),
        ("a\tb\nx\t1\t2\n", r"a\.tsv:2: expected 2 columns, found 3"),
        ("", r"a\.tsv: the file is empty"),
        ("a\tb\n", r"a\.tsv: no data rows"),
    ],
)
def test_read_rows_rejects_malformed_files(tmp_path, content, message):
    path = write(tmp_path, "a.tsv", content)
    with pytest.raises(ValueError, match=message):
        tsv.read_rows(path)


def test_read_rows_checks_required_column_count_against_header(tmp_path):
    path = write(tmp_path, "a.tsv", "a\tb\tc\nx\ty\tz\n")
    with pytest.raises(ValueError, match=r"a\.tsv:1: the header has 3"):
        tsv.read_rows(path, num_columns=2)


def test_read_rows_rejects_invalid_utf8_with_line(tmp_path):
    path = write(tmp_path, "a.tsv", b"a\tb\nok\t1\nbad \xff\t0\n")
    with pytest.raises(ValueError, match=r"a\.tsv:3: not valid UTF-8"):
        tsv.read_rows(path)


def test_csv_quoting_handles_commas_and_multiline_fields(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        'text,label\n"good, really",pos\n"two\nlines",neg\nplain,pos\n',
    )
    header, rows = tsv.read_rows(path, delimiter=",", quoting=True)
    assert header == ["text", "label"]
    assert rows == [
        (2, ["good, really", "pos"]),
        (3, ["two\nlines", "neg"]),
        (5, ["plain", "pos"]),
    ]


def test_csv_wrong_column_count_names_start_line(tmp_path):
    path = write(tmp_path, "a.csv", 'text,label\n"a\nb",x\nc,d,e\n')
    with pytest.raises(ValueError, match=r"a\.csv:4: expected 2 columns"):
        tsv.read_rows(path, delimiter=",", quoting=True)


# ----------------------------------------------------------------------------
# rows_to_examples / read_text_file
# ----------------------------------------------------------------------------


def test_string_labels_are_sorted_and_mapped(tmp_path):
    path = write(
        tmp_path, "r.tsv", "text\tlabel\na\tpos\nb\tneg\nc\tneutral\nd\tpos\n"
    )
    examples = tsv.read_text_file(path, text_column="text",
                                  label_column="label")
    assert examples.label_names == ("neg", "neutral", "pos")
    np.testing.assert_array_equal(examples.labels, [2, 0, 1, 2])
    assert examples.labels.dtype == np.int32
    assert examples.texts == ("a", "b", "c", "d")
    assert examples.pairs is None
    assert examples.label_map == {"neg": 0, "neutral": 1, "pos": 2}
    assert examples.num_classes == 3 and not examples.is_regression
    assert examples.source == path


def test_integer_labels_sort_numerically(tmp_path):
    path = write(tmp_path, "r.tsv", "t\tl\na\t10\nb\t2\nc\t0\n")
    examples = tsv.read_text_file(path, text_column=0, label_column=1)
    assert examples.label_names == ("0", "2", "10")
    np.testing.assert_array_equal(examples.labels, [2, 1, 0])


def test_user_label_order_wins_and_unknown_label_fails(tmp_path):
    path = write(tmp_path, "r.tsv", "t\tl\na\tpos\nb\tneg\n")
    examples = tsv.read_text_file(
        path, text_column=0, label_column=1, label_names=["pos", "neg"]
    )
    np.testing.assert_array_equal(examples.labels, [0, 1])
    with pytest.raises(ValueError, match=r"r\.tsv:3: unknown label 'neg'"):
        tsv.read_text_file(path, text_column=0, label_column=1,
                           label_names=["pos", "other"])


def test_csv_with_pairs_and_named_columns(tmp_path):
    path = write(
        tmp_path,
        "p.csv",
        'id,question,answer,y\n1,"Is it, really?",yes,1\n2,Why?,"because",0\n',
    )
    examples = tsv.read_text_file(
        path, text_column="question", text_pair_column="answer",
        label_column="y",
    )
    assert examples.texts == ("Is it, really?", "Why?")
    assert examples.pairs == ("yes", "because")
    np.testing.assert_array_equal(examples.labels, [1, 0])


def test_headerless_file_with_negative_label_index(tmp_path):
    path = write(tmp_path, "h.tsv", "x\tsrc\tgood\t1\ny\tsrc\tbad\t0\n")
    examples = tsv.read_text_file(path, text_column=2, label_column=-1,
                                  header=False)
    assert examples.texts == ("good", "bad")
    np.testing.assert_array_equal(examples.labels, [1, 0])


def test_column_name_without_header_is_an_error(tmp_path):
    path = write(tmp_path, "h.tsv", "sentence\tlabel\ngood\t1\n")
    with pytest.raises(ValueError, match="has no header"):
        tsv.read_text_file(path, text_column="text", label_column=1,
                           header=False)
    with pytest.raises(ValueError, match="'text' is not in the header"):
        tsv.read_text_file(path, text_column="text", label_column=1)


def test_regression_labels(tmp_path):
    path = write(tmp_path, "s.tsv", "a\tb\tscore\nx\ty\t3.800\nz\tw\t0\n")
    examples = tsv.read_text_file(path, text_column=0, text_pair_column=1,
                                  label_column="score", regression=True)
    assert examples.is_regression and examples.label_names is None
    assert examples.labels.dtype == np.float32
    np.testing.assert_allclose(examples.labels, [3.8, 0.0])


@pytest.mark.parametrize(
    "content, kwargs, message",
    [
        ("t\tl\nx\tabc\n", {"regression": True},
         r"s\.tsv:2: label 'abc' is not a number"),
        ("t\tl\nx\tnan\n", {"regression": True},
         r"s\.tsv:2: label 'nan' is not finite"),
        ("t\tl\nx\t1\n  \t0\n", {}, r"s\.tsv:3: empty text"),
        ("t\tp\tl\nx\t\t1\n", {"text_pair_column": 1, "label_column": 2},
         r"s\.tsv:2: empty text pair"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, content, kwargs,
                                           message):
    path = write(tmp_path, "s.tsv", content)
    kwargs = {"text_column": 0, "label_column": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        tsv.read_text_file(path, **kwargs)


def test_select_and_length_checks():
    examples = tsv.TextExamples(
        texts=("a", "b", "c"), labels=np.array([0, 1, 0], np.int32),
        pairs=("x", "y", "z"), label_names=("n", "p"),
    )
    subset = examples.select([2, 0])
    assert subset.texts == ("c", "a") and subset.pairs == ("z", "x")
    np.testing.assert_array_equal(subset.labels, [0, 0])
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        tsv.TextExamples(texts=("a", "b", "c"), labels=np.zeros(2))


def test_balanced_subset_is_balanced_sorted_and_seeded():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    first = tsv.balanced_subset_indices(labels, 10, seed=3)
    again = tsv.balanced_subset_indices(labels, 10, seed=3)
    other = tsv.balanced_subset_indices(labels, 10, seed=4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(np.bincount(labels[first]), [10, 10, 10])
    with pytest.raises(ValueError, match="fewer than per_class=25"):
        tsv.balanced_subset_indices(labels, 25, seed=0)


@pytest.mark.parametrize("columns, message", [
    (dict(text_column=0, label_column=0), "would read its own labels"),
    (dict(text_column=1, label_column=1), "would read its own labels"),
    (dict(text_column=0, label_column=-2), "would read its own labels"),
    (dict(text_column=0, text_pair_column=-2, label_column=1), "read one text twice"),
])
def test_a_column_read_twice_is_refused(columns, message):
    rows = [(2, ["good film", "1"]), (3, ["bad", "0"])]
    with pytest.raises(ValueError, match=message):
        tsv.rows_to_examples(rows, path="f.tsv", **columns)


@pytest.mark.parametrize("label, message", [
    ("", "f.tsv:3: empty label"),
    ("0.5", "f.tsv:3: label '0.5' is a real number"),
    ("nan", "is a real number"),
    ("-inf", "is a real number"),
])
def test_empty_and_real_valued_labels_are_refused(label, message):
    rows = [(2, ["a fine film", "1"]), (3, ["a bad one", label])]
    with pytest.raises(ValueError, match=message):
        tsv.rows_to_examples(rows, path="f.tsv", text_column=0, label_column=1)
