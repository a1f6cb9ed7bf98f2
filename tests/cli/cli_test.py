"""End-to-end tests of the `dact-tf` command line (subprocesses, tiny model)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dact_tf.data import builtin_sst2_dir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [
    "--backbone=tiny", "--sequence_length=16", "--max_train_examples=64",
    "--max_eval_examples=48", "--batch_size=16", "--epochs=1", "--learning_rate=1e-3",
]


def dact_tf(*args, cache, check=True):
    env = dict(os.environ, DACT_TF_CACHE=str(cache), PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "dact_tf", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dact-tf {args} failed:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = root / "model"
    dact_tf("train", "--task=sst2", f"--data_dir={builtin_sst2_dir()}",
            f"--model_dir={model_dir}", "--tau=0.01", *TINY, cache=root / "cache")
    return root, model_dir


def test_train_writes_a_complete_model_dir(trained):
    _, model_dir = trained
    for name in ("model.keras", "vocab.txt", "dact_config.json", "ponder.csv",
                 "history.csv", "checkpoints/epoch_01.weights.h5", "tensorboard"):
        assert (model_dir / name).exists(), name
    config = json.loads((model_dir / "dact_config.json").read_text())
    assert config["label_names"] == ["negative", "positive"]
    assert config["data"]["sequence_length"] == 16


def test_evaluate_and_predict(trained):
    root, model_dir = trained
    out_json = root / "eval.json"
    proc = dact_tf("evaluate", f"--model_dir={model_dir}", f"--output_json={out_json}",
                   "--per_block", cache=root / "cache")
    results = json.loads(out_json.read_text())
    assert results["num_examples"] == 48 and results["num_layers"] == 4
    # --per_block: one row per block, the same exits as the early-exit loop.
    blocks = results["per_block"]["blocks"]
    assert [b["exits"] for b in blocks] == results["layers_histogram"]
    assert blocks[-1]["accumulated"]["accuracy"] >= 0.0
    assert "| block | head accuracy | a_n accuracy |" in proc.stdout
    assert results["method"] == "dact"
    assert sum(results["layers_histogram"]) == 48
    assert results["mean_layers_executed"] >= 1.0
    assert results["mean_layers_executed"] <= 4.0
    assert 0.0 <= results["accuracy"] <= 1.0
    # The relaxed rule overrides the trained one: with epsilon 1 every example
    # stops after block 1 (its budget p_1 = h_1 < 1).
    dact_tf("evaluate", f"--model_dir={model_dir}", f"--output_json={out_json}",
            "--halting_rule=relaxed", "--halting_epsilon=1.0", cache=root / "cache")
    assert json.loads(out_json.read_text())["mean_layers_executed"] == 1.0
    proc = dact_tf("predict", f"--model_dir={model_dir}", "--text=a gripping , funny film .",
                   cache=root / "cache")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["label"] in ("negative", "positive")
    assert 0.5 <= row["probability"] <= 1.0 and 1 <= row["layers_executed"] <= 4
    lines = root / "lines.txt"
    lines.write_text("good movie\nterrible , boring mess\n")
    proc = dact_tf("predict", f"--model_dir={model_dir}", f"--input_file={lines}",
                   cache=root / "cache")
    from_file = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert len(from_file) == 2
    # --text repeated: one answer per text, in order (not only the last one).
    proc = dact_tf("predict", f"--model_dir={model_dir}", "--text=good movie",
                   "--text=terrible , boring mess", cache=root / "cache")
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [r["text"] for r in rows] == ["good movie", "terrible , boring mess"]
    assert [r["label"] for r in rows] == [r["label"] for r in from_file]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--task=nope", "--model_dir={root}/x"], "Unknown GLUE task 'nope'"),
        (["evaluate", "--model_dir={root}/missing"], "not a dact_tf model directory"),
        (["evaluate", "--model_dir={model_dir}", "--recipe=paper"],
         "--recipe is not a flag of evaluate"),
        (["train", "--task=tsv", "--train_file={root}/bad.tsv", "--eval_file={root}/bad.tsv",
          "--header=false", "--model_dir={root}/y", "--backbone=tiny"], "bad.tsv:2"),
        (["predict", "--model_dir={model_dir}", "--text= "], "--text is empty"),
        (["predict", "--model_dir={model_dir}", "--input_file={root}/empty.txt"], "empty"),
        (["predict", "--model_dir={model_dir}", "--input_file={root}/blank.txt"],
         "blank.txt:2: empty line"),
        (["predict", "--model_dir={model_dir}", "--input_file={root}/tab.txt"],
         "tab.txt:1: this model reads single sentences"),
        (["predict", "--model_dir={model_dir}", "--input_file={root}/latin1.txt"],
         "latin1.txt:2: not UTF-8"),
        (["predict", "--model_dir={model_dir}", "--input_file={root}"], "is a directory"),
        (["predict", "--model_dir={model_dir}", "--text=fine", "--input_file={root}/blank.txt"],
         "not both"),
        (["predict", "--model_dir={model_dir}", "--text="], "--text is empty"),
        (["predict", "--model_dir={model_dir}"], "needs --text or --input_file"),
        (["train", "--task=sst2", "--data_dir={root}/nodata", "--model_dir={root}/z",
          "--backbone=tiny"], "nodata"),
        (["train", "--task=sst2", "--data_dir={root}/nodata", "--model_dir={root}/w",
          "--calibration_file="], "--calibration_file is empty"),
        (["train", "--task=sst2", "--model_dir={root}/v", "--calibration_file={root}/bad.tsv",
          "--target_blocks=0"], "this run certifies nothing"),
        (["frobnicate"], "Usage: dact-tf"),
    ],
)
def test_user_errors_exit_1_with_one_clear_message(trained, args, message):
    root, model_dir = trained
    (root / "bad.tsv").write_text("fine sentence\t0\nbroken line without a label\n")
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("a fine film\n\nanother one\n")
    (root / "tab.txt").write_text("a fine film\tand a second\n")
    (root / "latin1.txt").write_bytes("fine\ncaf\u00e9 cr\u00e8me\n".encode("latin-1"))
    args = [a.format(root=root, model_dir=model_dir) for a in args]
    proc = dact_tf(*args, cache=root / "cache", check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 or args[0] != "predict", proc.stderr


def test_model_dir_of_another_run_is_refused(trained):
    root, model_dir = trained
    proc = dact_tf("train", "--task=sst2", f"--data_dir={builtin_sst2_dir()}",
                   f"--model_dir={model_dir}", "--tau=0.5", *TINY,
                   cache=root / "cache", check=False)
    assert proc.returncode == 1
    assert "different run" in proc.stderr


@pytest.mark.large  # a whole CLI chain: CI runs it (make test-large)
def test_killed_training_resumes_where_it_stopped(tmp_path):
    import signal
    import time

    model_dir = tmp_path / "model"
    args = [sys.executable, "-m", "dact_tf", "train", "--task=sst2",
            f"--data_dir={builtin_sst2_dir()}", f"--model_dir={model_dir}",
            "--backbone=tiny", "--max_seq_length=16", "--max_train_examples=128",  # the flag's earlier name
            "--max_eval_examples=32", "--batch_size=16", "--epochs=3"]
    env = dict(os.environ, DACT_TF_CACHE=str(tmp_path / "cache"), PYTHONPATH=REPO)
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    history = model_dir / "history.csv"

    def epochs_logged():
        return history.read_text().count("\n") - 1 if history.exists() else 0

    # Generous: alone this takes about 170 s (stage 1, then epoch 0 of stage 2), and a
    # loaded 2-worker test run has taken more than 240 s.
    deadline = time.time() + 600
    # Kill once epoch 0 is logged (its backup may not be written yet: the resumed run then
    # drops the row and trains the rest of epoch 0 again from its last backup).
    while epochs_logged() < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert epochs_logged() >= 1, "epoch 0 did not finish before the deadline"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (model_dir / "model.keras").exists()  # it really was interrupted
    proc = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (model_dir / "model.keras").exists()
    # history.csv is appended across runs: epoch 0 is not trained twice.
    epochs = [line.split(",")[0] for line in
              (model_dir / "history.csv").read_text().splitlines()[1:]]
    assert epochs.count("0") == 1 and epochs[-1] == "2", epochs


@pytest.mark.large  # a whole CLI chain: CI runs it (make test-large)
def test_baseline_methods_train_evaluate_and_override_the_exit_knob(tmp_path):
    cache = tmp_path / "cache"
    data = [f"--data_dir={builtin_sst2_dir()}", "--task=sst2"]
    pabee = tmp_path / "pabee"
    dact_tf("train", *data, f"--model_dir={pabee}", "--method=pabee", "--patience=3", *TINY,
            cache=cache)
    config = json.loads((pabee / "dact_config.json").read_text())
    assert config["method"] == "pabee" and config["model"]["patience"] == 3
    means = []
    for patience in (1, 3):
        out = tmp_path / f"p{patience}.json"
        dact_tf("evaluate", f"--model_dir={pabee}", f"--patience={patience}",
                f"--output_json={out}", cache=cache)
        results = json.loads(out.read_text())
        assert results["method"] == "pabee" and results["patience"] == patience
        # PABEE with patience p runs at least p + 1 blocks (or all 4).
        assert results["mean_layers_executed"] >= min(patience + 1, 4)
        means.append(results["mean_layers_executed"])
    assert means[0] <= means[1]
    # DeeBERT: two stages, the first one saved for resuming.
    deebert = tmp_path / "deebert"
    dact_tf("train", *data, f"--model_dir={deebert}", "--method=deebert", *TINY, cache=cache)
    assert (deebert / "deebert_stage1.weights.h5").exists()
    assert (deebert / "checkpoints" / "epoch_stage2_01.weights.h5").exists()
    # Static truncation keeps k blocks.
    static = tmp_path / "static"
    dact_tf("train", *data, f"--model_dir={static}", "--method=static", "--num_layers=2",
            *TINY, cache=cache)
    proc = dact_tf("predict", f"--model_dir={static}", "--text=fine", cache=cache)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["layers_executed"] == 2
    # Resuming a model dir with another method is refused.
    proc = dact_tf("train", *data, f"--model_dir={static}", "--method=pabee", *TINY,
                   cache=cache, check=False)
    assert proc.returncode == 1 and "different run" in proc.stderr


@pytest.mark.parametrize("change, message", [
    ({"method": "earlyexit9000"}, "does not know"),
    ({"dact_tf_version": "99.0.0"}, "newer than this dact_tf"),
])
def test_model_dir_from_an_unknown_method_or_newer_version(trained, tmp_path, change, message):
    import shutil

    root, model_dir = trained
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "dact_config.json").read_text())
    config.update(change)
    (copy / "dact_config.json").write_text(json.dumps(config))
    proc = dact_tf("evaluate", f"--model_dir={copy}", cache=root / "cache", check=False)
    assert proc.returncode == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_warm_start_from_another_model(trained, tmp_path):
    root, _ = trained
    # A source whose halting units do not read their confidence.
    model_dir = tmp_path / "source"
    dact_tf("train", "--task=sst2", f"--data_dir={builtin_sst2_dir()}", f"--model_dir={model_dir}",
            "--halting_confidence=0", "--full_depth_stage=false", *TINY, cache=root / "cache")
    warm = tmp_path / "warm"
    dact_tf("train", "--task=sst2", f"--data_dir={builtin_sst2_dir()}", f"--model_dir={warm}",
            f"--init_from={model_dir}", "--tau=0.02", "--head_loss_weight=0.5",
            "--halting_confidence=-2", "--target_blocks=0", *TINY[:-1], "--learning_rate=0",
            cache=root / "cache")
    # Learning rate 0: the warm-started model is the source model, plus the
    # confidence weights of its halting units (the source has none) at -2.
    import keras

    source = keras.models.load_model(model_dir / "model.keras")
    target = keras.models.load_model(warm / "model.keras")
    extra = {v.path: v.numpy() for v in target.trainable_weights}
    for v in source.trainable_weights:
        np.testing.assert_array_equal(v.numpy(), extra.pop(v.path))
    assert list(extra) == [target.encoder.heads.confidence_weight.path]
    np.testing.assert_array_equal(target.encoder.heads.confidence_weight.numpy(), [-2.0] * 4)
    assert target.head_loss_weight == 0.5  # this run's setting, not the source's
    # --freeze_backbone trains the heads only.
    frozen = tmp_path / "frozen"
    dact_tf("train", "--task=sst2", f"--data_dir={builtin_sst2_dir()}", f"--model_dir={frozen}",
            f"--init_from={model_dir}", "--freeze_backbone", *TINY[:-1],
            "--learning_rate=1e-2", cache=root / "cache")
    heads = keras.models.load_model(frozen / "model.keras")
    for a, b in zip(source.backbone.weights, heads.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    moved = np.abs(heads.encoder.heads.answer_kernel.numpy()
                   - source.encoder.heads.answer_kernel.numpy()).max()
    assert moved > 1e-4
    proc = dact_tf("train", "--task=sst2", f"--data_dir={builtin_sst2_dir()}",
                   f"--model_dir={tmp_path / 'bad'}", f"--init_from={tmp_path / 'nothing'}",
                   *TINY, cache=root / "cache", check=False)
    assert proc.returncode == 1 and "does not exist" in proc.stderr


def test_a_truncated_init_from_ends_in_one_line_naming_it(trained, tmp_path):
    root, model_dir = trained
    data = (model_dir / "model.keras").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "model.keras").write_bytes(data[: len(data) // 2])
    proc = dact_tf("train", "--task=sst2", f"--data_dir={builtin_sst2_dir()}",
                   f"--model_dir={tmp_path / 'warm'}", f"--init_from={tmp_path / 'cut'}",
                   "--full_depth_stage=false", *TINY, cache=root / "cache", check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"--init_from {tmp_path / 'cut' / 'model.keras'} is not a readable" in proc.stderr


def test_an_older_or_hand_edited_config_is_read_or_named(trained, tmp_path):
    import shutil

    root, model_dir = trained
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    config = json.loads((old / "dact_config.json").read_text())
    # What a config of the first dact_tf lacked: the defaults stand in.
    for section, key in (("data", "padding"), ("data", "holdout_fraction"),
                         ("data", "max_holdout_examples"), ("model", "target_blocks")):
        del config[section][key]
    # ...and the sequence length under its earlier name.
    config["data"]["max_seq_length"] = config["data"].pop("sequence_length")
    (old / "dact_config.json").write_text(json.dumps(config))
    proc = dact_tf("predict", f"--model_dir={old}", "--text=a fine film", cache=root / "cache")
    assert json.loads(proc.stdout.strip().splitlines()[-1])["label"] in ("negative", "positive")
    # A key every version writes, removed or of the wrong type: one line naming it.
    for edit, key in ((lambda c: c["data"].pop("max_seq_length"), "data.sequence_length"),
                      (lambda c: c.update(label_names="negative"), "label_names")):
        edited = json.loads(json.dumps(config))
        edit(edited)
        (old / "dact_config.json").write_text(json.dumps(edited))
        proc = dact_tf("evaluate", f"--model_dir={old}", cache=root / "cache", check=False)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert str(old / "dact_config.json") in proc.stderr and repr(key) in proc.stderr


def test_help_lists_the_commands_and_each_commands_own_flags(tmp_path):
    top = dact_tf("--help", cache=tmp_path)
    assert top.returncode == 0
    for command in ("train", "evaluate", "predict", "export"):
        assert f"  {command} " in top.stdout
    train = dact_tf("train", "--help", cache=tmp_path)
    assert train.returncode == 0
    for text in ("Data:", "Model:", "Training:", "--target_blocks", "--learning_rate (default: '5e-05')"):
        assert text in train.stdout
    export = dact_tf("export", "--help", cache=tmp_path)
    assert "--export_dir" in export.stdout and "--learning_rate" not in export.stdout
    # --helpshort (absl suggests it after a misspelled flag) gives the same page.
    short = dact_tf("export", "--helpshort", cache=tmp_path)
    assert short.returncode == 0 and short.stdout == export.stdout
    bare = dact_tf(cache=tmp_path, check=False)
    assert bare.returncode == 1 and "Commands:" in bare.stdout


def test_a_quiet_run_prints_no_tensorflow_noise_and_plots_the_model(trained):
    root, model_dir = trained
    plot_dir = root / "plots"
    proc = dact_tf("evaluate", f"--model_dir={model_dir}", f"--plot_dir={plot_dir}",
                   cache=root / "cache")
    results = json.loads(proc.stdout)  # stdout is the JSON alone
    lines = proc.stderr.splitlines()
    # Progress lines and the plots' folder only: no start-up or device logs.
    assert len(lines) <= 4, proc.stderr
    assert not [line for line in lines if "cuInit" in line or "oneDNN" in line
                or line.startswith(("I0000", "W0000", "E0000", "WARNING: All log"))]
    assert any(line.startswith("Predicting: ") for line in lines)
    for name in ("accuracy_vs_blocks.png", "exit_histogram.png", "per_block.csv",
                 "exit_curve.csv"):
        assert (plot_dir / name).exists(), name
    assert results["plots"]["plot"].endswith("accuracy_vs_blocks.png")
    # --verbosity brings TensorFlow's own logs back.
    loud = dact_tf("evaluate", f"--model_dir={model_dir}", "--verbosity=0",
                   cache=root / "cache")
    assert len(loud.stderr.splitlines()) > len(lines)


def test_export_without_text_signatures_runs_in_saved_model_cli(trained):
    """The README's `saved_model_cli run` command works as written."""
    root, model_dir = trained
    export_dir = root / "plain_export"
    dact_tf("export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
            "--notext_signatures", cache=root / "cache")
    version = export_dir / "1"
    assert (version / "assets.extra" / "vocab.txt").exists()
    graph = (version / "saved_model.pb").read_bytes()
    for op in (b"RegexSplitWithOffsets", b"FastWordpieceTokenizeWithOffsets", b"CaseFoldUTF8"):
        assert op not in graph
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    run = subprocess.run(
        [cli, "run", "--dir", str(version), "--tag_set", "serve",
         "--signature_def", "serving_default", "--input_exprs",
         "token_ids=[[2, 30, 3]];padding_mask=[[1, 1, 1]];segment_ids=[[0, 0, 0]]"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Result for output key layers_executed" in run.stdout
    assert "Result for output key predictions" in run.stdout


def test_paths_stored_in_a_model_dir_are_not_opened_unless_given_again(trained, tmp_path):
    """A crafted dact_config.json cannot make evaluate read (and print) other files."""
    import shutil

    root, model_dir = trained
    crafted = tmp_path / "crafted"
    shutil.copytree(model_dir, crafted)
    secret = tmp_path / "secret.tsv"
    secret.write_text("sentence\tlabel\nTOP SECRET LINE\tnot-a-label\n")
    config = json.loads((crafted / "dact_config.json").read_text())
    config["data"].update(task="tsv", eval_file=str(secret), train_file=str(secret))
    (crafted / "dact_config.json").write_text(json.dumps(config))
    proc = dact_tf("evaluate", f"--model_dir={crafted}", cache=root / "cache", check=False)
    assert proc.returncode == 1
    assert "--eval_file" in proc.stderr and "TOP SECRET" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("damage, message", [
    ("truncate", "not a readable dact_tf model"),
    ("other_kind", "does not belong to its directory"),
])
def test_a_damaged_or_foreign_model_file_is_refused(trained, tmp_path, damage, message):
    import shutil

    root, model_dir = trained
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    if damage == "truncate":
        data = (copy / "model.keras").read_bytes()
        (copy / "model.keras").write_bytes(data[: len(data) // 2])
    else:  # the directory says 2 labels; give it a 3-class model file
        config = json.loads((copy / "dact_config.json").read_text())
        config["label_names"] = ["a", "b", "c"]
        (copy / "dact_config.json").write_text(json.dumps(config))
    proc = dact_tf("evaluate", f"--model_dir={copy}", cache=root / "cache", check=False)
    assert proc.returncode == 1, proc.stdout
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_file_system_mistakes_end_in_one_line(trained, tmp_path):
    root, model_dir = trained
    existing = tmp_path / "exports"
    dact_tf("export", f"--model_dir={model_dir}", f"--export_dir={existing}", "--version=3",
            "--notext_signatures", cache=root / "cache")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for args in (["export", f"--model_dir={model_dir}", f"--export_dir={existing}",
                  "--version=3", "--notext_signatures"],
                 ["export", f"--model_dir={model_dir}", f"--export_dir={a_file}",
                  "--notext_signatures"]):
        proc = dact_tf(*args, cache=root / "cache", check=False)
        assert proc.returncode == 1, args
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr


def test_predict_refuses_a_second_sentence_for_a_single_sentence_model(trained, tmp_path):
    root, model_dir = trained
    lines = tmp_path / "lines.txt"
    lines.write_text("a fine film\tand a second sentence\n")
    for args in (["--text=a fine film", "--text_pair=another"], [f"--input_file={lines}"]):
        proc = dact_tf("predict", f"--model_dir={model_dir}", *args, cache=root / "cache",
                       check=False)
        assert proc.returncode == 1 and "single sentences" in proc.stderr, proc.stderr
        assert proc.stdout == ""


def test_tflite_exports_are_named_after_the_model_and_never_overwrite(trained, tmp_path):
    root, model_dir = trained
    out = tmp_path / "mobile"
    dact_tf("export", f"--model_dir={model_dir}", f"--export_dir={out}", "--format=tflite",
            cache=root / "cache")
    name = model_dir.name
    assert sorted(os.listdir(out)) == [f"{name}_none.json", f"{name}_none.tflite",
                                       f"{name}_vocab.txt"]
    sidecar = json.loads((out / f"{name}_none.json").read_text())
    assert sidecar["method"] == "dact" and sidecar["exit"]["halting_rule"] == "tight"
    again = dact_tf("export", f"--model_dir={model_dir}", f"--export_dir={out}",
                    "--format=tflite", cache=root / "cache", check=False)
    assert again.returncode == 1 and "never overwrite" in again.stderr
    # A second variant of the same model goes beside it, sharing the vocabulary.
    dact_tf("export", f"--model_dir={model_dir}", f"--export_dir={out}", "--format=tflite",
            "--quantize=dynamic", cache=root / "cache")
    assert sorted(os.listdir(out)) == sorted([
        f"{name}_none.json", f"{name}_none.tflite", f"{name}_dynamic.json",
        f"{name}_dynamic.tflite", f"{name}_vocab.txt"])


def test_exit_flags_that_would_be_ignored_or_wrap_are_refused(trained):
    root, model_dir = trained
    for args, message in (
            (["--halting_epsilon=0.5"], "--halting_epsilon is the relaxed rule's"),
            (["--halting_rule=paper", "--halting_epsilon=0.5"], "needs --halting_rule=relaxed"),
            (["--max_layers=4294967297"], "above the model's 4 blocks"),
            (["--max_layers=5"], "above the model's 4 blocks"),
            (["--max_layers=\u00b2"], "integers >= 1"),
            (["--halting_rule=certified"], "no certified halting")):
        proc = dact_tf("evaluate", f"--model_dir={model_dir}", *args, cache=root / "cache",
                       check=False)
        assert proc.returncode == 1, args
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (
            args, proc.stderr)


def test_a_missing_file_is_named_and_a_failed_run_leaves_no_empty_folders(tmp_path):
    model_dir = tmp_path / "never"
    proc = dact_tf("train", "--task=tsv", f"--train_file={tmp_path}/missing.tsv",
                   f"--eval_file={tmp_path}/missing.tsv", f"--model_dir={model_dir}",
                   *TINY, cache=tmp_path / "cache", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"dact-tf train: error: {tmp_path}/missing.tsv: "
                                   "no such file or directory."), proc.stderr
    assert not model_dir.exists()  # not even an empty stage1/
