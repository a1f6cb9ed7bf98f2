"""`dact-tf calibrate`: certify a trained model directory's exit on its held-out rows.

It finds the rows the model was trained without (the training-data flags,
its stored split), certifies a compute target (`--target_blocks`, its cost
against the full-depth model bounded by `--calibration_max_drop`) and/or a
halting mode (`--halting_rule=certified --max_disagreement=EPS`, or with
`--certified_risk=drop` the fewest blocks whose drop against the full-depth
model is certified at most `--calibration_max_drop`), and
stores the result in the model directory (`calibration.json`, `model.keras`)
so `evaluate`, `predict` and `export` use it from then on. See
`dact_tf.calibration.certify`.
"""

import json
import os

from absl import flags

from dact_tf.cli import help_text

FLAGS = flags.FLAGS

#: Flags that decide which training rows were held out: `calibrate` takes the stored ones.
_SPLIT_FLAGS = help_text.REFUSED_BY_COMMAND["calibrate"]


def _request():
    """`(target, rule, drop)` the flags ask for, or a one-line refusal of what they cannot."""
    target = FLAGS.target_blocks if FLAGS["target_blocks"].present else None
    rule = FLAGS.halting_rule if FLAGS["halting_rule"].present else None
    if rule not in (None, "certified"):
        raise ValueError("calibrate certifies a halting mode: --halting_rule=certified (other "
                         "rules need no calibration: pass them to evaluate/predict/export).")
    if target is None and rule is None:
        raise ValueError("calibrate needs --target_blocks=K (a compute target, its cost "
                         "certified) and/or --halting_rule=certified --max_disagreement=EPS.")
    drop = rule == "certified" and FLAGS.certified_risk == "drop"
    if drop and target is not None:
        raise ValueError("--certified_risk=drop chooses the blocks itself (the fewest whose drop "
                         "is certified): leave --target_blocks unset.")
    changed = [name for name in _SPLIT_FLAGS if FLAGS[name].present]
    if changed:
        raise ValueError(f"--{changed[0]} decides which training rows were held out: calibrate "
                         "uses the model's own split (leave it unset).")
    return target, rule, drop


def run(require, data_config_from):
    """Runs the command with the parsed flags (`dact_tf.cli.main` defines them).

    Args:
        require: `main._require`, a flag's value or a one-line refusal.
        data_config_from: `main._data_config`, the stored data config with
            the path flags given again.
    """
    from dact_tf.calibration import calibration_run
    from dact_tf.data import tasks
    from dact_tf.models import model_dir as model_dir_lib
    from dact_tf.utils import files
    from dact_tf.training import train_lib

    model_dir = require("model_dir")
    target, rule, drop = _request()
    stored = train_lib.read_config(model_dir)
    if stored["data"].get("calibration_file") and not FLAGS["calibration_file"].present:
        raise ValueError(f"{model_dir} was trained with --calibration_file="
                         f"{stored['data']['calibration_file']}: its held-out rows all chose "
                         "the epoch, so pass --calibration_file again (these rows or others).")
    calibration_run.check_flags(
        stored["method"], rule, FLAGS.max_disagreement, FLAGS.calibration_max_drop,
        FLAGS.calibration_confidence, FLAGS.certified_risk)
    data_config = data_config_from(stored["data"], split="train")
    tasks.check_min_tokens(data_config)  # before the model loads
    if not data_config.holdout_fraction:
        raise ValueError(f"{model_dir} was trained with --holdout_fraction=0: no held-out rows "
                         "to calibrate on; train it again with held-out rows.")
    model, preprocessor, config = train_lib.load_model_dir(model_dir)
    risk = None
    if rule == "certified" and not drop:
        risk = calibration_run.halting_risk(FLAGS.max_disagreement, FLAGS.certified_risk)
        risk.check(model)  # before any pass
    if target is not None:
        try:
            model.exit_criterion.check_target_blocks(target, model.num_layers)
        except ValueError as error:  # the method's own words, as a flag
            raise ValueError(str(error).replace("`target_blocks`", "--target_blocks")) from None
    stage1 = os.path.join(model_dir, train_lib.STAGE1_DIR)
    reference = None
    if target is not None or drop:
        # The full-depth model: the run's stage 1, or --init_from given again.
        path = stage1 if os.path.isdir(stage1) else FLAGS.init_from
        if path is None and stored["model"].get("init_from"):
            raise ValueError(
                f"{model_dir} was warm-started from --init_from={stored['model']['init_from']}, "
                "the full-depth model its cost is measured against: pass --init_from again.")
        reference = model_dir_lib.load_reference(path)
    _, _, _, metric_task = train_lib.task_info(data_config, config["label_names"])
    datasets = train_lib.make_datasets(data_config, preprocessor, config["label_names"],
                                       splits=("holdout", "calibration"))
    common = dict(metric_task=metric_task, reference=reference,
                  max_drop=FLAGS.calibration_max_drop, confidence=FLAGS.calibration_confidence,
                  rows_source=calibration_run.rows_source(data_config))
    rows = datasets["holdout"], datasets["calibration"]
    with files.ModelDirLock(model_dir):
        if drop:
            result = calibration_run.calibrate_drop(model, *rows, **common)
        else:
            result = calibration_run.calibrate(
                model, *rows, target_blocks=target,
                # The pass-through the model was trained with, unless given again.
                pass_through=train_lib.parse_pass_through(
                    FLAGS.pass_through if FLAGS["pass_through"].present
                    else stored["model"]["pass_through"], model.num_layers),
                max_disagreement=risk,
                **common)
        path = os.path.join(model_dir, train_lib.CALIBRATION_FILE)
        if target is None and not drop and os.path.exists(path):
            # A halting mode alone keeps the target's calibration (it is still the model's).
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)
            result = {**{k: v for k, v in previous.items() if k != "halting"}, **result}
        if not result.get("kept"):  # kept: nothing certified, the model directory stands
            train_lib.write_json(path, result)
            train_lib.save_model_dir(model_dir, model, preprocessor.tokenizer, config)
    print(json.dumps(result, indent=2, sort_keys=True))
    if FLAGS.output_json:
        train_lib.write_json(FLAGS.output_json, result)
