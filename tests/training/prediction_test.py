"""dact_tf.evaluation.prediction: texts from a file, and one answer row per text."""

import numpy as np
import pytest

from dact_tf.evaluation import prediction
from dact_tf.models import backbones
from tests.export.conftest import LABELS
from tests.export.conftest import make_model
from tests.export.conftest import small_tokenizer


def test_read_text_file_single_sentences_and_pairs(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("\ufeffa fine film\nthe plot is dull\r\n".encode("utf-8"))
    assert prediction.read_text_file(str(path), pair_model=False) == (
        ["a fine film", "the plot is dull"], None)
    path.write_text("a fine film\tthe film is fine\n")
    assert prediction.read_text_file(str(path), pair_model=True) == (
        ["a fine film"], ["the film is fine"])


@pytest.mark.parametrize("content, pair_model, message", [
    (b"", False, r"in\.txt: the file is empty"),
    (b"good\n\nbad\n", False, r"in\.txt:2: empty line"),
    (b"good\tbad\n", False, r"in\.txt:1: this model reads single sentences"),
    (b"good\n", True, r"in\.txt:1: this model reads sentence pairs"),
    (b"good\t \n", True, r"in\.txt:1: the second sentence of the pair is empty"),
    (b"\tsecond\n", True, r"in\.txt:1: the first sentence of the pair is empty"),
    (b"a\tb\nonly one\n", True, r"in\.txt:2: this model reads sentence pairs"),
    (b"a\tb\tc\n", True, r"got 3 field\(s\)"),
    (b"\t\t\n", True, r"in\.txt:1: empty line"),
    (b" \r\n", False, r"in\.txt:1: empty line"),
    (b"\xff\xfe\n", False, r"in\.txt:1: not UTF-8"),
])
def test_read_text_file_names_the_bad_line(tmp_path, content, pair_model, message):
    path = tmp_path / "in.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        prediction.read_text_file(str(path), pair_model)


def test_read_text_file_refuses_what_is_not_a_file(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        prediction.read_text_file(str(tmp_path), False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prediction.read_text_file(str(tmp_path / "missing.txt"), False)


def test_predict_texts_rows_are_the_models_answers():
    model = make_model(seed=3)
    preprocessor = backbones.make_preprocessor(small_tokenizer(), sequence_length=16)
    texts = ["the film", "good fun", "a dull plot", "bad", "the plot is fun"]
    rows = prediction.predict_texts(model, preprocessor, texts, label_names=LABELS,
                                    batch_size=2)
    out = model.predict(preprocessor(texts), verbose=0)
    assert [r["text"] for r in rows] == texts
    assert [r["label"] for r in rows] == [LABELS[i] for i in out["predictions"]]
    np.testing.assert_allclose(
        [r["probability"] for r in rows],
        out["probabilities"][np.arange(len(texts)), out["predictions"]], rtol=1e-5)
    assert [r["layers_executed"] for r in rows] == out["layers_executed"].tolist()
    assert {r["num_layers"] for r in rows} == {model.num_layers}
    # Without label names the label is the class index.
    rows = prediction.predict_texts(model, preprocessor, texts[:1])
    assert rows[0]["label"] == int(out["predictions"][0])


def test_predict_texts_pairs_must_match_the_texts():
    model = make_model(seed=3)
    preprocessor = backbones.make_preprocessor(small_tokenizer(), sequence_length=16)
    with pytest.raises(ValueError, match="2 texts but 1 second sentences"):
        prediction.predict_texts(model, preprocessor, ["a", "b"], ["c"])
    assert prediction.predict_texts(model, preprocessor, []) == []
