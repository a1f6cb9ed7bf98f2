r"""Does the pass-through help when DACT trains with it, not only after training?

The default recipe trains DACT with every halting unit free and lets the
calibration pass the budget of leading blocks with useless heads through
(`dact_tf.calibration`, `--pass_through=auto`). This experiment trains the
DACT stage with those blocks already passing their budget through (their
halting values fixed at 1 from the first step), so that the later halting
units learn where to stop in the context inference will use, then scores the
model exactly as `benchmarks/study.py` scores a `dact` point: the default
(calibrated by training to half the blocks) and re-calibrated to
`--target_blocks`, always keeping the pass-through it was trained with as
the calibration's reference.

Each item of `--runs` is `task:seed:blocks` (blocks passed through during
training). Stage 1 is the study's `full` model of that task and seed
(trained first where it is missing), so the rows compare with the study's
`dact` rows of the same seed. Prints one `RESULT` line per point and writes
`points.json` into each model directory. Results: `STUDY.md`, "Tried, not
kept".

Usage (from the repository root, the study's flags for data and precision):
    PYTHONPATH=. python -m benchmarks.pass_through_training \
        --glue_dir=GLUE_DIR --mixed_precision=mixed_bfloat16 --out_dir=runs/study \
        --target_blocks=2,2.5 --runs=cola:0:2,cola:1:2,cola:2:2,mrpc:1:2,mrpc:2:2
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import study  # noqa: E402  (defines the data, precision and output flags)

flags.DEFINE_list("runs", [], "task:seed:blocks items: the blocks passed through in training.")
flags.DEFINE_string("experiment_dir", "runs/pass_through_training", "The DACT models trained here.")

FLAGS = flags.FLAGS


def _pass_through_callback(blocks):
    import keras

    class PassThroughFromStart(keras.callbacks.Callback):
        """Fixes the first `blocks` halting values at 1 before the first step."""

        def on_train_begin(self, logs=None):
            heads = self.model.encoder.heads
            if heads.passed_blocks != blocks:  # a resumed run has it in its weights
                heads.pass_budget_through(blocks)

    return PassThroughFromStart()


def _undo_keeping(trained_blocks):
    """`study._undo_calibration` that goes back to the pass-through of training."""
    from dact_tf import train_lib

    def undo(model, model_dir):
        with open(os.path.join(model_dir, train_lib.CALIBRATION_FILE)) as f:
            shift = json.load(f).get("shift", 0.0)
        heads = model.encoder.heads
        heads.pass_budget_through(0)
        heads.shift_halting_bias(-shift)
        heads.pass_budget_through(trained_blocks)

    return undo


def main(argv):
    del argv
    import keras

    from dact_tf import train_lib
    from dact_tf.models import backbones

    for item in FLAGS.runs:
        task, seed, blocks = item.split(":")
        blocks = int(blocks)
        full = study._model_dir(task, seed, "full")
        if not os.path.exists(os.path.join(full, train_lib.MODEL_FILE)):
            study._train(task, seed, "full", study._model_configs(task, seed, "full")[0][1])
        model_dir = os.path.join(FLAGS.experiment_dir, f"{task}_seed{seed}_pass{blocks}")
        if not os.path.exists(os.path.join(model_dir, train_lib.MODEL_FILE)):
            config = train_lib.dataclasses.replace(
                train_lib.ModelConfig(backbone=FLAGS.backbone), init_from=full)
            start = time.time()
            keras.backend.clear_session()
            train_lib.train(model_dir, study._data_config(task, seed), config,
                            study._train_config(task),
                            extra_callbacks=[_pass_through_callback(blocks)])
            train_lib.write_json(os.path.join(model_dir, "train_seconds.json"),
                                 {"seconds": time.time() - start})
        _, tokenizer = backbones.load_backbone(FLAGS.backbone, max_sequence_length=8)
        data_config = study._data_config(task, seed)
        preprocessor = backbones.make_preprocessor(
            tokenizer, sequence_length=data_config.sequence_length)
        datasets = train_lib.make_datasets(data_config, preprocessor,
                                           splits=("holdout", "validation"))
        metric_task = train_lib.task_info(data_config)[3]
        study._undo_calibration = _undo_keeping(blocks)
        results = []
        for knob, settings in study._knobs("dact", "dact"):
            result = study._point(task, seed, "dact_pass_trained", knob, settings, model_dir,
                                  datasets, metric_task)
            result.pop("dev", None)
            results.append(result)
            print(f"RESULT {task} seed {seed} pass {blocks} {knob}: {result['metric_name']} "
                  f"{result['metric']:.4f} at {result['mean_layers_executed']:.2f} blocks "
                  f"(held-out {result['holdout_metric']:.4f}, calibration pass-through "
                  f"{result.get('pass_through')})", flush=True)
        train_lib.write_json(os.path.join(model_dir, "points.json"), results)


if __name__ == "__main__":
    flags.mark_flag_as_required("glue_dir")
    app.run(main)
