"""`dact-tf --help` and `dact-tf COMMAND --help`: the commands and their flags, grouped."""

from absl import flags

FLAGS = flags.FLAGS

#: One line per command, for `dact-tf --help`.
SUMMARIES = {
    "train": "fine-tune a model (DACT or a baseline) into --model_dir; re-run to resume",
    "calibrate": "certify a trained --model_dir's compute target or halting on its held-out rows",
    "evaluate": "the task metric, blocks executed and exits of a trained --model_dir",
    "predict": "labels, probabilities and blocks executed for --text or --input_file",
    "export": "a SavedModel (TF Serving) or TFLite file with the early exit inside",
}
_DATA = ["task", "data_dir", "train_file", "eval_file", "text_column", "text_pair_column",
         "label_column", "header", "sequence_length", "batch_size", "max_train_examples",
         "max_eval_examples", "seed", "padding", "holdout_fraction", "max_holdout_examples",
         "calibration_share", "calibration_file", "calibration_min_tokens"]
_EXIT = ["halting_rule", "halting_epsilon", "patience", "entropy_threshold"]
#: Each command's flags, grouped, for `dact-tf COMMAND --help`.
COMMAND_FLAGS = {
    "calibrate": {
        "Where": ["model_dir", "output_json"],
        "Data (the training data, to find the held-out rows)": [
            "data_dir", "train_file", "text_column", "text_pair_column", "label_column",
            "header", "batch_size", "calibration_file", "calibration_min_tokens"],
        "What to certify": ["target_blocks", "calibration_max_drop", "pass_through",
                            "halting_rule", "max_disagreement", "certified_risk",
                            "calibration_confidence",
                            "init_from"],
    },
    "train": {
        "Where": ["model_dir"],
        "Data": _DATA,
        "Model": ["recipe", "backbone", "method", "target_blocks", "calibration_max_drop",
                  "calibration_confidence", "max_disagreement", "certified_risk",
                  "pass_through", "tau",
                  "tau_warmup_epochs",
                  "ponder", "full_depth_stage", "distill_weight", "distill_teacher",
                  "head_loss_weight", "halting_bias",
                  "halting_confidence", "pooling", "shared_heads", "num_layers", "patience",
                  "entropy_threshold", "halting_rule", "regression_tolerance", "init_from",
                  "freeze_backbone"],
        "Training": ["epochs", "learning_rate", "optimizer", "weight_decay", "warmup_fraction",
                     "keep_best_epoch", "keep_checkpoints", "log_every_steps"],
        "Scale out": ["distribution_strategy", "tpu", "worker_timeout", "mixed_precision",
                      "jit_compile"],
    },
    "evaluate": {
        "Where": ["model_dir", "output_json", "per_block", "plot_dir", "max_layers"],
        "Data (default: what the model was trained with)": [
            "task", "data_dir", "eval_file", "max_eval_examples", "batch_size"],
        "Exit (override the trained setting)": _EXIT,
    },
    "predict": {
        "Where": ["model_dir", "text", "text_pair", "input_file", "output_json", "batch_size"],
        "Exit (override the trained setting)": _EXIT,
    },
    "export": {
        "Where": ["model_dir", "export_dir", "format", "version", "quantize", "text_signatures"],
        "Exit (override the trained setting)": _EXIT,
    },
}


#: Flags a command does not list but refuses itself, with a message of its own.
REFUSED_BY_COMMAND = {"calibrate": ("holdout_fraction", "max_holdout_examples",
                                    "calibration_share", "max_train_examples", "task")}


def foreign_flags(command):
    """The dact-tf flags given on the command line that `command` does not read."""
    own = {name for names in COMMAND_FLAGS[command].values() for name in names}
    own.update(REFUSED_BY_COMMAND.get(command, ()))
    every = {name for groups in COMMAND_FLAGS.values() for names in groups.values()
             for name in names}
    return sorted(name for name in every - own if FLAGS[name].present)


def usage():
    """`dact-tf --help`: the commands, one line each."""
    lines = ["Usage: dact-tf COMMAND [--flag=value ...]", "", "Commands:"]
    lines += [f"  {name:<9} {text}" for name, text in SUMMARIES.items()]
    lines += ["", "`dact-tf COMMAND --help` lists a command's flags and their defaults;",
              "`--verbosity=1` adds TensorFlow's logs and stack traces to errors."]
    return "\n".join(lines)


def command_help(command):
    """`dact-tf COMMAND --help`: the command's own flags, grouped, with defaults."""
    lines = [f"Usage: dact-tf {command} [--flag=value ...]", "", SUMMARIES[command] + "."]
    for group, names in COMMAND_FLAGS[command].items():
        lines += ["", f"{group}:"]
        for name in names:
            flag = FLAGS[name]
            default = "" if flag.default is None else f" (default: {flag.default_as_str})"
            lines.append(f"  --{name}{default}")
            lines.append(f"      {flag.help}")
    return "\n".join(lines)


def help_requested(argv):
    """`(True, text)` if argv asks for help, else `(False, None)`."""
    # --helpshort too: absl suggests it after a misspelled flag.
    asks = any(a in ("--help", "-h", "--help=true", "help", "--helpshort") for a in argv[1:])
    commands = [a for a in argv[1:] if a in SUMMARIES]
    if not asks:
        return False, None
    return True, command_help(commands[0]) if commands else usage()
