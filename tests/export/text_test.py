"""Text signatures: in-graph tokenization and packing."""

import textwrap

import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from dact_tf.export.text import TextPacker
from tests.export.conftest import MAX_LEN
from tests.export.conftest import random_sentences
from tests.export.conftest import run_fresh_python
from tests.export.conftest import small_tokenizer


def _reference(tokenizer, segments, sequence_length, truncate):
    """keras-hub's preprocessor, cut to the longest row like TextPacker."""
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length, truncate=truncate
    )
    x = preprocessor(x=tuple(tf.constant(s) for s in segments))
    mask = x["padding_mask"].numpy().astype("int32")
    width = mask.sum(axis=1).max()
    return {
        "token_ids": x["token_ids"].numpy()[:, :width],
        "padding_mask": mask[:, :width],
        "segment_ids": x["segment_ids"].numpy()[:, :width],
    }


@pytest.mark.parametrize("truncate", ["round_robin", "waterfall"])
@pytest.mark.parametrize("num_segments", [1, 2])
def test_packer_matches_keras_hub_preprocessor(truncate, num_segments):
    tokenizer = small_tokenizer()
    segments = [random_sentences(24, seed=s, max_words=12) for s in range(num_segments)]
    segments[0][:3] = ["", "the", "zebra zebra zebra zebra zebra"]
    for length in (5, MAX_LEN):
        packer = TextPacker(tokenizer, length, truncate)
        got = packer(tuple(tf.constant(s) for s in segments))
        want = _reference(tokenizer, segments, length, truncate)
        for key in want:
            np.testing.assert_array_equal(got[key].numpy(), want[key], err_msg=key)


def test_packer_arguments():
    with pytest.raises(ValueError, match="truncate"):
        TextPacker(small_tokenizer(), 8, truncate="longest_first")
    with pytest.raises(ValueError, match="sequence_length"):
        TextPacker(small_tokenizer(), 2)


def test_text_export_needs_no_trimmer_op(text_export):
    """Only the tokenizer's TF Text ops remain (TF Serving lacks RoundRobinTrim)."""
    proto = saved_model_pb2.SavedModel()
    with open(f"{text_export}/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node}
    for function in graph.library.function:
        ops |= {n.op for n in function.node_def}
    not_core = sorted(op for op in ops if not hasattr(tf.raw_ops, op))
    # The tokenizer's (CaseFoldUTF8: it lowercases); no TFText>*Trim op.
    assert not_core == [
        "CaseFoldUTF8",
        "FastWordpieceTokenizeWithOffsets",
        "RegexSplitWithOffsets",
    ]


FRESH_TEXT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer's ops)

    export_dir, texts_path, out_path = sys.argv[1:4]
    texts = dict(np.load(texts_path))
    loaded = tf.saved_model.load(export_dir)
    one = loaded.signatures["serve_text"](text=tf.constant(texts["a"]))
    two = loaded.signatures["serve_text_pair"](
        text_a=tf.constant(texts["a"]), text_b=tf.constant(texts["b"]))
    results = {"one/" + k: v.numpy() for k, v in one.items()}
    results.update({"two/" + k: v.numpy() for k, v in two.items()})
    np.savez(out_path, **results)
    print(json.dumps({
        "signatures": sorted(loaded.signatures),
        "text_input": {
            n: [s.dtype.name, s.shape.as_list()] for n, s in
            loaded.signatures["serve_text"].structured_input_signature[1].items()},
        "modules": sorted(m for m in sys.modules
                          if m.split(".")[0] in ("dact_tf", "keras_hub")),
    }))
    """
)


def test_serve_text_matches_python_tokenization(text_export, classifier, tmp_path):
    a = random_sentences(48, seed=10)
    b = random_sentences(48, seed=11)
    np.savez(tmp_path / "texts.npz", a=np.array(a), b=np.array(b))
    script = tmp_path / "fresh_text.py"
    script.write_text(FRESH_TEXT)
    info = run_fresh_python(
        str(script), text_export, tmp_path / "texts.npz", tmp_path / "out.npz"
    )
    assert info["modules"] == []
    assert info["text_input"] == {"text": ["string", [None]]}
    out = dict(np.load(tmp_path / "out.npz"))
    tokenizer = small_tokenizer()
    for name, segments in (("one", (a,)), ("two", (a, b))):
        # Python side: keras-hub's preprocessor (padded to MAX_LEN), model.
        preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
            tokenizer, sequence_length=MAX_LEN
        )
        features = preprocessor(x=tuple(tf.constant(s) for s in segments))
        expected = classifier(features)
        np.testing.assert_array_equal(
            out[f"{name}/predictions"], expected["predictions"].numpy()
        )
        np.testing.assert_array_equal(
            out[f"{name}/layers_executed"], expected["layers_executed"].numpy()
        )
        np.testing.assert_allclose(
            out[f"{name}/probabilities"], expected["probabilities"].numpy(), atol=1e-5
        )
