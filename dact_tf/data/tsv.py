"""Strict readers for tab- and comma-separated text classification files.

Every malformed row is an error that names the file and its 1-based line
number: a row with the wrong number of columns, an empty text, a label that
is not in the label set, an unparsable regression target, or a file with no
data rows. Silently dropping rows (what `tfds`'s GLUE builder does) hides
data problems and makes scores incomparable.

GLUE-style TSV files are read the GLUE way: tab separated, **no quote
handling** (rows in MRPC, RTE, STS-B and QNLI contain `"`), a UTF-8 BOM is
dropped, and lines are split on `\\n` only (`str.splitlines` would also split
on characters such as `\\x1c` or `\\u2028` that may sit inside a sentence).
CSV files go through Python's `csv` module with standard quoting.
"""

import csv
import dataclasses
import io
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class TextExamples:
    """Validated text classification (or regression) examples, in file order.

    Args:
        texts: tuple of str. First segment of each example.
        labels: np.ndarray `[num_examples]`, int32 class ids, or float32
            targets for regression.
        pairs: tuple of str or None. Second segment of each example.
        label_names: tuple of str or None. `label_names[i]` is the name of
            class id `i`; `None` for regression. Save it with the model.
        source: str. Where the examples came from (a file path).

    Example:
    ```python
    examples = read_text_file("reviews.csv", text_column="review",
                              label_column="stars")
    len(examples), examples.label_names  # 1000, ("1", "2", "3", "4", "5")
    ```
    """

    texts: tuple
    labels: np.ndarray
    pairs: tuple = None
    label_names: tuple = None
    source: str = ""

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"{len(self.texts)} texts but {len(self.labels)} labels."
            )
        if self.pairs is not None and len(self.pairs) != len(self.texts):
            raise ValueError(
                f"{len(self.texts)} texts but {len(self.pairs)} pairs."
            )

    def __len__(self):
        return len(self.texts)

    @property
    def is_regression(self):
        """bool: `True` when labels are float targets, not class ids."""
        return self.label_names is None

    @property
    def num_classes(self):
        """int or None: the number of classes (`None` for regression)."""
        return None if self.label_names is None else len(self.label_names)

    @property
    def label_map(self):
        """dict: label name -> class id (empty for regression)."""
        return {name: i for i, name in enumerate(self.label_names or ())}

    def select(self, indices):
        """Returns the examples at `indices` (in that order).

        Args:
            indices: sequence of int.

        Returns:
            TextExamples.
        """
        indices = np.asarray(indices, dtype=np.int64)
        return TextExamples(
            texts=tuple(self.texts[i] for i in indices),
            labels=self.labels[indices],
            pairs=None
            if self.pairs is None
            else tuple(self.pairs[i] for i in indices),
            label_names=self.label_names,
            source=self.source,
        )


def read_rows(path, *, delimiter="\t", quoting=False, header=True,
              num_columns=None):
    """Reads a delimited file into rows, checking the column count.

    Args:
        path: str. The file (UTF-8, a leading BOM is dropped).
        delimiter: str. One character.
        quoting: bool. `False`: split each line on `delimiter`, no quote
            handling (GLUE TSV). `True`: Python `csv` quoting (CSV files; a
            quoted field may span lines).
        header: bool. Whether the first line is a header.
        num_columns: int or None. Required column count. `None`: the header's
            count, or the first data row's.

    Returns:
        A tuple `(header_fields, rows)`: `header_fields` is a list of str or
        `None`; `rows` is a list of `(line_number, fields)`, line numbers
        1-based (the header is line 1).

    Raises:
        ValueError: naming `path` and the line: undecodable bytes, a row
            with the wrong column count, or no data rows.

    Example:
    ```python
    header, rows = read_rows("SST-2/dev.tsv")
    header  # ["sentence", "label"]
    rows[0]  # (2, ["it 's a charming and often affecting journey . ", "1"])
    ```
    """
    path = os.fspath(path)
    records = _split_records(path, delimiter, quoting)
    header_fields = None
    if header:
        if not records:
            raise ValueError(f"{path}: the file is empty (no header line).")
        _, header_fields = records[0]
        records = records[1:]
        if num_columns is None:
            num_columns = len(header_fields)
        elif len(header_fields) != num_columns:
            raise ValueError(
                f"{path}:1: the header has {len(header_fields)} columns, "
                f"expected {num_columns}."
            )
    if not records:
        raise ValueError(f"{path}: no data rows.")
    if num_columns is None:
        num_columns = len(records[0][1])
    for line_number, fields in records:
        if len(fields) != num_columns:
            raise ValueError(
                f"{path}:{line_number}: expected {num_columns} columns, "
                f"found {len(fields)}."
            )
    return header_fields, records


def _split_records(path, delimiter, quoting):
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # final newline
    decoded = []
    for index, line in enumerate(lines):
        try:
            decoded.append(line.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{path}:{index + 1}: not valid UTF-8 ({e.reason})."
            ) from None
    if not quoting:
        return [
            (index + 1, line.split(delimiter))
            for index, line in enumerate(decoded)
        ]
    text = "\n".join(decoded)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                        strict=True)
    records = []
    start = 1
    try:
        for fields in reader:
            records.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as e:
        raise ValueError(f"{path}:{start}: {e}.") from None
    return records


def column_index(column, header_fields, path, what="column"):
    """Resolves a column given as an int index or a header name.

    Args:
        column: int or str.
        header_fields: list of str or None.
        path: str. For error messages.
        what: str. Name of the argument, for error messages.

    Returns:
        int: a 0-based index (negative indices count from the end).

    Raises:
        ValueError: an unknown name, or a name without a header.

    Example:
    ```python
    column_index("label", ["sentence", "label"], "f.tsv")  # 1
    ```
    """
    if isinstance(column, (int, np.integer)):
        return int(column)
    if header_fields is None:
        raise ValueError(
            f"{path}: {what}={column!r} is a name but the file has no header "
            "(header=False); give a 0-based column index."
        )
    if column not in header_fields:
        raise ValueError(
            f"{path}: {what}={column!r} is not in the header {header_fields}."
        )
    return header_fields.index(column)


def _refuse_a_column_read_twice(columns, width, path):
    """One column read twice (e.g. the label as the text, or -1 and 1 of 2)."""
    used = {}
    for what, column in columns:
        if -width <= column < width:
            index = column % width
            if index in used:
                raise ValueError(
                    f"{path}: the {what} column ({column}) is the {used[index]} column "
                    f"too (column {index} of {width}): the model would "
                    + ("read its own labels." if what == "label" else "read one text twice."))
            used[index] = what


def rows_to_examples(
    rows,
    *,
    path,
    text_column,
    label_column,
    text_pair_column=None,
    label_names=None,
    file_labels=None,
    regression=False,
    label_range=None,
):
    """Turns `(line_number, fields)` rows into validated `TextExamples`.

    Args:
        rows: list of `(line_number, fields)` from `read_rows`.
        path: str. For error messages and `TextExamples.source`.
        text_column: int. Index of the first text.
        label_column: int. Index of the label.
        text_pair_column: int or None. Index of the second text.
        label_names: sequence of str or None. Class names in id order. With
            `file_labels=None` the file must hold these names. `None`: taken
            from the file, sorted (numerically when all are integers).
        file_labels: sequence of str or None. How class `i` is written in the
            file, when it differs from `label_names[i]` (GLUE's SST-2 writes
            "0"/"1" for negative/positive).
        regression: bool. Labels are float targets.
        label_range: `(lo, hi)` or None: regression targets must lie within
            (the model's scores cannot leave it).

    Returns:
        TextExamples.

    Raises:
        ValueError: `"path:line: ..."` for an empty text, an unknown label or
            an unparsable float.

    Example:
    ```python
    _, rows = read_rows("train.tsv")
    examples = rows_to_examples(rows, path="train.tsv", text_column=0,
                                label_column=1)
    ```
    """
    texts, pairs, raw_labels = [], [], []
    columns = [("text", text_column)]
    if text_pair_column is not None:
        columns.append(("text pair", text_pair_column))
    if rows:
        _refuse_a_column_read_twice(columns + [("label", label_column)], len(rows[0][1]), path)
    for line_number, fields in rows:
        for what, column in columns:
            try:
                value = fields[column]
            except IndexError:
                raise ValueError(
                    f"{path}:{line_number}: no column {column} for the "
                    f"{what} (the row has {len(fields)})."
                ) from None
            if not value.strip():
                raise ValueError(f"{path}:{line_number}: empty {what}.")
        texts.append(fields[text_column])
        if text_pair_column is not None:
            pairs.append(fields[text_pair_column])
        try:
            raw_labels.append((line_number, fields[label_column].strip()))
        except IndexError:
            raise ValueError(
                f"{path}:{line_number}: no label column {label_column} "
                f"(the row has {len(fields)})."
            ) from None
    for line_number, raw in raw_labels:
        if not raw:
            raise ValueError(f"{path}:{line_number}: empty label.")
    if not regression and label_names is None:
        _refuse_real_valued_labels(raw_labels, path)
    if regression:
        labels = np.empty(len(raw_labels), np.float32)
        for i, (line_number, raw) in enumerate(raw_labels):
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{path}:{line_number}: label {raw!r} is not a number.") from None
            if not np.isfinite(value):
                raise ValueError(f"{path}:{line_number}: label {raw!r} is not finite.")
            if label_range is not None and not label_range[0] <= value <= label_range[1]:
                raise ValueError(
                    f"{path}:{line_number}: label {raw!r} is outside the score range "
                    f"[{label_range[0]:g}, {label_range[1]:g}].")
            labels[i] = value
        names = None
    else:
        if label_names is None:
            names = sort_label_names({raw for _, raw in raw_labels})
            written = names
        else:
            names = tuple(str(name) for name in label_names)
            if len(set(names)) != len(names):
                raise ValueError(f"label_names has duplicates: {names}.")
            written = names if file_labels is None else tuple(file_labels)
        lookup = {name: i for i, name in enumerate(written)}
        labels = np.empty(len(raw_labels), np.int32)
        for i, (line_number, raw) in enumerate(raw_labels):
            if raw not in lookup:
                raise ValueError(
                    f"{path}:{line_number}: unknown label {raw!r}; expected "
                    f"one of {list(written)}."
                )
            labels[i] = lookup[raw]
    return TextExamples(
        texts=tuple(texts),
        labels=labels,
        pairs=tuple(pairs) if text_pair_column is not None else None,
        label_names=names,
        source=path,
    )


def _refuse_real_valued_labels(raw_labels, path):
    """Classification labels that are real numbers (scores) would become classes."""
    for line_number, raw in raw_labels:
        try:
            value = float(raw)
        except ValueError:
            return  # names, not numbers
        if not np.isfinite(value) or value != int(value) or raw.lower() in ("nan", "inf"):
            raise ValueError(
                f"{path}:{line_number}: label {raw!r} is a real number, not a class name: "
                "custom data is classification (each distinct label a class); for scores, "
                "round them into classes first."
            )


def sort_label_names(names):
    """Sorts label names deterministically: numerically if all are ints.

    So a file with labels "0".."10" maps "2" to id 2, not after "10".

    Args:
        names: iterable of str.

    Returns:
        tuple of str.

    Example:
    ```python
    sort_label_names({"10", "2", "0"})  # ("0", "2", "10")
    sort_label_names({"pos", "neg"})  # ("neg", "pos")
    ```
    """
    names = set(names)
    try:
        return tuple(sorted(names, key=int))
    except ValueError:
        return tuple(sorted(names))


def read_text_file(
    path,
    *,
    text_column,
    label_column,
    text_pair_column=None,
    header=True,
    delimiter=None,
    label_names=None,
    regression=False,
    quoting=None,
):
    """Reads a custom TSV/CSV file of texts (or text pairs) and labels.

    String labels become class ids: in the order of `label_names` when given
    (then any other label is an error), otherwise sorted (numerically when
    all labels are integers, so "0"/"1" keep ids 0/1). The mapping is
    `TextExamples.label_names`; store it with the trained model.

    Args:
        path: str. A `.tsv`, `.csv` (or `.txt`) file, UTF-8.
        text_column: int or str. Index or header name of the text.
        label_column: int or str. Index or header name of the label.
        text_pair_column: int, str or None. Index or name of a second text.
        header: bool. Whether the first line is a header.
        delimiter: str or None. `None`: `,` for `.csv`, tab otherwise.
        label_names: sequence of str or None. Class names in id order.
        regression: bool. Labels are float targets (float32).
        quoting: bool or None. `None`: quotes are honoured in CSV files and
            not in TSV files (the GLUE convention).

    Returns:
        TextExamples.

    Raises:
        ValueError: a malformed file; the message names the file and line.

    Example:
    ```python
    examples = read_text_file("reviews.csv", text_column="review",
                              label_column="sentiment")
    examples.label_names  # ("negative", "neutral", "positive")
    ```
    """
    path = os.fspath(path)
    is_csv = path.lower().endswith(".csv")
    if delimiter is None:
        delimiter = "," if is_csv else "\t"
    if quoting is None:
        quoting = is_csv
    header_fields, rows = read_rows(
        path, delimiter=delimiter, quoting=quoting, header=header
    )
    return rows_to_examples(
        rows,
        path=path,
        text_column=column_index(text_column, header_fields, path,
                                 "text_column"),
        label_column=column_index(label_column, header_fields, path,
                                  "label_column"),
        text_pair_column=None
        if text_pair_column is None
        else column_index(text_pair_column, header_fields, path,
                          "text_pair_column"),
        label_names=label_names,
        regression=regression,
    )


def balanced_subset_indices(labels, per_class, seed):
    """Draws `per_class` random rows of every class, returned in file order.

    Used to cut the shipped SST-2 demo subset (see
    `dact_tf/resources/README.md`); with the same labels, `per_class` and
    `seed` it returns the same rows on any machine (NumPy's PCG64).

    Args:
        labels: 1-D int array of class ids.
        per_class: int. Rows to draw from each class, without replacement.
        seed: int. Seed of `np.random.default_rng`.

    Returns:
        np.ndarray of int64 row indices, sorted ascending.

    Example:
    ```python
    balanced_subset_indices(np.array([0, 1, 1, 0, 1]), 2, seed=0)
    # 4 sorted indices: 0 and 3 (all of class 0), two of 1, 2, 4
    ```
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        candidates = np.flatnonzero(labels == label)
        if len(candidates) < per_class:
            raise ValueError(
                f"class {label} has {len(candidates)} rows, fewer than "
                f"per_class={per_class}."
            )
        chosen.append(rng.choice(candidates, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)
