"""Predictions on raw texts: reading them from a file, and one row per text.

`dact-tf predict` is these two functions; in Python:

```python
model, preprocessor, config = dact_tf.training.train_lib.load_model_dir("runs/demo")
texts, pairs = read_text_file("reviews.txt", pair_model=False)
for row in predict_texts(model, preprocessor, texts, label_names=config["label_names"]):
    print(row["label"], row["probability"], row["layers_executed"])
```
"""

import os

import tensorflow as tf

from dact_tf.evaluation import scoring


def read_text_file(path, pair_model):
    """Texts to predict from a file: one a line (a pair model: two, tab-separated).

    Args:
        path: str, the file (UTF-8; a byte-order mark is dropped).
        pair_model: bool, whether the model reads sentence pairs.

    Returns:
        `(texts, pairs)`: lists of str; `pairs` is None for a single-sentence
        model.

    Raises:
        ValueError: an empty file, or a line that is empty, not UTF-8, or
            holds the wrong number of sentences; the message names
            `path:line`.
        FileNotFoundError, IsADirectoryError: `path` is not a file.
    """
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not a file.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist.")
    texts, pairs = [], []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start}).") from None
            line = line.rstrip("\r\n")
            if not line.strip():
                raise ValueError(f"{where}: empty line (one text a line).")
            fields = line.split("\t")
            if not pair_model:
                if len(fields) > 1:
                    raise ValueError(f"{where}: this model reads single sentences, but a tab "
                                     "in the line gives a second one (it would be ignored).")
                texts.append(line)
                continue
            if len(fields) != 2:
                raise ValueError(f"{where}: this model reads sentence pairs: two sentences "
                                 f"separated by one tab, got {len(fields)} field(s).")
            for name, field in zip(("first", "second"), fields):
                if not field.strip():
                    raise ValueError(f"{where}: the {name} sentence of the pair is empty.")
            texts.append(fields[0])
            pairs.append(fields[1])
    if not texts:
        raise ValueError(f"{path}: the file is empty.")
    return texts, (pairs if pair_model else None)


def predict_texts(model, preprocessor, texts, pairs=None, label_names=None, batch_size=32,
                  verbose=0):
    """The model's answer for each text (or pair), as JSON-ready dicts.

    Args:
        model: a `DactClassifier`.
        preprocessor: its keras-hub preprocessor (strings to token ids).
        texts: list of str.
        pairs: None, or a list of str (the second sentences), as long as
            `texts`.
        label_names: None (labels as ints) or the class names.
        batch_size: int, texts per batch.
        verbose: int, a progress bar when 1.

    Returns:
        A list of dicts, one per text: `text`, `layers_executed`,
        `num_layers`, and `label` and `probability` (classification) or
        `score` (regression).

    Raises:
        ValueError: `pairs` does not match `texts` in length.
    """
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"Got {len(texts)} texts but {len(pairs)} second sentences.")
    if not texts:
        return []
    rows_in = tf.data.Dataset.from_tensor_slices(
        texts if pairs is None else (texts, pairs)).batch(batch_size)
    # Pairs must go by keyword: positionally keras-hub reads the second as labels.
    rows_in = rows_in.map(lambda *t: (preprocessor(x=t[0] if len(t) == 1 else t),
                                      tf.zeros(tf.shape(t[0])[:1])))
    out, _ = scoring.predict_dataset(model, rows_in, verbose=verbose)
    rows = []
    for i, text in enumerate(texts):
        row = {"text": text, "layers_executed": int(out["layers_executed"][i]),
               "num_layers": model.num_layers}
        if model.task == "regression":
            row["score"] = float(out["scores"][i])
        else:
            label = int(out["predictions"][i])
            row["label"] = label_names[label] if label_names else label
            row["probability"] = float(out["probabilities"][i, label])
        rows.append(row)
    return rows
