r"""Does the pass-through help when DACT trains with it, not only after training?

The default recipe trains DACT with every halting unit free and lets the
calibration pass the budget of leading blocks with useless heads through
(`dact_tf.calibration.halting_bias`, `--pass_through=auto`). This experiment trains the
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
`dact` rows of the same seed; the model goes next to them, in
`<out_dir>/<task>/seed<seed>/dact_pass<blocks>`. Prints one `RESULT` line per
point and writes `points.json` into each model directory. Results:
`STUDY.md`, "Tried, not kept".

Usage (from the repository root, the study's flags for data and precision):
    PYTHONPATH=. python -m benchmarks.pass_through_training \
        --glue_dir=GLUE_DIR --mixed_precision=mixed_bfloat16 --out_dir=runs/study \
        --target_blocks=2,2.5 --runs=cola:0:2,cola:1:2,cola:2:2,mrpc:1:2,mrpc:2:2
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import study  # noqa: E402  (defines the data, precision and output flags)

flags.DEFINE_list("runs", [], "task:seed:blocks items: the blocks passed through in training.")

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


def main(argv):
    del argv
    from dact_tf.training import train_lib

    for item in FLAGS.runs:
        task, seed, blocks = item.split(":")
        blocks = int(blocks)
        method = f"dact_pass{blocks}"
        # The study's `dact` model config; `_train` trains its `full` stage 1 first if missing.
        model_config = study._model_configs(task, seed, "dact")[0][1]
        model_dir = study._train(task, seed, method, model_config,
                                 extra_callbacks=[_pass_through_callback(blocks)])
        datasets = study._evaluation_datasets(task, seed)
        metric_task = train_lib.task_info(study._data_config(task, seed))[3]
        results = []
        for knob, settings in study._knobs("dact", "dact"):
            result = study._point(task, seed, method, knob, settings, model_dir, datasets,
                                  metric_task, trained_pass_through=blocks)
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
