"""The `dact-tf` command line: train, evaluate, predict (and export).

Usage:
    dact-tf train --task=sst2 --data_dir=glue/ --model_dir=runs/sst2 [--tau=1e-3] ...
    dact-tf evaluate --model_dir=runs/sst2 [--output_json=results.json]
    dact-tf predict --model_dir=runs/sst2 --text="a gripping film"
    dact-tf predict --model_dir=runs/sst2 --input_file=lines.txt
    dact-tf export --model_dir=runs/sst2 --export_dir=serving/sst2 --format=saved_model

Errors in the user's input (unknown task, missing or malformed files, a model
directory from another run) end with one message naming the problem and exit
status 1; `--verbosity=1` shows the stack trace too.
"""

import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from dact_tf import config  # noqa: E402
from dact_tf import exits  # noqa: E402

# Flag defaults come from the configs (one source of defaults); a flag
# overrides only the field it names.
_DATA, _MODEL, _TRAIN = config.DataConfig(), config.ModelConfig(), config.TrainConfig()

COMMANDS = ("train", "calibrate", "evaluate", "predict", "export")

FLAGS = flags.FLAGS
# Where things are.
flags.DEFINE_string("model_dir", None, "The model directory (written by train, read by the others).")
flags.DEFINE_string("task", _DATA.task, "GLUE task (sst2, mrpc, rte, cola, stsb, qnli), or tsv/csv for custom files.")
flags.DEFINE_string("data_dir", _DATA.data_dir, "Local GLUE folder (<TASK>/{train,dev}.tsv) or a task folder; unset: tensorflow-datasets (online).")
flags.DEFINE_string("train_file", _DATA.train_file, "Custom training file (--task=tsv|csv).")
flags.DEFINE_string("eval_file", _DATA.eval_file, "Custom evaluation file (--task=tsv|csv).")
flags.DEFINE_string("text_column", _DATA.text_column, "Custom data: text column, 0-based index or header name.")
flags.DEFINE_string("text_pair_column", _DATA.text_pair_column, "Custom data: optional second text column.")
flags.DEFINE_string("label_column", _DATA.label_column, "Custom data: label column, index or header name.")
flags.DEFINE_boolean("header", _DATA.header, "Custom data: whether files start with a header line.")
# Data pipeline.
flags.DEFINE_integer("sequence_length", _DATA.sequence_length, "Tokens per example (keras-hub's preprocessor `sequence_length`).", lower_bound=8)
flags.DEFINE_alias("max_seq_length", "sequence_length")  # its earlier name, still accepted
flags.DEFINE_integer("batch_size", _DATA.batch_size, "Examples per batch.", lower_bound=1)
flags.DEFINE_integer("max_train_examples", _DATA.max_train_examples, "Use only the first N training examples.", lower_bound=1)
flags.DEFINE_integer("max_eval_examples", _DATA.max_eval_examples, "Use only the first N evaluation examples.", lower_bound=1)
flags.DEFINE_integer("seed", _DATA.seed, "Random seed.")
flags.DEFINE_enum("padding", _DATA.padding, ["bucket", "batch", "max_length"], "bucket: training batches of similar lengths, every batch cut to its longest example (fast); batch: cut only; max_length: pad to --sequence_length.")
flags.DEFINE_float("holdout_fraction", _DATA.holdout_fraction, "Fraction of the training rows held out to pick the best epoch and calibrate --target_blocks (0: none).", lower_bound=0.0, upper_bound=0.5)
flags.DEFINE_integer("max_holdout_examples", _DATA.max_holdout_examples, "At most this many training rows are held out.", lower_bound=1)
flags.DEFINE_float("calibration_share", _DATA.calibration_share, "The share of the held-out rows kept apart for the calibration's certificate (no other choice sees them); the rest pick the best epoch. 0: calibrate on the selection rows (the certificate says so).", lower_bound=0.0, upper_bound=0.9)
flags.DEFINE_string("calibration_file", _DATA.calibration_file, "train, calibrate: labelled rows to certify on instead of the held-out calibration rows, in the training data's format (a GLUE task's TSV, or the custom columns): a certificate holds for rows like these, so give rows like the ones the model will serve. Every held-out row then picks the best epoch.")
flags.DEFINE_integer("calibration_min_tokens", _DATA.calibration_min_tokens, "train, calibrate: certify on the calibration rows of at least this many tokens ([CLS] and [SEP] included; 0: every row): where the served rows are longer than the training rows (SST-2: phrases in training, sentences served), the certificate then holds for the longer rows.", lower_bound=0)
# Model and training.
flags.DEFINE_enum("recipe", "default", sorted(config.RECIPES), "train: the named recipe every model and training flag not given takes its value from: default (the study's recipe, the flags' defaults), paper (the paper's pure DACT: first-token pooling, tau 1e-3, no per-block or distillation loss, one stage, no target; constant Adam, last epoch) or certified (the default, then the fewest blocks whose accuracy drop against the stage-1 model is certified at most --calibration_max_drop: --halting_rule=certified --certified_risk=drop).")
flags.DEFINE_string("backbone", _MODEL.backbone, "minilm_l6, tiny, tiny_distil_bert, a local Hugging Face BERT or keras-hub preset dir, or a keras-hub BERT/DistilBERT preset name (online).")
flags.DEFINE_float("tau", _MODEL.tau, "Ponder-cost weight: larger means fewer blocks.", lower_bound=0.0)
flags.DEFINE_float("tau_warmup_epochs", _MODEL.tau_warmup_epochs, "Grow tau linearly from 0 over this many epochs (0: constant tau).", lower_bound=0.0)
flags.DEFINE_string("pass_through", _MODEL.pass_through, "DACT with a target: how many leading blocks the calibration makes hand their whole budget on (their heads keep no weight); auto: the leading heads below half of the best head's gain on the held-out rows; 0: none.")
flags.DEFINE_enum("ponder", _MODEL.ponder, ["budget", "blocks"], "DACT: the ponder cost tau weighs: budget (the paper's sum of p_n) or blocks (a smooth count of the blocks the halting rule runs).")
flags.DEFINE_float("halting_bias", _MODEL.halting_bias, "Initial bias of the halting units.")
flags.DEFINE_float("halting_confidence", _MODEL.halting_confidence, "DACT, classification (ignored for regression): the initial weight of each halting unit on its own answer's confidence (negative: confident answers start halting); 0: the paper's halting units.")
flags.DEFINE_boolean("shared_heads", _MODEL.shared_heads, "One DACT head shared by all blocks.")
flags.DEFINE_enum("halting_rule", _MODEL.halting_rule, ["tight", "paper", "certified", "relaxed", "never"], "Inference halting rule. tight/paper: proven equal to full depth; certified (train, calibrate; DACT, PABEE, DeeBERT): the most aggressive exit threshold whose disagreement with full depth is certified at most --max_disagreement on held-out rows (DACT: the tight test or a learned consistency score, fitted on the selection rows); relaxed: no guarantee. evaluate/predict/export: override the trained one.")
flags.DEFINE_float("max_disagreement", _MODEL.max_disagreement, "--halting_rule=certified: the bound on the rate of rows whose early answer differs from full depth (0.01: 1 %), certified on held-out rows.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_enum("certified_risk", _MODEL.certified_risk, ["disagreement", "drop", "mean_deviation"], "--halting_rule=certified (train, calibrate): disagreement: certify the rate of answers differing from the model's own full depth (--max_disagreement); mean_deviation (regression): certify the mean distance of the early score from the full-depth one, as a share of the score range (--max_disagreement=0.02 on a 0-5 scale: 0.1 on average); drop (DACT): certify the accuracy drop against the plain full-depth model (regression: the mean absolute error above its own; --calibration_max_drop), the halting shift and the learned score's threshold chosen together for the fewest blocks.")
flags.DEFINE_float("calibration_confidence", _MODEL.calibration_confidence, "The confidence of the certificates (--calibration_max_drop, --max_disagreement) on unseen rows.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("halting_epsilon", None, "evaluate/predict/export with --halting_rule=relaxed: exit once the budget p_n is below this (no guarantee).", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("regression_tolerance", _MODEL.regression_tolerance, "Regression: largest score change early exit may cause.", lower_bound=0.0)
flags.DEFINE_float("head_loss_weight", _MODEL.head_loss_weight, "Weight of the per-block auxiliary loss that trains every head on the label (0: pure DACT).", lower_bound=0.0)
flags.DEFINE_enum("pooling", _MODEL.pooling, ["cls", "mean"], "What the DACT heads read: the first token or the mean over tokens (all-MiniLM-L6-v2 was trained with mean pooling).")
flags.DEFINE_enum("method", _MODEL.method, list(exits.names()), "Early-exit method (dact_tf.exits): DACT, or a baseline on the same heads, loop and exports.")
flags.DEFINE_integer("patience", _MODEL.patience, "pabee: exit when the prediction held for this many blocks (evaluate/predict/export: override the trained value).", lower_bound=1)
flags.DEFINE_float("entropy_threshold", _MODEL.entropy_threshold, "deebert: exit when the prediction's entropy (nats) is below this (evaluate/predict/export: override).", lower_bound=0.0)
flags.DEFINE_integer("num_layers", _MODEL.num_layers, "Keep only the backbone's first N blocks (static truncation: --method=static --num_layers=k).", lower_bound=1)
flags.DEFINE_integer("epochs", _TRAIN.epochs, "Training epochs (deebert: per stage).", lower_bound=1)
flags.DEFINE_boolean("freeze_backbone", _MODEL.freeze_backbone, "Train the heads only; with --init_from a fine-tuned model, DACT learns to halt on fixed features (like DeeBERT's second stage).")
flags.DEFINE_string("init_from", _MODEL.init_from, "Warm start: a trained model dir (or .keras / .weights.h5) with the same architecture, e.g. a --method=static full-depth model.")
flags.DEFINE_float("learning_rate", _TRAIN.learning_rate, "Peak learning rate (adamw: after warm-up, then linear decay to 0; adam: constant).", lower_bound=0.0)
flags.DEFINE_enum("optimizer", _TRAIN.optimizer, ["adamw", "adam"], "adamw: AdamW, warm-up and linear decay (the recipe); adam: constant Adam (dact_tf's first recipe).")
flags.DEFINE_float("weight_decay", _TRAIN.weight_decay, "adamw: decoupled weight decay (none on biases and LayerNorm).", lower_bound=0.0)
flags.DEFINE_float("warmup_fraction", _TRAIN.warmup_fraction, "adamw: fraction of the steps spent warming the learning rate up.", lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_integer("keep_checkpoints", _TRAIN.keep_checkpoints, "How many per-epoch checkpoints to keep in MODEL_DIR/checkpoints (the newest; 0: none).", lower_bound=0)
flags.DEFINE_integer("log_every_steps", _TRAIN.log_every_steps, "Write training scalars (loss, metrics, tau) to TensorBoard every N steps (0: once an epoch).", lower_bound=0)
flags.DEFINE_boolean("keep_best_epoch", _TRAIN.keep_best_epoch, "Keep the weights of the best epoch on the held-out training rows (not the last epoch's).")
flags.DEFINE_float("distill_weight", _MODEL.distill_weight, "DACT: weight of the self-distillation of every head and accumulated answer towards the deepest head (0: off).", lower_bound=0.0)
flags.DEFINE_enum("distill_teacher", _MODEL.distill_teacher, ["self", "reference"], "DACT: what the distillation teaches every head and accumulated answer: self (the deepest head) or reference (the answers of the plain full-depth model DACT starts from, stage 1 or --init_from, frozen: DACT then tracks the model a certified drop is measured against).")
flags.DEFINE_boolean("full_depth_stage", _MODEL.full_depth_stage, "DACT: first fine-tune the plain full-depth model (kept in MODEL_DIR/stage1), then train DACT from it. Ignored with --init_from.")
flags.DEFINE_float("calibration_max_drop", _MODEL.calibration_max_drop, "DACT: the most the calibration to --target_blocks may cost against the plain full-depth model (stage 1 or --init_from): the accuracy drop (rows answered wrongly where it answers rightly, less the other way round; 0.01: one point; regression: the mean absolute error above the full-depth model's, as a share of the score range), certified on held-out rows with --calibration_confidence. Where the target needs more, or the rows cannot certify it, the model runs more blocks and says so.", lower_bound=0.0)
flags.DEFINE_float("target_blocks", _MODEL.target_blocks, "DACT: the mean blocks to run (e.g. 3 of 6). Training steers tau towards it and the halting is then calibrated on the held-out rows. Default: half the blocks; 0: tau alone decides.", lower_bound=0.0)
# Scale out.
flags.DEFINE_enum("distribution_strategy", _TRAIN.distribution_strategy, ["default", "one_device", "mirrored", "multi_worker_mirrored", "tpu"], "tf.distribute strategy for training; --batch_size is the global batch. multi_worker_mirrored reads TF_CONFIG.")
flags.DEFINE_float("worker_timeout", _TRAIN.worker_timeout, "multi_worker_mirrored: seconds to wait for every TF_CONFIG task to join; past it the run ends with a line naming the missing tasks (default: $DACT_TF_WORKER_TIMEOUT, else 300).", lower_bound=1.0)
flags.DEFINE_string("tpu", None, "--distribution_strategy=tpu: the TPU name or grpc:// address (default: local).")
flags.DEFINE_enum("mixed_precision", _TRAIN.mixed_precision, ["none", "auto", "mixed_float16", "mixed_bfloat16"], "Compute in 16 bits (auto: float16 on GPU, bfloat16 on CPU/TPU); DACT's halting math stays float32.")
flags.DEFINE_boolean("jit_compile", _TRAIN.jit_compile, "XLA-compile the training step (evaluation and early exit never use XLA).")
# Evaluate / predict.
flags.DEFINE_string("output_json", None, "Write the results here as JSON.")
flags.DEFINE_boolean("per_block", False, "evaluate: also report every block's own metric, DACT's accumulated answer and halting, and where examples exit (is it the heads or the halting that costs accuracy?).")
flags.DEFINE_list("max_layers", None, "evaluate: also report the metric with every row capped at K blocks (anytime answers under a budget), for each K given (e.g. 1,2,3), with the fraction of rows whose answer is exact (finished by the exit rule within the cap).")
flags.DEFINE_string("plot_dir", None, "evaluate: write the model's accuracy-vs-blocks plot (per-block heads, the exit knob's curve replayed without retraining, this model, full depth), the exit histogram and their CSVs here.")
flags.DEFINE_multi_string("text", None, "predict: a text; repeat the flag for several (one answer each, in order).")
flags.DEFINE_multi_string("text_pair", None, "predict: the second text of a pair task; one per --text, in the same order.")
flags.DEFINE_string("input_file", None, "predict: a file with one text per line (pairs: tab-separated).")
# Export.
flags.DEFINE_string("export_dir", None, "export: base directory (versions go in BASE/N).")
flags.DEFINE_enum("format", "saved_model", ["saved_model", "tflite"], "export: the format.")
flags.DEFINE_integer("version", None, "export: the version number (default: next).", lower_bound=1)
flags.DEFINE_boolean("text_signatures", True, "export --format=saved_model: add the string-input signatures serve_text(_pair) (TF Text ops in the graph). --notext_signatures: token-id signatures only, which any TensorFlow (saved_model_cli, servers without TF Text) loads; vocab.txt still goes to assets.extra/.")
flags.DEFINE_enum("quantize", "none", ["none", "dynamic", "float16"], "export --format=tflite: quantization.")

_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                FileExistsError, PermissionError, ConnectionError, ImportError)


def _require(name):
    value = getattr(FLAGS, name)
    if value in (None, ""):
        raise ValueError(f"--{name} is required for `dact-tf {FLAGS.command}`.")
    return value


_PATH_FLAGS = ("data_dir", "train_file", "eval_file", "calibration_file")


def _is_builtin(path):
    from dact_tf import data

    builtin = os.path.realpath(os.path.dirname(data.builtin_sst2_dir()))
    return os.path.realpath(path).startswith(builtin + os.sep)


def _data_config(stored=None, split="eval"):
    """A DataConfig from the flags; flags not given keep the stored values.

    A model directory is data, not instructions: a file or folder path it
    stores (the training data's) is not opened unless it is the data
    shipped with dact_tf; other paths must be given again as flags.
    """
    from dact_tf.training import train_lib

    if FLAGS["calibration_file"].present and not FLAGS.calibration_file.strip():
        raise ValueError("--calibration_file is empty: give a file of labelled rows, or leave "
                         "the flag out.")
    names = [f.name for f in train_lib.dataclasses.fields(train_lib.DataConfig)]
    # A model dir from an older dact_tf lacks the newer fields: their defaults.
    values = {**train_lib.dataclasses.asdict(train_lib.DataConfig()), **(stored or {})}
    for name in names:
        if stored is None or FLAGS[name].present:
            values[name] = getattr(FLAGS, name)
        elif name in _PATH_FLAGS and values[name] and not _is_builtin(str(values[name])):
            values[name] = None  # stored, not given: a stored path is not opened
    config = train_lib.DataConfig(**{k: values[k] for k in names})
    if stored is not None:
        custom = config.task in train_lib.CUSTOM_TASKS
        needed = f"{split}_file" if custom else "data_dir"
        if not getattr(config, needed) and stored.get(needed):
            raise ValueError(
                f"The model was trained with --{needed}={stored[needed]}; dact-tf does not "
                f"open paths read from a model directory: pass --{needed} again to "
                f"{'find its held-out rows' if split == 'train' else 'evaluate on that data'}"
                + ("." if custom else " (or leave it unset for tensorflow-datasets, online)."))
    return config


def _given_flags(base, renamed=None):
    """`base` (a `ModelConfig` or `TrainConfig`) with the fields given as flags.

    A field whose flag is on the command line takes the flag's value; the
    others keep `base`'s (the `--recipe`'s), so `--recipe=paper --tau=0.01`
    is the paper's recipe with another tau.
    """
    renamed = renamed or {}
    values = {}
    for field in dataclasses.fields(base):
        name = renamed.get(field.name, field.name)
        if name in FLAGS and FLAGS[name].present:
            values[field.name] = FLAGS[name].value
    return dataclasses.replace(base, **values)


def cmd_train():
    from dact_tf.training import train_lib

    model_dir = _require("model_dir")
    model_config, train_config = config.recipe(FLAGS.recipe)
    model_config = _given_flags(model_config)
    # A method without accumulated answers stores no distillation weight.
    model_config = train_lib.dataclasses.replace(model_config, distill_weight=exits.get(
        model_config.method).recipe_settings(model_config)["distill_weight"])
    train_config = _given_flags(train_config, renamed={"tpu_address": "tpu"})
    data_config = _data_config()
    if data_config.calibration_file and not (
            model_config.halting_rule == "certified"
            or exits.get(model_config.method).calibrates_to_target(model_config)):
        raise ValueError("--calibration_file is for the certificates, and this run certifies "
                         "nothing: add --halting_rule=certified or a DACT --target_blocks.")
    model, _, history = train_lib.train(model_dir, data_config, model_config, train_config)
    if history:
        print(f"Trained model written to {model_dir} ({model.num_layers} blocks).")
    if FLAGS.distribution_strategy == "multi_worker_mirrored":
        # Everything is written (atomically) and the workers have met for
        # the last time. TensorFlow's teardown of a multi-worker process can
        # deadlock: destroying a tf.data iterator waits for a pipeline
        # thread that needs the GIL the destructor holds (seen, with native
        # stacks, when a resumed cluster had finished). Leave without it.
        _exit_now(0)


def cmd_calibrate():
    from dact_tf.cli import calibrate

    calibrate.run(_require, _data_config)


def _exit_now(code):
    """Flushes stdout and stderr, then ends the process without Python's teardown."""
    from dact_tf.utils import quiet

    sys.stdout.flush()
    sys.stderr.flush()
    quiet.restore()
    os._exit(code)


def _load_model():
    """The trained model of --model_dir, with the exit flags given as overrides."""
    from dact_tf.training import train_lib

    model, preprocessor, config = train_lib.load_model_dir(_require("model_dir"))
    overrides = {
        name: getattr(FLAGS, name)
        for name in ("patience", "entropy_threshold", "halting_rule", "halting_epsilon")
        if FLAGS[name].present
    }
    rule = overrides.get("halting_rule", getattr(model.exit_criterion, "halting_rule", None))
    if "halting_epsilon" in overrides and rule != "relaxed":
        raise ValueError("--halting_epsilon is the relaxed rule's budget threshold: it needs "
                         "--halting_rule=relaxed (the model's rule is "
                         f"{rule or model.method!r}).")
    if (overrides.get("halting_rule") == "certified"
            and getattr(model.exit_criterion, "halting_rule", None) != "certified"):
        raise ValueError(
            "This model has no certified halting: run `dact-tf calibrate "
            f"--model_dir={FLAGS.model_dir} --halting_rule=certified` first (the data flags "
            "of training find its held-out rows).")
    if overrides:
        calibrated = model.exit_criterion.get_config()
        model.configure_exit(**overrides)
        if model.certificates and model.exit_criterion.get_config() != calibrated:
            # The certificates hold for the exit setting the calibration saved, not for
            # another one: evaluate and the exports must not claim them for it. A
            # target's certificate still holds under a proven rule (it was made for one).
            proven = getattr(model.exit_criterion, "halting_rule", None) in ("tight", "paper")
            kept = {k: v for k, v in model.certificates.items()
                    if k == "compute_target" and proven}
            model.certificates = kept or None
    return model, preprocessor, config


def _caps(num_layers):
    """`--max_layers` as ints in `[1, num_layers]`, or a one-line refusal."""
    caps = []
    for value in FLAGS.max_layers or ():
        text = value.strip()
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise ValueError(f"--max_layers takes integers >= 1, got {value!r}.")
        if int(text) > num_layers:
            raise ValueError(f"--max_layers={text} is above the model's {num_layers} blocks "
                             f"(a cap of {num_layers} is no cap).")
        caps.append(int(text))
    return caps


def cmd_evaluate():
    from dact_tf.training import train_lib

    model, preprocessor, config = _load_model()
    caps = _caps(model.num_layers)  # checked before any work
    data_config = _data_config(config["data"])
    _, _, _, metric_task = train_lib.task_info(data_config, config["label_names"])
    dataset = train_lib.make_datasets(
        data_config, preprocessor, config["label_names"], splits=("validation",)
    )["validation"]
    results = train_lib.evaluate(model, dataset, metric_task, verbose=1,
                                 full_depth_disagreement=True)
    if model.certificates:
        from dact_tf.calibration import certificate_check

        results["certificates"] = model.certificates
        check = certificate_check.check_halting(model.certificates.get("halting"), results)
        if check:
            results["certificate_check"] = check
            warning = certificate_check.message(check)
            if warning:
                print(warning, file=sys.stderr)
    if FLAGS.per_block:
        results["per_block"] = train_lib.per_block_report(model, dataset, metric_task,
                                                          verbose=1)
        print(train_lib.format_per_block(results["per_block"]))
    if caps:
        results["budgets"] = [
            {k: v for k, v in train_lib.evaluate(model, dataset, metric_task, verbose=1,
                                                 max_layers=cap).items()
             if k not in ("method", "num_layers", "num_examples")}
            for cap in caps]
    if FLAGS.plot_dir:
        from dact_tf.evaluation import plots

        written = plots.write_model_report(model, dataset, metric_task, FLAGS.plot_dir, verbose=1)
        results["plots"] = {k: v for k, v in written.items() if isinstance(v, str)}
        print(f"Plots and CSVs written to {FLAGS.plot_dir}", file=sys.stderr)
    print(json.dumps(results, indent=2, sort_keys=True))
    if FLAGS.output_json:
        train_lib.write_json(FLAGS.output_json, results)


def _predict_inputs(pair_model):
    """`(texts, pairs)` from `--text`/`--text_pair` or `--input_file`, checked."""
    if FLAGS.input_file and (FLAGS.text is not None or FLAGS.text_pair is not None):
        raise ValueError("predict reads --text (and --text_pair) or --input_file, not both.")
    if FLAGS.input_file:
        from dact_tf.evaluation import prediction

        try:
            return prediction.read_text_file(FLAGS.input_file, pair_model)
        except (FileNotFoundError, IsADirectoryError) as e:
            raise type(e)(f"--input_file {e}") from None
    if FLAGS.text is None:
        raise ValueError("predict needs --text or --input_file.")
    texts, pairs = list(FLAGS.text), FLAGS.text_pair
    if any(not text.strip() for text in texts):
        raise ValueError("--text is empty.")
    if not pair_model:
        if pairs is not None:
            raise ValueError("This model reads single sentences, but --text_pair gives a "
                             "second one (it would be ignored).")
        return texts, None
    if pairs is None:
        raise ValueError("This model reads sentence pairs: give --text and --text_pair, or "
                         "tab-separated pairs in --input_file.")
    if len(pairs) != len(texts):
        raise ValueError(f"Got {len(texts)} --text and {len(pairs)} --text_pair: this model "
                         "reads pairs, one --text_pair for each --text.")
    if any(not pair.strip() for pair in pairs):
        raise ValueError("--text_pair is empty: this model reads sentence pairs.")
    return texts, list(pairs)


def cmd_predict():
    from dact_tf.evaluation import prediction
    from dact_tf.training import train_lib

    model_dir = _require("model_dir")
    # The inputs are checked before the model loads (its config says pairs or not).
    texts, pairs = _predict_inputs(train_lib.is_pair_task(train_lib.read_config(model_dir)))
    model, preprocessor, config = _load_model()
    rows = prediction.predict_texts(
        model, preprocessor, texts, pairs, label_names=config.get("label_names"),
        batch_size=FLAGS.batch_size, verbose=int(len(texts) > FLAGS.batch_size))
    for row in rows:
        print(json.dumps(row))
    if FLAGS.output_json:
        train_lib.write_json(FLAGS.output_json, rows)


def _write_json_file(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)


def cmd_export():
    from dact_tf import export
    from dact_tf.training import train_lib

    model_dir = _require("model_dir")
    export_dir = _require("export_dir")
    model, preprocessor, config = _load_model()
    from dact_tf.utils import progress

    bar = progress.Progress(f"Exporting {FLAGS.format} (tracing the early-exit graph)",
                            total=1, unit="files")
    if FLAGS.format == "tflite":
        # No tokenizer: tokenization ops are not TFLite builtins (apps
        # tokenize with the vocab.txt written next to the file).
        os.makedirs(export_dir, exist_ok=True)
        name = os.path.basename(os.path.normpath(os.path.abspath(model_dir))) or "dact"
        path = os.path.join(export_dir, f"{name}_{FLAGS.quantize}.tflite")
        vocab = os.path.join(export_dir, f"{name}_vocab.txt")
        # The exit settings and what the calibration certified, beside the file.
        sidecar = path[:-len(".tflite")] + ".json"
        for target in (path, sidecar):  # checked early; the writes refuse a race too
            if os.path.exists(target):
                raise FileExistsError(
                    f"{target} exists; exports never overwrite: use another --export_dir "
                    "or delete it.")
        from dact_tf.utils import files

        # The variants of one model (--quantize) share its vocabulary file.
        train_lib.copy_vocabulary(model_dir, vocab, overwrite=False)
        files.atomic_write(path, lambda tmp: export.export_tflite(
            model, tmp, quantize=FLAGS.quantize), overwrite=False)
        files.atomic_write(sidecar, lambda tmp: _write_json_file(tmp, {
            "method": model.method, "exit": model.exit_criterion.get_config(),
            "certificates": model.certificates, "label_names": config.get("label_names"),
            "num_layers": int(model.num_layers)}), overwrite=False)
    else:
        path = export.export_saved_model(
            model,
            export_dir,
            version=FLAGS.version,
            tokenizer=preprocessor.tokenizer,
            sequence_length=config["data"]["sequence_length"],
            # A pair model gets serve_text_pair only: one sentence is not its input.
            text_pair="only" if train_lib.is_pair_task(config) else False,
            text_signatures=FLAGS.text_signatures,
        )
    bar.update()
    bar.close()
    print(f"Exported {FLAGS.format} to {path}")


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        extra = " ".join(argv[1:])
        raise app.UsageError(
            f"Usage: dact-tf {{{','.join(COMMANDS)}}} --flags (got: {extra or 'nothing'})"
        )
    FLAGS.command = argv[1]
    from dact_tf.cli.help_text import foreign_flags

    foreign = foreign_flags(argv[1])
    if foreign:
        print(f"dact-tf {argv[1]}: error: {', '.join('--' + n for n in foreign)} "
              f"{'is not a flag' if len(foreign) == 1 else 'are not flags'} of {argv[1]} "
              f"(dact-tf {argv[1]} --help lists its flags).", file=sys.stderr)
        sys.exit(1)
    try:
        globals()[f"cmd_{argv[1]}"]()
    except _USER_ERRORS as e:
        if FLAGS.verbosity >= 1:
            raise
        print(f"dact-tf {argv[1]}: error: {_one_line(e)}", file=sys.stderr)
        sys.exit(1)


def _one_line(error):
    """An error as the line the user reads: an OS error names its file, without `[Errno N]`."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror.lower()}."
    return str(error)


flags.DEFINE_string("command", None, "Set from the first argument; do not pass.")

def run():
    """Console-script entry point."""
    from dact_tf.cli.help_text import help_requested
    from dact_tf.cli.help_text import usage

    wanted, text = help_requested(sys.argv)
    if wanted:
        print(text)
        sys.exit(0)
    if len(sys.argv) == 1:
        print(usage())
        sys.exit(1)
    app.run(main)


if __name__ == "__main__":
    run()
