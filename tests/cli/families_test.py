"""A second encoder family end to end through the command line: DistilBERT.

The DistilBERT family is one module (`dact_tf/models/families/distil_bert.py`);
nothing else in dact_tf names it. `train`, `evaluate`, `predict` and both
exports run on it as on BERT, and the exported text signature, loaded in a
fresh TensorFlow-only process, answers as `predict` does.
"""

import json
import textwrap

import pytest

from dact_tf.data import builtin_sst2_dir
from tests.cli.cli_test import TINY
from tests.cli.cli_test import dact_tf
from tests.export.conftest import run_fresh_python

SENTENCES = ["a fine , funny film .", "a dull and tedious mess .", "the plot is thin ."]

FRESH = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer's ops)
    loaded = tf.saved_model.load(sys.argv[1])
    texts = json.loads(sys.argv[2])
    early = loaded.signatures["serve_text"](text=tf.constant(texts))
    print(json.dumps({
        "inputs": sorted(loaded.signatures["serving_default"].structured_input_signature[1]),
        "probabilities": early["probabilities"].numpy().tolist(),
        "layers_executed": early["layers_executed"].numpy().tolist(),
    }))
    """)


# BERT's chain (`tiny`) runs the same commands in tests/cli/cli_test.py and
# tests/docs/readme_test.py; here the second family, through the same code.
@pytest.mark.large  # a whole CLI chain: CI runs it (make test-large)
@pytest.mark.parametrize("backbone,inputs", [
    ("tiny_distil_bert", ["padding_mask", "token_ids"]),  # no segments
])
def test_a_family_trains_evaluates_predicts_and_exports(tmp_path, backbone, inputs):
    cache, model_dir = tmp_path / "cache", tmp_path / "model"
    flags = [f if not f.startswith("--backbone=") else f"--backbone={backbone}" for f in TINY]
    dact_tf("train", "--task=sst2", f"--data_dir={builtin_sst2_dir()}",
            f"--model_dir={model_dir}", "--tau=0.01", *flags, cache=cache)
    config = json.loads((model_dir / "dact_config.json").read_text())
    assert config["model"]["backbone"] == backbone

    results = tmp_path / "eval.json"
    dact_tf("evaluate", f"--model_dir={model_dir}", f"--data_dir={builtin_sst2_dir()}",
            f"--output_json={results}", cache=cache)
    evaluation = json.loads(results.read_text())
    assert evaluation["num_layers"] == 4 and evaluation["num_examples"] == 48
    assert evaluation["full_depth_disagreement"] == 0.0  # the exact rule: as full depth

    proc = dact_tf("predict", f"--model_dir={model_dir}",
                   *[f"--text={t}" for t in SENTENCES], cache=cache)
    predicted = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [p["text"] for p in predicted] == SENTENCES

    dact_tf("export", f"--model_dir={model_dir}", f"--export_dir={tmp_path / 'serving'}",
            cache=cache)
    served = run_fresh_python(_script(tmp_path), tmp_path / "serving" / "1",
                              json.dumps(SENTENCES))
    assert served["inputs"] == inputs
    for row, p in zip(served["probabilities"], predicted):
        assert max(row) == pytest.approx(p["probability"], abs=1e-5)
    assert served["layers_executed"] == [p["layers_executed"] for p in predicted]

    dact_tf("export", f"--model_dir={model_dir}", "--format=tflite",
            f"--export_dir={tmp_path / 'mobile'}", cache=cache)
    assert (tmp_path / "mobile" / "model_none.tflite").stat().st_size > 0


def _script(folder):
    script = folder / "fresh_text.py"
    script.write_text(FRESH)
    return script
