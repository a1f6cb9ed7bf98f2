"""End-to-end tests of `dact-tf calibrate` and the certificates it saves (subprocesses, tiny model).

One tiny DACT model is trained once per test run (pytest-xdist workers share it
under a file lock); every test calibrates, evaluates or exports its own copy.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys

import pytest

from dact_tf.calibration import risk_bounds
from dact_tf.data import builtin_sst2_dir
from tests.cli.cli_test import dact_tf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = [f"--data_dir={builtin_sst2_dir()}"]
# 400 training rows, half of them held out (200), 60 % of those kept apart as calibration
# rows (120). --target_blocks=0: training itself calibrates nothing, so every certificate
# below comes from `dact-tf calibrate`.
TRAIN = [
    "--task=sst2", *DATA, "--backbone=tiny", "--sequence_length=16",
    "--max_train_examples=400", "--holdout_fraction=0.5", "--max_eval_examples=48",
    "--batch_size=16", "--epochs=1", "--learning_rate=1e-3", "--tau=0.01",
    "--target_blocks=0", "--keep_checkpoints=0",
]
CALIBRATION_ROWS = 120
EVAL_ROWS = 48


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`(root, model_dir)`: a tiny DACT model dir (with its stage 1), never calibrated.

    Read-only: tests work on copies. Under pytest-xdist the workers share one
    training (the base temp folder's parent is common to them).
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    root = base / "calibrate_test"
    root.mkdir(exist_ok=True)
    model_dir = root / "model"
    with open(root / "train.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (model_dir / "model.keras").exists():
            dact_tf("train", f"--model_dir={model_dir}", *TRAIN, cache=root / "cache")
    assert (model_dir / "stage1" / "model.keras").exists()
    assert not (model_dir / "calibration.json").exists()
    return root, model_dir


def _copy(trained, tmp_path, name="model"):
    root, model_dir = trained
    copy = tmp_path / name
    shutil.copytree(model_dir, copy)
    return root / "cache", copy


def _calibration_rows(model_dir):
    """The saved model of `model_dir`, its calibration rows, and their metric task."""
    from dact_tf.training import train_lib

    model, preprocessor, config = train_lib.load_model_dir(str(model_dir))
    data_config = train_lib.DataConfig(**config["data"])
    _, _, _, metric_task = train_lib.task_info(data_config, config["label_names"])
    rows = train_lib.make_datasets(data_config, preprocessor, config["label_names"],
                                   splits=("calibration",))["calibration"]
    return model, rows, metric_task


def test_calibrate_certifies_a_halting_mode_and_the_exports_carry_it(trained, tmp_path):
    from dact_tf.training import train_lib
    from dact_tf.export import metadata

    cache, model_dir = _copy(trained, tmp_path)
    out = tmp_path / "calibrate.json"
    dact_tf("calibrate", f"--model_dir={model_dir}", *DATA, "--halting_rule=certified",
            "--max_disagreement=0.3", "--calibration_confidence=0.9", f"--output_json={out}",
            cache=cache)
    result = json.loads((model_dir / "calibration.json").read_text())
    assert json.loads(out.read_text()) == result
    assert set(result) == {"halting"}  # no compute target was asked for
    halting = result["halting"]
    cert = halting["certificate"]
    # DACT's learned consistency score, fitted on the selection rows (kept apart from these).
    assert cert["kind"] == "halting" and cert["knob"] == halting["knob"] == "halting_threshold"
    assert cert["fit_rows"] > 0
    assert cert["rows"] == CALIBRATION_ROWS
    assert cert["calibration_rows"] == "kept apart"
    assert cert["epsilon"] == 0.3 and cert["confidence"] == pytest.approx(0.9)
    assert 0 <= cert["at_risk"] <= CALIBRATION_ROWS
    assert cert["observed_rate"] == pytest.approx(cert["at_risk"] / CALIBRATION_ROWS)
    assert cert["bound"] == pytest.approx(
        risk_bounds.upper_bound(cert["at_risk"], CALIBRATION_ROWS, 0.1), rel=1e-9, abs=1e-9)
    # Certified, and past the tight rule: the model now runs the certified rule.
    assert cert["certified"] is True and cert["bound"] <= 0.3
    assert cert["exact"] is False and 0.0 < halting["value"] < 1.0
    assert halting["mean_layers_executed"] >= 1.0 and halting["mean_layers_executed"] <= 4.0
    model, _, _ = train_lib.load_model_dir(str(model_dir))
    assert model.exit_criterion.halting_rule == "certified"
    assert model.exit_criterion.halting_threshold == pytest.approx(halting["value"])
    weights = list(model.exit_criterion.consistency_weights)
    assert len(weights) == 5 + 4
    assert model.certificates == {"halting": cert}
    exit_config = {"halting_rule": "certified", "halting_threshold": halting["value"],
                   "consistency_weights": weights}

    # evaluate checks the certificate against its own rows, and warns only on a contradiction.
    out = tmp_path / "eval.json"
    proc = dact_tf("evaluate", f"--model_dir={model_dir}", f"--output_json={out}", cache=cache)
    results = json.loads(out.read_text())
    check = results["certificate_check"]
    at_risk = round(results["full_depth_disagreement"] * EVAL_ROWS)
    assert check["measured"] == results["full_depth_disagreement"]
    assert check["rows"] == EVAL_ROWS and check["epsilon"] == 0.3
    assert check["lower_bound"] == pytest.approx(
        risk_bounds.lower_bound(at_risk, EVAL_ROWS, 0.1), rel=1e-9, abs=1e-12)
    assert check["contradicted"] == (check["lower_bound"] > 0.3)
    assert ("Warning: on these 48 rows" in proc.stderr) == check["contradicted"]

    # SavedModel: the metadata holds the exit rule and the certificates.
    exports = tmp_path / "serving"
    dact_tf("export", f"--model_dir={model_dir}", f"--export_dir={exports}",
            "--notext_signatures", cache=cache)
    meta = metadata.read_metadata(str(exports / "1"))
    assert meta["certificates"] == {"halting": cert}
    assert meta["halting_rule"] == "certified"
    assert {k: meta["exit"][k] for k in exit_config} == exit_config

    # TFLite: a .json beside the file. --halting_rule=certified is accepted: the model has it.
    mobile = tmp_path / "mobile"
    dact_tf("export", f"--model_dir={model_dir}", f"--export_dir={mobile}", "--format=tflite",
            "--halting_rule=certified", cache=cache)
    assert sorted(os.listdir(mobile)) == ["model_none.json", "model_none.tflite",
                                          "model_vocab.txt"]
    sidecar = json.loads((mobile / "model_none.json").read_text())
    assert sidecar["certificates"] == {"halting": cert}
    assert {k: sidecar["exit"][k] for k in exit_config} == exit_config
    assert sidecar["method"] == "dact" and sidecar["num_layers"] == 4
    assert sidecar["label_names"] == ["negative", "positive"]


def test_calibrate_to_a_compute_target_then_evaluate_reports_it(trained, tmp_path):
    from dact_tf.evaluation import scoring as evaluation
    from dact_tf.training import train_lib

    cache, model_dir = _copy(trained, tmp_path)
    dact_tf("calibrate", f"--model_dir={model_dir}", *DATA, "--target_blocks=2",
            "--calibration_max_drop=0.3", cache=cache)
    result = json.loads((model_dir / "calibration.json").read_text())
    assert "halting" not in result
    cert = result["certificate"]
    assert cert["kind"] == "compute_target" and cert["knob"] == "halting_bias_shift"
    # Measured against the run's stage 1 (model_dir/stage1), not the model's own depth.
    assert cert["reference"] == "the full-depth model"
    assert cert["rows"] == CALIBRATION_ROWS and cert["calibration_rows"] == "kept apart"
    assert cert["epsilon"] == 0.3 and cert["confidence"] == pytest.approx(0.95)
    assert cert["value"] == result["shift"]
    assert cert["at_risk"] + cert["better"] <= CALIBRATION_ROWS
    assert cert["bound"] == pytest.approx(risk_bounds.difference_upper_bound(
        cert["at_risk"], cert["better"], CALIBRATION_ROWS, 0.05), rel=1e-9, abs=1e-9)
    assert cert["certified"] == (cert["bound"] <= 0.3)
    assert result["target_blocks"] == 2.0 and 1.0 <= result["mean_layers_executed"] <= 4.0
    if not result["limited"]:  # the certificate let the shift reach the target's
        assert result["shift"] == result["selection_shift"]
        assert result["mean_layers_executed"] == result["target_shift_layers_executed"]

    # The saved model runs, on the calibration rows, the blocks and the accuracy reported.
    model, rows, metric_task = _calibration_rows(model_dir)
    assert model.certificates == {"compute_target": cert}
    assert model.exit_criterion.halting_rule == "tight"
    saved = evaluation.evaluate(model, rows, metric_task)
    assert saved["num_examples"] == CALIBRATION_ROWS
    assert saved["mean_layers_executed"] == pytest.approx(result["mean_layers_executed"],
                                                          abs=1e-6)
    assert saved["accuracy"] == pytest.approx(result["metric"], abs=1e-6)
    # ...and the reference metric is stage 1's, at full depth, on the same rows.
    stage1, _, _ = train_lib.load_model_dir(str(model_dir / "stage1"))
    reference = evaluation.evaluate(stage1, rows, metric_task)
    assert reference["mean_layers_executed"] == 4.0
    assert reference["accuracy"] == pytest.approx(result["reference_metric"], abs=1e-6)

    out = tmp_path / "eval.json"
    dact_tf("evaluate", f"--model_dir={model_dir}", f"--output_json={out}", cache=cache)
    results = json.loads(out.read_text())
    assert results["num_examples"] == EVAL_ROWS
    assert isinstance(results["full_depth_disagreement"], float)
    assert 0.0 <= results["full_depth_disagreement"] <= 1.0
    # The tight rule is proven equal to full depth: no row may differ.
    assert results["full_depth_disagreement"] == 0.0
    assert results["certificates"] == {"compute_target": cert}
    # An exit override is not the setting that was certified: no certificate is claimed for it.
    dact_tf("evaluate", f"--model_dir={model_dir}", f"--output_json={out}",
            "--halting_rule=relaxed", "--halting_epsilon=1.0", "--max_eval_examples=8",
            cache=cache)
    results = json.loads(out.read_text())
    assert results["halting_rule"] == "relaxed" and results["num_examples"] == 8
    assert "certificates" not in results


def test_calibrate_a_certified_drop_then_the_saved_model_runs_it(trained, tmp_path):
    from dact_tf.evaluation import scoring as evaluation

    cache, model_dir = _copy(trained, tmp_path)
    dact_tf("calibrate", f"--model_dir={model_dir}", *DATA, "--halting_rule=certified",
            "--certified_risk=drop", "--calibration_max_drop=0.3",
            "--calibration_confidence=0.9", cache=cache)
    result = json.loads((model_dir / "calibration.json").read_text())
    assert result["mode"] == "certified_drop" and "halting" not in result
    cert = result["certificate"]
    # One certificate, on the drop against the run's stage 1, both knobs in it.
    assert cert["kind"] == "compute_target"
    assert cert["knob"] == "halting_bias_shift+halting_threshold"
    assert cert["reference"] == "the full-depth model" and cert["fit_rows"] > 0
    assert cert["rows"] == CALIBRATION_ROWS and cert["calibration_rows"] == "kept apart"
    assert cert["bound"] == pytest.approx(risk_bounds.difference_upper_bound(
        cert["at_risk"], cert["better"], CALIBRATION_ROWS, 0.1), rel=1e-9, abs=1e-9)
    assert cert["certified"] == (cert["bound"] <= 0.3)
    assert (cert["value"], cert["shift"]) == (result["halting_threshold"], result["shift"])
    # The saved model runs, on the calibration rows, the blocks and the accuracy certified.
    model, rows, metric_task = _calibration_rows(model_dir)
    assert model.certificates == {"compute_target": cert}
    rule = model.exit_criterion.halting_rule
    assert rule == ("certified" if cert["certified"] and cert["value"] < 1.0 else "tight")
    saved = evaluation.evaluate(model, rows, metric_task)
    assert saved["mean_layers_executed"] == pytest.approx(result["mean_layers_executed"],
                                                          abs=1e-6)
    assert saved["accuracy"] == pytest.approx(result["metric"], abs=1e-6)
    out = tmp_path / "eval.json"
    dact_tf("evaluate", f"--model_dir={model_dir}", f"--output_json={out}", cache=cache)
    assert json.loads(out.read_text())["certificates"] == {"compute_target": cert}
    # A drop no rows can certify leaves the calibrated model directory as it was.
    before = _snapshot(model_dir)
    kept = dact_tf("calibrate", f"--model_dir={model_dir}", *DATA, "--halting_rule=certified",
                   "--certified_risk=drop", "--calibration_max_drop=0.001",
                   f"--output_json={tmp_path / 'kept.json'}", cache=cache)
    assert "No certified drop: the model keeps its previous calibration" in kept.stderr
    attempt = json.loads((tmp_path / "kept.json").read_text())
    assert attempt["kept"] and not attempt["certificate"]["certified"]
    assert attempt["mean_layers_executed"] == pytest.approx(saved["mean_layers_executed"],
                                                            abs=1e-6)
    assert _snapshot(model_dir) == before


def _head_of_dev(path, rows):
    """Writes the first `rows` rows of the bundled SST-2 dev file (GLUE format) to `path`."""
    with open(os.path.join(builtin_sst2_dir(), "dev.tsv"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    path.write_text("\n".join(lines[:rows + 1]) + "\n", encoding="utf-8")
    return path


def test_calibrate_on_a_calibration_file_certifies_on_its_rows(trained, tmp_path):
    import hashlib

    from dact_tf.evaluation import scoring as evaluation
    from dact_tf.training import train_lib

    cache, model_dir = _copy(trained, tmp_path)
    rows_file = _head_of_dev(tmp_path / "served.tsv", 90)
    # A target certified on the held-out rows first: the halting mode below keeps it.
    dact_tf("calibrate", f"--model_dir={model_dir}", *DATA, "--target_blocks=2",
            "--calibration_max_drop=0.3", cache=cache)
    dact_tf("calibrate", f"--model_dir={model_dir}", *DATA, f"--calibration_file={rows_file}",
            "--halting_rule=certified", "--max_disagreement=0.3",
            "--calibration_confidence=0.9", cache=cache)
    result = json.loads((model_dir / "calibration.json").read_text())
    cert, target = result["halting"]["certificate"], result["certificate"]
    assert target["rows"] == CALIBRATION_ROWS and target["calibration_rows"] == "kept apart"
    digest = hashlib.sha256(rows_file.read_bytes()).hexdigest()[:16]
    # The file's 90 rows, named in the certificate; every held-out row (200) fits the score.
    assert cert["rows"] == 90
    assert cert["calibration_rows"] == f"from served.tsv (sha256 {digest})"
    assert cert["fit_rows"] == 200
    assert cert["bound"] == pytest.approx(
        risk_bounds.upper_bound(cert["at_risk"], 90, 0.1), rel=1e-9, abs=1e-9)
    # The saved model, on the file's rows, differs from its full depth on `at_risk` rows.
    model, preprocessor, config = train_lib.load_model_dir(str(model_dir))
    assert model.certificates == {"compute_target": target, "halting": cert}
    data_config = train_lib.DataConfig(**{**config["data"], "calibration_file": str(rows_file)})
    rows = train_lib.make_datasets(data_config, preprocessor, config["label_names"],
                                   splits=("calibration",))["calibration"]
    saved = evaluation.evaluate(model, rows, "sst2", full_depth_disagreement=True)
    assert saved["num_examples"] == 90
    assert round(saved["full_depth_disagreement"] * 90) == cert["at_risk"]


def test_calibrate_on_the_long_calibration_rows_records_them(trained, tmp_path):
    import dataclasses

    from dact_tf.training import train_lib

    cache, model_dir = _copy(trained, tmp_path)
    model, every, _ = _calibration_rows(model_dir)
    lengths = sorted(int(n) for x, _ in every for n in x["padding_mask"].numpy().sum(axis=1))
    n = lengths[len(lengths) // 2]
    long = sum(length >= n for length in lengths)
    assert 0 < long < CALIBRATION_ROWS
    dact_tf("calibrate", f"--model_dir={model_dir}", *DATA, "--halting_rule=certified",
            "--max_disagreement=0.3", "--calibration_confidence=0.9",
            f"--calibration_min_tokens={n}", cache=cache)
    cert = json.loads((model_dir / "calibration.json").read_text())["halting"]["certificate"]
    assert cert["rows"] == long
    assert cert["calibration_rows"] == f"kept apart, the rows of at least {n} tokens"
    assert cert["bound"] == pytest.approx(
        risk_bounds.upper_bound(cert["at_risk"], long, 0.1), rel=1e-9, abs=1e-9)
    # The certified model, on exactly those rows, differs from its full depth on at_risk rows.
    model, preprocessor, config = train_lib.load_model_dir(str(model_dir))
    data_config = dataclasses.replace(train_lib.DataConfig(**config["data"]),
                                      calibration_min_tokens=n)
    rows = train_lib.make_datasets(data_config, preprocessor, config["label_names"],
                                   splits=("calibration",))["calibration"]
    saved = train_lib.evaluate(model, rows, "sst2", full_depth_disagreement=True)
    assert saved["num_examples"] == long
    assert round(saved["full_depth_disagreement"] * long) == cert["at_risk"]


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


def test_refusals_are_one_line_exit_1_and_write_nothing(trained, tmp_path):
    cache, model_dir = _copy(trained, tmp_path)
    calibrate = ["calibrate", f"--model_dir={model_dir}", *DATA]
    bad_file = tmp_path / "bad.tsv"
    bad_file.write_text("sentence\tlabel\na fine film\t1\na dull one\tseven\n")
    empty_file = tmp_path / "empty.tsv"
    empty_file.write_text("sentence\tlabel\n")
    cases = {
        "neither": (calibrate, "calibrate needs --target_blocks"),
        "tight": (calibrate + ["--halting_rule=tight"],
                  "calibrate certifies a halting mode: --halting_rule=certified"),
        "holdout": (calibrate + ["--target_blocks=2", "--holdout_fraction=0.3"],
                    "--holdout_fraction decides which training rows were held out"),
        "zero": (calibrate + ["--halting_rule=certified", "--max_disagreement=0"],
                 "--max_disagreement must be in (0, 1)"),
        "too_many": (calibrate + ["--target_blocks=9"], "--target_blocks must be in [1, 4]"),
        "drop_target": (calibrate + ["--halting_rule=certified", "--certified_risk=drop",
                                     "--target_blocks=2"],
                        "--certified_risk=drop chooses the blocks itself"),
        "mean_classifier": (calibrate + ["--halting_rule=certified",
                                         "--certified_risk=mean_deviation"],
                            "--certified_risk=mean_deviation bounds a regression score"),
        "uncertified": (["evaluate", f"--model_dir={model_dir}", "--halting_rule=certified"],
                        "This model has no certified halting"),
        "no_file": (calibrate + ["--halting_rule=certified",
                                 f"--calibration_file={tmp_path / 'absent.tsv'}"],
                    "--calibration_file: no file at"),
        "bad_file": (calibrate + ["--halting_rule=certified",
                                  f"--calibration_file={bad_file}"], "bad.tsv:3"),
        "empty_file": (calibrate + ["--halting_rule=certified",
                                    f"--calibration_file={empty_file}"], "empty.tsv: no data rows"),
        "too_long": (calibrate + ["--halting_rule=certified", "--calibration_min_tokens=17"],
                     "--calibration_min_tokens=17 is above --sequence_length=16"),
    }
    # A model whose held-out rows all selected (trained with a calibration file).
    filed = tmp_path / "filed"
    shutil.copytree(model_dir, filed)
    stored = json.loads((filed / "dact_config.json").read_text())
    stored["data"]["calibration_file"] = "served.tsv"
    (filed / "dact_config.json").write_text(json.dumps(stored))
    cases["filed"] = (["calibrate", f"--model_dir={filed}", *DATA, "--halting_rule=certified"],
                      "was trained with --calibration_file=served.tsv")
    cases["empty_value"] = (calibrate + ["--halting_rule=certified", "--calibration_file="],
                            "--calibration_file is empty")
    before = _snapshot(model_dir)
    env = dict(os.environ, DACT_TF_CACHE=str(cache), PYTHONPATH=REPO)
    procs = {}
    for name, (args, _) in cases.items():  # all at once: each is mostly TensorFlow's start
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "dact_tf", *args, f"--output_json={tmp_path / name}.json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    failures = []
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        message = cases[name][1]
        lines = stderr.strip().splitlines()
        if not (proc.returncode == 1 and len(lines) == 1 and message in lines[0]
                and stdout == "" and not (tmp_path / f"{name}.json").exists()):
            failures.append(f"{name}: exit {proc.returncode}, stdout {stdout[-500:]!r}, "
                            f"stderr {stderr[-1500:]!r}")
    assert not failures, "\n".join(failures)
    assert _snapshot(model_dir) == before
    assert not (model_dir / "calibration.json").exists()
