r"""Certified calibration in practice: do the certificates hold on the evaluation set?

For each group (the kept model directories of ONE task and seed) and each
bound EPS in `--epsilons`, it scores on the evaluation set (the task's
`validation` split: never trained, selected or calibrated on):

- `full` (mode `plain`): the plain full-depth fine-tune (`--method=static`);
  the reference of the compute target and of `agreement_with_full`;
- `static_k3` (or `static3`, any `static_kK`/`staticK`; mode `plain`);
- `dact`, mode `exact`: the DACT model as trained (tight rule: proven equal to
  its own full depth);
- `dact`, mode `target`: a fresh load, `calibration_run.calibrate` to half the
  blocks with the accuracy drop against `full` certified at most EPS on the
  calibration rows (`dact_tf.calibration.certify.certify_compute_target`);
- `dact`, mode `certified`: a fresh load, `certify.certify_halting` at EPS on the
  calibration rows (the most aggressive halting slack whose disagreement with
  the model's own full depth is certified at most EPS);
- `dact`, mode `target+certified`: both, as `calibrate(..., max_disagreement=
  EPS)` runs them (`dact-tf train/calibrate --halting_rule=certified`);
- `dact`, mode `certified-drop`: a fresh load,
  `calibration_run.calibrate_drop` (`--certified_risk=drop`): one
  certificate, the accuracy drop against `full` (regression: the mean
  absolute error above `full`'s, per score range) at most EPS, the halting
  shift and the learned score's threshold chosen together
  (`dact_tf.calibration.certified_drop`);
- `dact` and `pabee`, mode `certified-mean` (regression): a fresh load,
  `certify.certify_halting` with `certify.MeanDeviation(EPS)`: the mean
  distance of the early score from the model's own full-depth score, as a
  share of the score range, certified at most EPS;
- `deebert`, `pabee`: mode `trained` (their trained threshold) and mode
  `certified` at each EPS, if present.

Each point records the metric, the mean blocks and `full_depth_disagreement`
(rows whose answer differs from the model's OWN full-depth answer) on the
evaluation set, `agreement_with_full` (rows answered as the `full` model
answers), `drop_vs_full` (the evaluation-set accuracy drop against `full`,
P(worse) - P(better): what a classifier's compute target certifies; a
regressor's: `excess_error_vs_full`, its mean absolute error above `full`'s
as a share of the score range), the certificate
(certified, bound, rows at risk, rows), the mean blocks on the calibration
rows (the real loop; the certificate's replay is recorded beside it) and
`check`: whether the certified quantity, measured on the evaluation set, is
at most EPS. The evaluation rate is itself a sample: a certificate (a bound
on the population rate, 95 % confidence) is contradicted only when the
evaluation rate's own lower confidence bound (`eval_lower`) exceeds EPS.

The held-out rows are exactly training's: each group's `DataConfig` is the
stored `data` config of its `dact` model, with only its paths fixed (GLUE:
`--glue_dir`; custom TSV/CSV: the stored files, or `--data_override`), and
every model of the group must share the split (checked).

Resumable per point: each finished point is a JSON file under `--out_dir`
and is skipped when present; after each point the CSV and the Markdown are
rewritten, with every row of `--results_csv` that has no JSON file kept (so
a fresh clone, whose `--out_dir` is empty, adds a group to the committed
results instead of replacing them); one plot per group (metric vs mean
blocks) at the end.

Usage (from the repository root):
    PYTHONPATH=. python -m benchmarks.certified_study \
        --groups=qnli4k:0=runs/small/qnli,sst2:0=runs/study/sst2/seed0 \
        --glue_dir=GLUE_DIR --epsilons=0.005,0.01,0.02
"""

import contextlib
import csv
import gc
import glob
import hashlib
import json
import os
import re
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks import bench_utils  # noqa: E402
from benchmarks import pass_cache  # noqa: E402
from benchmarks import promise_check  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: The metric each GLUE task is reported with (as benchmarks/study.py); custom data: accuracy.
METRIC = {"sst2": "accuracy", "mrpc": "f1", "rte": "accuracy", "cola": "matthews_corrcoef",
          "stsb": "pearson", "qnli": "accuracy"}
METHOD_ORDER = ("full", "static", "dact", "deebert", "pabee")
MODE_ORDER = ("plain", "exact", "trained", "target", "certified", "target+certified",
              "certified-drop", "certified-mean")
CERTIFIED_MODES = ("certified", "target+certified")
CSV_KEYS = (
    "task", "seed", "method", "mode", "eps", "metric_name", "metric", "mean_blocks",
    "full_depth_disagreement", "agreement_with_full", "drop_vs_full", "check_quantity",
    "check", "eval_lower", "certified", "cert_kind", "cert_bound", "cert_at_risk",
    "cert_rows", "cert_observed_rate", "knob", "value", "target_certified", "target_bound",
    "target_at_risk", "target_better", "target_shift", "target_limited", "pass_through",
    "calibration_blocks", "certificate_blocks", "calibration_disagreement",
    "calibration_rows_shared", "eval_rows", "num_layers", "speedup_batch32", "speedup_batch1",
    "seconds", "group", "model_dir", "calibration_rows", "command", "full_depth_mean_deviation",
    "excess_error_vs_full",
)
#: CSV columns read back as numbers or booleans (`_point_from_csv`); the rest are strings.
_INT_KEYS = ("seed", "cert_at_risk", "cert_rows", "target_at_risk", "target_better",
             "pass_through", "eval_rows", "num_layers", "calibration_rows")
_BOOL_KEYS = ("check", "certified", "target_certified", "target_limited",
              "calibration_rows_shared")
_STR_KEYS = ("task", "method", "mode", "metric_name", "check_quantity", "cert_kind", "knob",
             "group", "model_dir", "command")

flags.DEFINE_list("groups", None, "NAME=DIR items: DIR holds one task and seed's model dirs "
                  "(full, dact; optionally deebert, pabee, static_k3/static3); NAME is "
                  "LABEL:SEED, e.g. qnli4k:0=runs/small/qnli.")
flags.DEFINE_list("epsilons", ["0.005", "0.01", "0.02"], "The bounds EPS: max_disagreement of "
                  "the certified halting, max_drop of the compute target.")
flags.DEFINE_float("confidence", 0.95, "The confidence of every certificate.")
flags.DEFINE_float("target_blocks", None, "DACT's compute target (None: half the blocks).")
flags.DEFINE_string("glue_dir", None, "GLUE folder (<TASK>/{train,dev}.tsv) for groups of GLUE "
                    "tasks: a model directory's stored data_dir is not reused (except the "
                    "sample bundled with dact_tf).")
flags.DEFINE_multi_string("data_override", [], "NAME:key=value;key=value: DataConfig fields of "
                          "group NAME to replace (e.g. qnli4k:0:eval_file=/data/test.tsv). "
                          "Repeatable.")
flags.DEFINE_list("methods", ["full", "static", "dact", "deebert", "pabee"],
                  "Which of the group's models to score (those present).")
flags.DEFINE_list("modes", [], "Only these modes' points (e.g. certified-drop,certified-mean); "
                  "empty: every mode. The rest stay to run.")
flags.DEFINE_string("out_dir", "runs/certified_study/points", "Finished points (JSON).")
flags.DEFINE_string("cache_dir", "runs/certified_study/cache", "Traces and full-depth answers "
                    "that a group's points repeat (`pass_cache`); empty: none.")
flags.DEFINE_string("results_csv", os.path.join(HERE, "results", "certified_study.csv"),
                    "The CSV.")
flags.DEFINE_string("results_md", os.path.join(HERE, "CERTIFIED_STUDY.md"), "The Markdown.")
flags.DEFINE_string("plot_dir", HERE, "Where certified_study_<group>.png go.")
flags.DEFINE_boolean("plot_only", False, "Only rewrite the CSV, Markdown and plots.")
flags.DEFINE_integer("verbose", 0, "1: progress counters of each pass.")
flags.DEFINE_integer("time_rows", 256, "Wall clock of each early-exit point against the same "
                     "model's full depth, interleaved in one run: this many evaluation rows at "
                     "batch 32 (0: no timing).", lower_bound=0)
flags.DEFINE_integer("time_rows_batch1", 64, "... and this many one at a time (0: none).",
                     lower_bound=0)
FLAGS = flags.FLAGS


# ---------------------------------------------------------------------------------------------
# Groups and their data.

def _parse_groups():
    groups = []
    for item in FLAGS.groups or []:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            raise app.UsageError(f"--groups item {item!r} is not NAME=DIR.")
        label, _, seed = name.partition(":")
        seed = seed or "0"
        if not seed.isdigit():
            raise app.UsageError(f"--groups item {item!r}: the seed {seed!r} is not an integer.")
        if not os.path.isdir(directory):
            raise app.UsageError(f"--groups item {item!r}: {directory} is not a directory.")
        groups.append({"name": name, "label": label, "seed": int(seed),
                       "dir": directory, "models": _group_models(directory)})
    return groups


def _group_models(directory):
    """`{method name: model dir}` of the finished model directories in `directory`."""
    models = {}
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if not os.path.exists(os.path.join(path, "model.keras")):
            continue  # not a model dir, or training has not finished
        static = re.fullmatch(r"static_?k?(\d+)", entry)
        if entry in ("full", "dact", "deebert", "pabee"):
            models[entry] = path
        elif static:  # the study's static_k3, or static3
            models[f"static_k{static.group(1)}"] = path
    return models


def _overrides(name):
    """`{field: value}` of `--data_override` items for group `name`."""
    import dataclasses

    from dact_tf.training import train_lib

    fields = {f.name: f.type for f in dataclasses.fields(train_lib.DataConfig)}
    out = {}
    for item in FLAGS.data_override:
        if not item.startswith(name + ":"):
            continue
        for pair in item[len(name) + 1:].split(";"):
            if not pair.strip():
                continue
            key, sep, value = pair.partition("=")
            key = key.strip()
            if not sep or key not in fields:
                raise app.UsageError(f"--data_override {item!r}: {pair!r} is not FIELD=VALUE "
                                     f"with a DataConfig field ({', '.join(fields)}).")
            kind = fields[key]
            if value.strip().lower() in ("", "none", "null"):
                out[key] = None
            elif kind is bool:
                out[key] = value.strip().lower() in ("1", "true", "yes")
            elif kind in (int, float):
                out[key] = kind(value)
            else:
                out[key] = value
    return out


def _is_builtin(path):
    from dact_tf import data

    builtin = os.path.realpath(os.path.dirname(data.builtin_sst2_dir()))
    return os.path.realpath(path).startswith(builtin + os.sep)


#: The stored data fields that must be equal across a group's models: the data and its tokens.
_SAME_FIELDS = ("task", "train_file", "eval_file", "sequence_length", "text_column",
                "text_pair_column", "label_column", "header")
#: The fields that decide how many rows are held out and kept apart: equal, or giving the
#: same counts (the held-out rows are the first `count` of one fixed permutation and the
#: calibration rows their last `apart`; e.g. max_holdout_examples went from 4,000 to
#: 8,000, which changes nothing for 4,000 training rows).
_COUNT_FIELDS = ("max_train_examples", "holdout_fraction", "max_holdout_examples",
                 "calibration_share", "calibration_file")


def _anchor(models):
    """The model whose stored data split and preprocessor a group uses: `dact`, or without
    one (a group of baselines only) `full`."""
    return "dact" if "dact" in models else "full"


def _data_config(group):
    """The group's `DataConfig`: its DACT model's stored one (without one, its full model's),
    paths fixed; checked across models."""
    from dact_tf.training import train_lib

    configs = {m: train_lib.read_config(d) for m, d in group["models"].items()}
    anchor = _anchor(configs)
    stored = dict(configs[anchor]["data"])
    label_names = configs[anchor]["label_names"]
    for method, config in configs.items():
        for key in _SAME_FIELDS:
            if config["data"].get(key) != stored.get(key):
                raise ValueError(
                    f"{group['name']}: {group['models'][method]} was trained with "
                    f"{key}={config['data'].get(key)!r}, the {anchor} model with "
                    f"{key}={stored.get(key)!r}: not one group.")
        if config["label_names"] != label_names:
            raise ValueError(f"{group['name']}: {method} has other labels than {anchor}.")
    vocabularies = {_file_hash(os.path.join(d, "vocab.txt")) for d in group["models"].values()}
    if len(vocabularies) > 1:
        raise ValueError(f"{group['name']}: the models' vocabularies differ.")
    if stored["task"] in train_lib.CUSTOM_TASKS:
        # dact-tf does not open file paths read from a model directory; these
        # directories are our own study's (trained by us from files we made),
        # so the stored train/eval files are reused when they exist.
        for key in ("train_file", "eval_file"):
            if stored.get(key) and not os.path.exists(stored[key]):
                stored[key] = None
    else:
        data_dir = stored.get("data_dir")
        if FLAGS.glue_dir:
            stored["data_dir"] = FLAGS.glue_dir
        elif not (data_dir and _is_builtin(data_dir) and os.path.isdir(data_dir)):
            raise app.UsageError(f"{group['name']}: a GLUE task ({stored['task']}): pass "
                                 "--glue_dir (stored data paths are not reopened).")
    stored.update(_overrides(group["name"]))
    if stored.get("calibration_file") and not os.path.isfile(stored["calibration_file"]):
        raise app.UsageError(
            f"{group['name']}: its dact model was trained with --calibration_file="
            f"{stored['calibration_file']}, not found: pass --data_override={group['name']}:"
            "calibration_file=PATH.")
    if stored["task"] in train_lib.CUSTOM_TASKS:
        for key in ("train_file", "eval_file"):
            if not stored.get(key):
                raise app.UsageError(
                    f"{group['name']}: {key} is missing (stored path absent): pass "
                    f"--data_override={group['name']}:{key}=PATH.")
    if not stored.get("holdout_fraction"):
        raise ValueError(f"{group['name']}: trained with --holdout_fraction=0: no calibration "
                         "rows to certify on.")
    data_config = train_lib.DataConfig(**stored)
    counts = None
    for method, config in configs.items():
        other = {k: config["data"].get(k) for k in _COUNT_FIELDS}
        if all(other[k] == stored.get(k) for k in _COUNT_FIELDS):
            continue
        counts = counts or _split_counts(data_config, label_names)
        theirs = _split_counts(train_lib.dataclasses.replace(data_config, **other), label_names)
        if theirs != counts:
            raise ValueError(
                f"{group['name']}: {group['models'][method]} held out other rows than the "
                f"{anchor} model ({', '.join(f'{k}={v!r}' for k, v in other.items())}: (train, selection, "
                f"calibration) rows {theirs}, the {anchor} model's {counts}): not one group.")
    return data_config, label_names


def _split_counts(data_config, label_names):
    """`(training, selection, calibration)` rows of a data config."""
    from dact_tf.data import tasks

    train, held = tasks.dataset_sizes(data_config, label_names)
    apart = tasks.calibration_rows(held, data_config)
    return train, held - apart, apart


def _file_hash(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _pass_cache(g):
    """The group's `pass_cache.PassCache` (keyed on its data config too), or a no-op."""
    if not FLAGS.cache_dir:
        return contextlib.nullcontext()
    data = hashlib.sha256(repr(g.data_config).encode()).hexdigest()[:12]
    return pass_cache.PassCache(os.path.join(FLAGS.cache_dir, f"{g.group['name']}_{data}"),
                                g.datasets)


def _datasets(data_config, preprocessor, label_names):
    from dact_tf.training import train_lib

    datasets = train_lib.make_datasets(data_config, preprocessor, label_names,
                                       splits=("holdout", "calibration", "validation"))
    # Tokenized once: every point reads the same rows, in the same order.
    return {split: ds.cache() for split, ds in datasets.items()}


# ---------------------------------------------------------------------------------------------
# Points.

def _point_name(group, method, mode, eps):
    name = f"{group['label']}_seed{group['seed']}_{method}_{mode.replace('+', '-')}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name + (f"_eps{eps:g}" if eps is not None else ""))


def _point_path(group, method, mode, eps):
    return os.path.join(FLAGS.out_dir, _point_name(group, method, mode, eps) + ".json")


def _plan(group, epsilons):
    """`[(method, mode, eps)]` of the group's points, in the order to run."""
    models = group["models"]
    wanted = set(FLAGS.methods)
    plan = []
    for method in sorted(models, key=_method_key):
        if promise_check.family(method) not in wanted:
            continue
        if method == "full" or method.startswith("static_k"):
            plan.append((method, "plain", None))
        elif method == "dact":
            plan.append((method, "exact", None))
        else:
            plan.append((method, "trained", None))
    for eps in epsilons:
        if "dact" in wanted:
            plan += [("dact", mode, eps) for mode in ("target", "certified", "target+certified")]
            plan.append(("dact", "certified-drop", eps))
            if METRIC.get(group["label"]) == "pearson":  # a regressor's mean distance
                plan.append(("dact", "certified-mean", eps))
        plan += [(m, "certified", eps) for m in ("deebert", "pabee") if m in models and m in wanted]
        if METRIC.get(group["label"]) == "pearson" and "pabee" in models and "pabee" in wanted:
            plan.append(("pabee", "certified-mean", eps))
    return [p for p in plan if not FLAGS.modes or p[1] in FLAGS.modes]


def _method_key(method):
    family = promise_check.family(method)
    return (METHOD_ORDER.index(family) if family in METHOD_ORDER else len(METHOD_ORDER), method)


def _answers(model, outputs):
    return outputs["scores"] if model.task == "regression" else outputs["predictions"]


class Group:
    """One group's data, `full` model and evaluation-set answers, loaded when first needed."""

    def __init__(self, group):
        from dact_tf.training import train_lib

        self.group = group
        self.data_config, self.label_names = _data_config(group)
        self.metric_task = train_lib.task_info(self.data_config, self.label_names)[3]
        self.metric_name = METRIC.get(self.data_config.task, "accuracy")
        init_from = (train_lib.read_config(group["models"]["dact"])["model"].get("init_from")
                     if "dact" in group["models"] else None)
        if init_from and os.path.realpath(init_from) != os.path.realpath(group["models"]["full"]):
            logging.warning("%s: the dact model was warm-started from %s, not from the group's "
                            "full model %s (the compute target's reference).", group["name"],
                            init_from, group["models"]["full"])
        self._datasets = None
        self._full = None
        self._full_answers = None
        # `{(method, split): answers}`: a model's own full-depth answers, which
        # no exit setting changes (DACT's a_N depends on the halting biases
        # only: not cached for the compute-target modes, which shift them).
        self.own_full = {}

    @property
    def datasets(self):
        if self._datasets is None:
            from dact_tf.training import train_lib

            models = self.group["models"]
            _, preprocessor, _ = train_lib.load_model_dir(models[_anchor(models)])
            self._datasets = _datasets(self.data_config, preprocessor, self.label_names)
        return self._datasets

    @property
    def full(self):
        if self._full is None:
            from dact_tf.training import train_lib

            self._full = train_lib.load_model_dir(self.group["models"]["full"])[0]
        return self._full

    @property
    def full_answers(self):
        """The `full` model's answers on the evaluation set (the agreement's reference)."""
        if self._full_answers is None:
            from dact_tf.evaluation import scoring as evaluation

            outputs, _ = evaluation.predict_dataset(self.full, self.datasets["validation"],
                                                    verbose=FLAGS.verbose)
            self._full_answers = _answers(self.full, outputs)
        return self._full_answers


def _run_point(g, method, mode, eps):
    """Loads the model fresh, applies the mode, and scores it."""
    from dact_tf.calibration import calibration_run
    from dact_tf.calibration import certify
    from dact_tf.training import train_lib

    group, ds = g.group, g.datasets
    model_dir = group["models"][method]
    model, _, config = train_lib.load_model_dir(model_dir)
    source = calibration_run.rows_source(g.data_config)
    shared = source == calibration_run.SHARED
    point = {"calibration": None, "halting": None}
    start = time.time()
    if mode == "certified-drop":
        # One certificate: the drop against `full`, the shift and the score chosen together.
        point["calibration"] = calibration_run.calibrate_drop(
            model, ds["holdout"], ds["calibration"], metric_task=g.metric_task, reference=g.full,
            max_drop=eps, confidence=FLAGS.confidence, rows_source=source, verbose=0)
    elif mode in ("target", "target+certified"):
        target = FLAGS.target_blocks or model.num_layers / 2.0
        result = calibration_run.calibrate(
            model, ds["holdout"], ds["calibration"], target_blocks=target,
            pass_through=train_lib.parse_pass_through(config["model"].get("pass_through", "auto"),
                                                      model.num_layers),
            metric_task=g.metric_task, reference=g.full, max_drop=eps,
            confidence=FLAGS.confidence,
            max_disagreement=eps if mode == "target+certified" else None, rows_source=source,
            verbose=0)
        point["halting"] = result.pop("halting", None)
        point["calibration"] = result
    elif mode in ("certified", "certified-mean"):
        # As `dact-tf calibrate`: the selection rows (when apart) fit DACT's score.
        point["halting"] = certify.certify_halting(
            model, ds["calibration"], max_disagreement=certify.halting_risk(
                eps, "mean_deviation" if mode == "certified-mean" else "disagreement"),
            confidence=FLAGS.confidence,
            shared=shared, verbose=FLAGS.verbose,
            fit_dataset=None if shared else ds["holdout"])
    point.update(_score(g, model, None if "target" in mode or "drop" in mode else method))
    point.update(_timing(g, model, mode))
    point.update(
        task=group["label"], seed=group["seed"], method=method, mode=mode, eps=eps,
        group=group["name"], num_layers=int(model.num_layers),
        exit_settings=model.exit_criterion.summary(),
        stored_init_from=config["model"].get("init_from"),
        model_dir=_relative(model_dir), seconds=round(time.time() - start, 1),
        command="PYTHONPATH=. python -m benchmarks.certified_study "
        + _command_line(),
    )
    point.update(_certificate_columns(point, eps))
    del model
    gc.collect()
    return point


def _command_line():
    """This run's flags as a user would type them from the repository root: the GLUE folder
    as GLUE_DIR, paths inside the repository relative to it."""
    def shown(arg):
        name, sep, value = arg.partition("=")
        if name == "--glue_dir" and sep:
            return f"{name}=GLUE_DIR"
        parts = [_relative(v) if os.path.isabs(v) else v for v in value.split(",")]
        return name + sep + ",".join(parts) if sep else arg

    return " ".join(shlex.quote(shown(a)) for a in sys.argv[1:])


def _timing(g, model, mode):
    """`speed_batch32`/`speed_batch1`: `measure_speedup` (early exit vs the same model's
    full depth, interleaved, best of 3 and 2 passes) on the first evaluation rows."""
    from dact_tf.evaluation import scoring as evaluation

    if mode == "plain":  # full depth or static truncation: nothing exits early
        return {}
    rows = g.datasets["validation"].unbatch()
    out = {}
    for key, count, batch, repeats in (("speed_batch32", FLAGS.time_rows, 32, 3),
                                       ("speed_batch1", FLAGS.time_rows_batch1, 1, 2)):
        if count:
            out[key] = evaluation.measure_speedup(model, rows.take(count).batch(batch),
                                                  repeats=repeats)
    return out


def _relative(path):
    """`path` relative to the repository root: the working directory (a run from a snapshot
    of the code works there), else this checkout."""
    path = os.path.abspath(path)
    for root in (os.getcwd(), ROOT):
        if path.startswith(root + os.sep):
            return os.path.relpath(path, root)
    return path


def _score(g, model, cache_key=None):
    """The evaluation-set metric, blocks and disagreements, and the calibration rows' blocks.

    `cache_key`: the method, where the model's own full-depth answers are
    those of the model as trained (reused across its points); None: computed.
    """
    import numpy as np

    from dact_tf.calibration import certify
    from dact_tf.evaluation import analysis
    from dact_tf.evaluation import scoring as evaluation

    ds, verbose = g.datasets, FLAGS.verbose

    def own_full(split, answers=None):
        if model.method == "static":
            return answers  # every row runs the same blocks: its answer is its full depth
        key = (cache_key, split)
        if cache_key is None or key not in g.own_full:
            outputs, _ = evaluation.predict_dataset(model, ds[split], full_depth=True,
                                                    verbose=verbose)
            if cache_key is None:
                return _answers(model, outputs)
            g.own_full[key] = _answers(model, outputs)
        return g.own_full[key]

    outputs, labels = evaluation.predict_dataset(model, ds["validation"], verbose=verbose)
    results = evaluation.results_from_outputs(model, outputs, labels, g.metric_task)
    answers = _answers(model, outputs)
    differ = certify.differs(model, answers, own_full("validation", answers))
    if cache_key == "full" and g._full_answers is None:
        g._full_answers = answers  # the `full` model's own point: the reference itself
    reference = g.full_answers
    worse, better = certify.against_reference(model, *map(np.asarray, (answers, reference, labels)))
    cal, _ = evaluation.predict_dataset(model, ds["calibration"], verbose=verbose)
    deviation = {}
    if model.task == "regression":  # the distance from its own full depth, per score range
        distance = analysis.score_distance(model, answers, own_full("validation", answers))
        # And what a regression compute target certifies: the mean absolute error above
        # `full`'s, per score range.
        excess = certify.excess_error(model, answers, reference, np.asarray(labels))
        deviation = {"full_depth_mean_deviation": float(distance.mean()),
                     "mean_deviation_lower": 1.0 - _mean_bound(1.0 - distance),
                     "excess_error_vs_full": float(excess.mean()),
                     "excess_error_lower": -_mean_bound(-excess, difference=True)}
    return {**deviation,
        "metric_name": g.metric_name,
        "metric": float(results[g.metric_name]),
        "metrics": {k: float(v) for k, v in results.items()
                    if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)},
        "mean_blocks": float(results["mean_layers_executed"]),
        "layers_histogram": results["layers_histogram"],
        "eval_rows": int(len(answers)),
        "full_depth_disagreement": float(differ.mean()),
        "full_depth_disagreement_rows": int(differ.sum()),
        "agreement_with_full": float((~certify.differs(model, answers, reference)).mean()),
        "drop_vs_full": float(worse.mean() - better.mean()),
        "worse_than_full_rows": int(worse.sum()), "better_than_full_rows": int(better.sum()),
        "calibration_blocks": float(cal["layers_executed"].mean()),
        "calibration_disagreement": float(
            certify.differs(model, _answers(model, cal),
                    own_full("calibration", _answers(model, cal))).mean()),
        "calibration_rows": int(len(cal["layers_executed"])),
    }


def _mean_bound(losses, difference=False):
    from dact_tf.calibration import risk_bounds

    bound = (risk_bounds.mean_difference_upper_bound if difference
             else risk_bounds.mean_upper_bound)
    return bound(losses, risk_bounds.delta_from_confidence(FLAGS.confidence))


def _certificate_columns(point, eps):
    """The flat CSV columns of a point's certificates and its evaluation-set check."""
    from dact_tf.calibration import certify
    from dact_tf.calibration import risk_bounds

    out = {}
    halting, calibration = point["halting"], point["calibration"]
    primary = (halting or {}).get("certificate") or (calibration or {}).get("certificate")
    if primary:
        out.update(certified=primary["certified"], cert_kind=primary["kind"],
                   cert_bound=primary["bound"], cert_at_risk=primary["at_risk"],
                   cert_rows=primary["rows"], cert_observed_rate=primary["observed_rate"],
                   knob=primary.get("knob"), value=primary.get("value"),
                   calibration_rows_shared=primary["calibration_rows"] == certify.SHARED)
    if halting:
        out["certificate_blocks"] = halting["mean_layers_executed"]
    if calibration:
        target = calibration.get("certificate") or {}
        out.update(target_certified=target.get("certified"), target_bound=target.get("bound"),
                   target_at_risk=target.get("at_risk"), target_better=target.get("better"),
                   target_shift=calibration.get("shift"),
                   target_limited=calibration.get("limited"),
                   pass_through=calibration.get("pass_through"))
        if not halting:
            out["certificate_blocks"] = calibration.get("mean_layers_executed")
    delta = risk_bounds.delta_from_confidence(FLAGS.confidence)
    n = point["eval_rows"]
    if point["mode"] == "certified-mean":
        # The halting certificate: E|score - own full-depth score| / range <= EPS.
        out.update(check_quantity="full_depth_mean_deviation",
                   check=point["full_depth_mean_deviation"] <= eps,
                   eval_lower=point["mean_deviation_lower"])
    elif point["mode"] in CERTIFIED_MODES:
        # The halting certificate: P(answer != own full depth) <= EPS.
        out.update(check_quantity="full_depth_disagreement",
                   check=point["full_depth_disagreement"] <= eps,
                   eval_lower=risk_bounds.lower_bound(point["full_depth_disagreement_rows"], n,
                                                      delta))
    elif point["mode"] in ("target", "certified-drop") and "excess_error_lower" in point:
        # A regressor's drop certificate: the mean excess error against full <= EPS.
        out.update(check_quantity="excess_error_vs_full",
                   check=point["excess_error_vs_full"] <= eps,
                   eval_lower=point["excess_error_lower"])
    elif point["mode"] in ("target", "certified-drop"):
        # The compute target's certificate: P(worse) - P(better) against full <= EPS.
        worse, better = point["worse_than_full_rows"], point["better_than_full_rows"]
        lower = (risk_bounds.lower_bound(worse, n, delta / 2)
                 - risk_bounds.upper_bound(better, n, delta / 2))
        out.update(check_quantity="drop_vs_full", check=point["drop_vs_full"] <= eps,
                   eval_lower=lower)
    elif point["mode"] == "exact":
        # Proven, not certified: no row may differ from the model's own full depth.
        out.update(check_quantity="full_depth_disagreement",
                   check=point["full_depth_disagreement_rows"] == 0)
    return out


def _write_point(path, point):
    import numpy as np

    def default(value):
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"not JSON-able: {type(value).__name__}")

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(point, f, indent=2, sort_keys=True, default=default)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Outputs.

def _collect_rows():
    """The finished points: `--out_dir`'s JSON files, and every row of `--results_csv`
    that has none (a fresh clone keeps the committed points; a point rerun replaces its
    row)."""
    rows = {}
    for path in sorted(glob.glob(os.path.join(FLAGS.out_dir, "*.json"))):
        with open(path) as f:
            point = json.load(f)
        rows[_identity(point)] = point
    if os.path.exists(FLAGS.results_csv):
        with open(FLAGS.results_csv, newline="") as f:
            for record in csv.DictReader(f):
                point = _point_from_csv(record)
                rows.setdefault(_identity(point), point)
    return sorted(rows.values(), key=_row_key)


def _identity(r):
    return (r["task"], int(r["seed"]), r["method"], r["mode"], r["eps"])


def _point_from_csv(record):
    """A point as the outputs read it, from its CSV row (`_write_outputs`' inverse)."""
    def value(key):
        text = record.get(key, "")
        if text == "":
            return None
        if key in _STR_KEYS:
            return text
        if key in _BOOL_KEYS:
            return text == "True"
        return int(text) if key in _INT_KEYS else float(text)

    r = {k: value(k) for k in CSV_KEYS}
    for key in ("speed_batch32", "speed_batch1"):
        speedup = r.pop(f"speedup_{key[6:]}")
        if speedup is not None:
            r[key] = {"speedup": speedup}
    r["halting"] = r["calibration"] = None
    if r["cert_kind"] == "halting":
        r["halting"] = {"mean_layers_executed": r["certificate_blocks"], "certificate": {
            "kind": "halting", "certified": r["certified"], "bound": r["cert_bound"],
            "at_risk": r["cert_at_risk"], "rows": r["cert_rows"], "knob": r["knob"],
            "value": r["value"]}}
    if r["target_certified"] is not None:
        r["calibration"] = {
            "shift": r["target_shift"], "limited": r["target_limited"],
            "pass_through": r["pass_through"], "certificate": {
                "kind": "compute_target", "certified": r["target_certified"],
                "bound": r["target_bound"], "at_risk": r["target_at_risk"],
                "better": r["target_better"], "rows": r["cert_rows"],
                # The primary certificate's setting, else (under a halting one) the shift.
                "value": r["target_shift"] if r["halting"] else r["value"]}}
    return r


def _row_key(r):
    mode = MODE_ORDER.index(r["mode"]) if r["mode"] in MODE_ORDER else len(MODE_ORDER)
    return (r["task"], r["seed"], r["eps"] is not None, r["eps"] or 0.0,
            _method_key(r["method"]), mode)


def _csv_value(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _write_outputs(rows, plots):
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.results_csv)), exist_ok=True)
    with open(FLAGS.results_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_KEYS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _csv_value(_flat(r).get(k)) for k in CSV_KEYS} for r in rows)
    bench_utils.write_generated_markdown(FLAGS.results_md, _markdown(rows))
    if plots:
        os.makedirs(FLAGS.plot_dir, exist_ok=True)
        _plot(rows)


def _flat(r):
    """A point with its measured speedups as plain columns."""
    return {**r, **{f"speedup_{k[6:]}": r[k]["speedup"] for k in ("speed_batch32",
                                                                  "speed_batch1") if r.get(k)}}


def _groups(rows):
    out = {}
    for r in rows:
        out.setdefault((r["task"], r["seed"]), []).append(r)
    return out


def _yes(value):
    return "-" if value is None else ("yes" if value else "**no**")


def _markdown(rows):
    env = bench_utils.environment()
    confidence = f"{FLAGS.confidence:.0%}"
    lines = [
        "# Certified calibration on the evaluation set: DACT, DeeBERT and PABEE",
        "",
        "Generated by `benchmarks/certified_study.py` from its finished points (every row, with "
        "more columns, in `results/certified_study.csv`). Command of the last run, from the "
        "repository root:",
        "",
        "    PYTHONPATH=. python -m benchmarks.certified_study "
        + _command_line(),
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_cores']} cores (shared with a background "
        f"training job; load average {env['load_average_at_start'][0]:.1f} when last written), "
        f"{', '.join(env['gpus']) or 'no GPU'}; TensorFlow {env['tensorflow']}, Keras "
        f"{env['keras']}; dact_tf at commit {env['git_commit'][:10]}"
        + (" with uncommitted changes" if env["dact_tf_uncommitted_changes"] else "")
        + f"; last written {env['date_utc']}.",
        "",
        f"Certificates at {confidence} confidence on the calibration rows (held out of "
        "training and of the best-epoch choice); every other figure on the evaluation set "
        "(never trained, selected or calibrated on). Modes: `plain` (as trained, full depth or "
        "static truncation), `exact` (DACT as trained: its tight rule is proven equal to its "
        "own full depth), `trained` (a baseline's trained threshold), `target` (DACT "
        "calibrated to half the blocks, its accuracy drop against `full` certified at most "
        "EPS), `certified` (the most aggressive exit threshold whose disagreement with the "
        "model's own full depth is certified at most EPS), `target+certified` (both, in that "
        "order, each on its own random half of the calibration rows since 2026-12-07; "
        "earlier rows certified both on every row), `certified-drop` (one certificate: the "
        "accuracy drop against `full` at most EPS, DACT's halting shift and learned score's "
        "threshold chosen together for the fewest blocks), `certified-mean` (regression: the most aggressive exit threshold whose "
        "mean distance from the model's own full-depth score, as a share of the score range, "
        "is certified at most EPS; its *≤ EPS* and *lower* are on that mean).",
        "",
        "Columns: *blocks* and *cal. blocks*: mean blocks on the evaluation and calibration "
        "rows; *disagr.*: evaluation rows whose answer differs from the model's own full-depth "
        "answer; *agree full*: rows answered as the separately fine-tuned `full` model answers; "
        "*drop vs full*: P(worse) - P(better) against `full` (the compute target's quantity); "
        "*≤ EPS*: the certified quantity measured on the evaluation set is at most EPS "
        "(certified modes: disagreement; `target`, `certified-drop`: drop vs full; `exact`: no "
        "row differs; *no claim*: the certificate was not given, the model fell back to its "
        "safe setting). The evaluation rate is a sample too: *lower* is its one-sided lower "
        f"{confidence} bound; only a lower bound above EPS contradicts a certificate. "
        "*speed b32 / b1*: wall-clock speedup over the same model at full depth, measured "
        "interleaved in one run on the first evaluation rows (`--time_rows` at batch 32, "
        "`--time_rows_batch1` one at a time), on a machine shared with background training: "
        "read ratios against the ideal `6 / blocks`, not absolute times. "
        "*certificate*: certified or not, its upper bound, rows at risk / calibration rows "
        "(`target`: worse rows, less better ones), and the setting chosen.",
    ]
    lines += _across_seeds(rows)
    lines += promise_check.section(_groups(rows), promise_check.sweep_points(
        FLAGS.results_csv.replace(".csv", "_sweeps.csv"), _parse_groups()))
    for (task, seed), group in _groups(rows).items():
        first = group[0]
        lines += [
            "",
            f"## {task}, seed {seed}",
            "",
            f"`{os.path.dirname(first['model_dir'])}`: {first['eval_rows']} evaluation rows, "
            f"{first['calibration_rows']} calibration rows, {first['num_layers']} blocks."
            + "".join(f" Points from `{c}`." for c in sorted({r["command"] for r in group
                                                              if r.get("command")})),
            "",
            "| method | mode | EPS | metric | blocks | cal. blocks | disagr. | ≤ EPS | lower "
            "| agree full | drop vs full | speed b32 / b1 | certificate |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in group:
            lines.append(
                f"| {r['method']} | {r['mode']} | {_fmt(r['eps'], 'g')} "
                f"| {r['metric_name']} {r['metric']:.4f} | {r['mean_blocks']:.2f} "
                f"| {r['calibration_blocks']:.2f} | {r['full_depth_disagreement']:.4f} "
                f"| {_check_cell(r)} "
                f"| {_fmt(r.get('eval_lower'), '.4f')} "
                f"| {r['agreement_with_full']:.4f} | {r['drop_vs_full']:+.4f} "
                f"| {_speed_cell(r)} | {_certificate_cell(r)} |")
    return "\n".join(lines)


def _across_seeds(rows):
    """The summary over seeds: one row per task, method, mode and EPS."""
    import numpy as np

    cells = {}
    for r in rows:
        cells.setdefault((r["task"], r["method"], r["mode"], r["eps"]), []).append(r)
    lines = [
        "", "## Across seeds", "",
        "Mean ± standard deviation over the seeds (n) of each task; *within EPS*: the certified "
        "quantity stayed within EPS on the evaluation set in every seed (certified modes: the "
        "disagreement with the model's own full depth; `target`: the drop against `full`), "
        "*worst*: its largest value over the seeds; *speed b32*: mean measured speedup.", "",
        "| task | method | mode | EPS | n | metric | blocks | agree full | drop vs full "
        "| within EPS | worst | speed b32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, method, mode, eps), group in cells.items():
        metric = np.array([r["metric"] for r in group])
        blocks = np.array([r["mean_blocks"] for r in group])
        # Each seed's own certified quantity (a group may mix definitions across runs).
        measured = [r[r["check_quantity"]] for r in group if r.get("check_quantity")]
        worst = max(measured) if measured else None
        checks = [r.get("check") for r in group]
        within = "-" if any(c is None for c in checks) else _yes(all(checks))
        speeds = [r["speed_batch32"]["speedup"] for r in group if r.get("speed_batch32")]
        lines.append(
            f"| {task} | {method} | {mode} | {_fmt(eps, 'g')} | {len(group)} "
            f"| {group[0]['metric_name']} {metric.mean():.4f} ± {metric.std():.4f} "
            f"| {blocks.mean():.2f} ± {blocks.std():.2f} "
            f"| {np.mean([r['agreement_with_full'] for r in group]):.4f} "
            f"| {np.mean([r['drop_vs_full'] for r in group]):+.4f} | {within} "
            f"| {_fmt(worst, '.4f')} "
            f"| {f'{np.mean(speeds):.2f}x' if speeds else '-'} |")
    return lines


def _check_cell(r):
    """`check`; where the certificate it tests was not given, the model makes no claim."""
    cell = _yes(r.get("check"))
    if r.get("check") is not None and r["mode"] != "exact" and not r.get("certified"):
        cell = cell.replace("**", "") + " (no claim)"
    return cell


def _speed_cell(r):
    """Measured speedups over the model's own full depth at batch 32 and batch 1."""
    cells = [f"{r[k]['speedup']:.2f}x" if r.get(k) else "-"
             for k in ("speed_batch32", "speed_batch1")]
    return "-" if cells == ["-", "-"] else " / ".join(cells)


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _certificate_cell(r):
    parts = []
    target = (r.get("calibration") or {}).get("certificate")
    if target:
        limited = ", limited" if r.get("target_limited") else ""
        parts.append(
            f"target {'certified' if target['certified'] else '**not certified**'} "
            f"(bound {target['bound']:+.4f}, {target['at_risk']}-{target['better']}/"
            f"{target['rows']}, shift {target['value']:g}{limited})")
    halting = (r.get("halting") or {}).get("certificate")
    if halting:
        parts.append(
            f"halting {'certified' if halting['certified'] else '**not certified**'} "
            f"(bound {halting['bound']:.4f}, {halting['at_risk']}/{halting['rows']}, "
            f"{halting['knob']}={halting['value']:g})")
    return "; ".join(parts) or "-"


def _plot(rows):
    plt = bench_utils.pyplot()
    if plt is None:
        logging.warning("No plots: matplotlib is missing.")
        return
    colours = {"plain": "tab:gray", "exact": "tab:blue", "trained": "tab:brown",
               "target": "tab:orange", "certified": "tab:green", "target+certified": "tab:red",
               "certified-drop": "tab:cyan", "certified-mean": "tab:olive"}
    markers = {"full": "s", "static": "v", "dact": "o", "deebert": "^", "pabee": "D"}
    for (task, seed), group in _groups(rows).items():
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        seen, notes = set(), {}
        for r in group:
            family = promise_check.family(r["method"])
            label = f"{r['method']} {r['mode']}"
            # Later modes smaller and on top: points at one place stay visible.
            order = MODE_ORDER.index(r["mode"]) if r["mode"] in MODE_ORDER else 0
            ax.scatter(r["mean_blocks"], r["metric"], color=colours.get(r["mode"], "k"),
                       marker=markers.get(family, "x"), s=110 - 12 * order,
                       label=None if label in seen else label, zorder=3 + order)
            seen.add(label)
            if r["eps"] is not None:
                # Points of one method and mode at one place share one note: "EPS, EPS".
                key = (round(r["mean_blocks"], 3), round(r["metric"], 4), r["method"], r["mode"])
                notes.setdefault(key, []).append(f"{r['eps']:g}")
        stacked = {}
        for (x, y, method, mode), values in notes.items():
            row = stacked.setdefault((x, y), 0)
            stacked[(x, y)] += 1
            ax.annotate(", ".join(values), (x, y), textcoords="offset points",
                        xytext=(5, 3 - 9 * row), fontsize=6.5,
                        color=colours.get(mode, "k"))
        ax.set_xlabel("mean blocks executed (evaluation set)")
        ax.set_ylabel(f"evaluation {group[0]['metric_name']}")
        ax.set_title(f"{task}, seed {seed}: certified modes (annotation: EPS)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", markerscale=0.6)
        fig.tight_layout()
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"certified_study_{task}_seed{seed}.png")
        fig.savefig(os.path.join(FLAGS.plot_dir, name), dpi=120)
        plt.close(fig)
    _plot_summary(plt, rows)


def _plot_summary(plt, rows):
    """`certified_study_summary.png`: blocks at each certified EPS, per task, over the seeds."""
    import numpy as np

    series = (("dact", "certified", "tab:green", "o"), ("dact", "target+certified", "tab:red", "o"),
              ("dact", "target", "tab:orange", "s"), ("dact", "certified-drop", "tab:cyan", "P"),
              ("deebert", "certified", "tab:purple", "^"),
              ("pabee", "certified", "tab:brown", "D"))
    tasks = sorted({r["task"] for r in rows if r["eps"] is not None})
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method, mode, colour, marker in series:
            points = {}
            for r in rows:
                if (r["task"], r["method"], r["mode"]) == (task, method, mode):
                    points.setdefault(r["eps"], []).append(r["mean_blocks"])
            if not points:
                continue
            eps = sorted(points)
            ax.errorbar([100 * e for e in eps], [np.mean(points[e]) for e in eps],
                        yerr=[np.std(points[e]) for e in eps], color=colour,
                        marker=marker, capsize=3, label=f"{method} {mode}")
        seeds = sorted({r["seed"] for r in rows if r["task"] == task})
        ax.set_title(f"{task} (seeds {', '.join(map(str, seeds))})", fontsize=9)
        ax.set_xlabel("EPS (%)")
        ax.set_ylim(1, 6.2)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean blocks (evaluation set)")
    handles = {}
    for ax in axes[0]:  # every series, from whichever task has it
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[0][-1].legend(handles.values(), handles.keys(), fontsize=6.5, loc="lower left")
    fig.tight_layout()
    fig.savefig(os.path.join(FLAGS.plot_dir, "certified_study_summary.png"), dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------

def main(argv):
    del argv
    try:
        epsilons = [float(e) for e in FLAGS.epsilons]
    except ValueError:
        raise app.UsageError(f"--epsilons must be numbers, got {FLAGS.epsilons}.") from None
    if not all(0.0 < e < 1.0 for e in epsilons):
        raise app.UsageError("Every --epsilons value must be in (0, 1).")
    unknown = sorted(set(FLAGS.modes) - set(MODE_ORDER))
    if unknown:
        raise app.UsageError(f"--modes: unknown {', '.join(unknown)}; use {', '.join(MODE_ORDER)}.")
    if not FLAGS.groups and not FLAGS.plot_only:
        raise app.UsageError("--groups is required (NAME=DIR,...).")
    groups = _parse_groups()
    names = {g["name"] for g in groups}
    for item in FLAGS.data_override:
        if not any(item.startswith(n + ":") for n in names):
            raise app.UsageError(f"--data_override {item!r} names no group of --groups.")
    if not FLAGS.plot_only:
        for group in groups:
            needed = ("full", "dact") if "dact" in FLAGS.methods else ("full",)
            missing = [m for m in needed if m not in group["models"]]
            if missing:
                raise app.UsageError(f"{group['dir']} has no finished {' or '.join(missing)} "
                                     "model directory.")
        for group in groups:
            todo = [p for p in _plan(group, epsilons)
                    if not os.path.exists(_point_path(group, *p))]
            logging.info("%s: %d points to run (%s)", group["name"], len(todo),
                         ", ".join(sorted(group["models"])))
            if not todo:
                continue
            g = Group(group)
            for method, mode, eps in todo:
                logging.info("%s %s %s eps=%s", group["name"], method, mode, eps)
                with _pass_cache(g) as cache:
                    point = _run_point(g, method, mode, eps)
                if cache:
                    logging.info("  %d passes read back, %d run", cache.hits, cache.misses)
                _write_point(_point_path(group, method, mode, eps), point)
                logging.info("  %s %.4f at %.2f blocks, disagreement %.4f, check %s (%.0f s)",
                             point["metric_name"], point["metric"], point["mean_blocks"],
                             point["full_depth_disagreement"], point.get("check"),
                             point["seconds"])
                _write_outputs(_collect_rows(), plots=False)
            del g
            gc.collect()
    rows = _collect_rows()
    if not rows:
        logging.warning("No finished points under %s.", FLAGS.out_dir)
        return
    _write_outputs(rows, plots=True)


if __name__ == "__main__":
    app.run(main)
