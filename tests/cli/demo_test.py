"""The demo's figures equal what `dact-tf evaluate` prints for its saved model."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, cache):
    env = dict(os.environ, DACT_TF_CACHE=str(cache), PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.large  # a whole CLI chain: CI runs it (make test-large)
def test_demo_reports_what_evaluate_reports_and_a_rerun_does_not_retrain(tmp_path):
    model_dir = tmp_path / "demo"
    demo = ["-m", "examples.demo", f"--model_dir={model_dir}", "--backbone=tiny",
            "--epochs=1", "--max_train_examples=96", "--max_eval_examples=64",
            "--batch1_examples=4", "--sequence_length=16"]
    first = _run(demo, tmp_path / "cache")
    assert "Training DACT" in first.stdout
    demo_results = json.loads((model_dir / "demo_results.json").read_text())
    assert (model_dir / "plots" / "accuracy_vs_blocks.png").exists()
    assert "I0000" not in first.stderr and "cuInit" not in first.stderr
    evaluated = json.loads(_run(["-m", "dact_tf", "evaluate", f"--model_dir={model_dir}"],
                                tmp_path / "cache").stdout)
    for key in ("accuracy", "mean_layers_executed", "layers_histogram", "num_examples"):
        assert evaluated[key] == demo_results[key], key
    mtime = os.path.getmtime(model_dir / "model.keras")
    second = _run(demo, tmp_path / "cache")
    assert "holds a finished model" in second.stdout
    assert os.path.getmtime(model_dir / "model.keras") == mtime
