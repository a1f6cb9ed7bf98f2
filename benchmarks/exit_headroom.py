r"""How few blocks could any exit rule use on these heads? And does another score get closer?

For each group of kept models (`benchmarks/certified_study.py`'s `--groups`:
a task and seed's `full`, `dact` and, if present, `deebert` directories) this
runs every block once on the calibration rows and the evaluation set and asks,
for DACT (its exit answer after block n is the accumulated `a_n`) and for
DeeBERT (the block's own answer `y_n`):

- **oracle**: the fewest mean blocks any exit rule on these answers could
  use with at most EPS of the evaluation rows answered differently from the
  model's own full depth. A row's oracle block is the first block from which
  its answer equals the full-depth answer; with a budget of EPS the rows with
  the latest oracle blocks are let go after block 1. No rule that reads the
  same answers can do better: if the certified rule is near this floor, only
  better heads (training) can lower the blocks; if it is far above it, the
  exit score is what costs.
- **certified rules**: the most aggressive setting on an ordered grid whose
  Clopper-Pearson upper bound (95 %) on the calibration rows' disagreement
  with full depth is at most EPS (fixed-sequence testing, as
  `dact_tf.calibration.certify.certify_halting`), scored on the evaluation set.
  DACT: its certified rule with the slack of the tight test (no rows to fit
  on), with the learned consistency score fitted on the selection rows
  (`dact_tf.exits.consistency`: what `dact-tf train` and `calibrate` use), and
  DeeBERT's kind of rule on DACT's answers (stop once the top probability of
  `a_n` reaches T). DeeBERT: its entropy threshold.

Every figure comes from one trace per split (replayed by the exit methods' own
`replay_exits`); nothing is retrained. Writes
`EXIT_HEADROOM.md` and `results/exit_headroom.csv` next to this file.

Usage (from the repository root):
    PYTHONPATH=. python -m benchmarks.exit_headroom --glue_dir=GLUE_DIR \
        --groups=sst2:0=runs/study/sst2/seed0,qnli4k:0=runs/small/qnli
"""

import csv
import gc
import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks import bench_utils  # noqa: E402
from benchmarks import certified_study as cs  # noqa: E402  (its flags: --groups, --glue_dir, ...)
from dact_tf.exits import consistency  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

flags.DEFINE_string("headroom_md", os.path.join(HERE, "EXIT_HEADROOM.md"), "The Markdown.")
flags.DEFINE_string("headroom_csv", os.path.join(HERE, "results", "exit_headroom.csv"),
                    "The CSV.")
flags.DEFINE_string("trace_dir", None, "Keep each model's traces here (NPZ) and reuse them.")
FLAGS = flags.FLAGS

CSV_KEYS = ("task", "seed", "method", "rule", "eps", "certified", "knob", "cal_blocks",
            "cal_disagreement", "blocks", "disagreement", "metric_name", "metric",
            "agreement_with_full", "drop_vs_full", "rows")


def oracle_blocks(preds, eps):
    """The fewest mean blocks with at most `eps` of rows differing from the last block's answer.

    Args:
        preds: int `[N, rows]`, each block's exit prediction (the last: full depth).
        eps: float, the share of rows allowed to differ.

    Returns:
        `(mean_blocks, exit_blocks)`: float, and int `[rows]` 1-based.
    """
    import numpy as np

    rows = preds.shape[1]
    # A row may stop at the first block whose answer equals the last one.
    exits = (preds == preds[-1]).argmax(axis=0) + 1
    budget = int(np.floor(eps * rows + 1e-9))
    if budget:
        latest = np.argsort(-exits, kind="stable")[:budget]
        exits[latest] = 1
    return float(exits.mean()), exits


def first_passing(scores, grid):
    """int `[len(grid), rows]`: the 1-based first block whose score reaches each threshold.

    `scores` is `[N, rows]` (higher: more sure); the last block always stops.
    """
    import numpy as np

    out = []
    for t in grid:
        ok = scores >= t
        ok[-1] = True
        out.append(ok.argmax(axis=0) + 1)
    return np.stack(out) if out else np.zeros((0, scores.shape[1]), int)


def _exits(model, traces, setting, split, cache):
    """int `[rows]` 1-based exit blocks of one setting: a criterion (replayed once per split,
    kept in `cache` for the other EPS) or given exits."""
    from dact_tf.evaluation import analysis

    if isinstance(setting, dict):
        return setting[split]
    key = (id(setting), split)
    if key not in cache:
        cache[key] = analysis.replay_exits(model, traces[split], 0.0, setting)[0]
    return cache[key]


def certify_setting(model, traces, settings, preds, eps, delta, cache):
    """Fixed-sequence testing of `settings` (safest first) on the calibration rows.

    Returns:
        `(index, passed)`: the last setting kept (0 when none passed: then
        not certified).
    """
    import numpy as np

    from dact_tf.calibration import risk_bounds

    cal = preds["calibration"]
    rows = cal.shape[1]
    kept = -1
    for i, (_, setting) in enumerate(settings):
        exits = _exits(model, traces, setting, "calibration", cache)
        at_risk = int((cal[exits - 1, np.arange(rows)] != cal[-1]).sum())
        if risk_bounds.upper_bound(at_risk, rows, delta) > eps:
            break
        kept = i
    return max(kept, 0), kept >= 0


def _predictions(answers):
    return answers.argmax(-1)


def _rule_rows(base, split_answers, exits_by_split, eps, knob, certified, metric_fn, full_ref,
               labels):
    """One CSV row from exit blocks on the calibration rows and the evaluation set."""
    import numpy as np

    row = dict(base, eps=eps, knob=knob, certified=certified)
    for split, prefix in (("calibration", "cal_"), ("validation", "")):
        preds = _predictions(split_answers[split])
        exits = exits_by_split[split]
        idx = np.arange(preds.shape[1])
        chosen = preds[exits - 1, idx]
        row[prefix + "blocks"] = float(exits.mean())
        row[prefix + "disagreement"] = float((chosen != preds[-1]).mean())
        if split == "validation":
            row["metric"] = float(metric_fn(chosen))
            row["agreement_with_full"] = float((chosen == full_ref).mean())
            worse = (chosen != labels) & (full_ref == labels)
            better = (chosen == labels) & (full_ref != labels)
            row["drop_vs_full"] = float(worse.mean() - better.mean())
            row["rows"] = int(len(chosen))
    return row


def _traces(model, ds, name):
    """`({split: trace}, evaluation labels)` for the selection, calibration and evaluation rows."""
    import numpy as np

    from dact_tf.evaluation import analysis

    path = FLAGS.trace_dir and os.path.join(FLAGS.trace_dir, name + ".npz")
    if path and os.path.exists(path):
        data = np.load(path)
        traces = {}
        for key in data.files:
            split, _, field = key.partition("/")
            if split != "labels":
                traces.setdefault(split, {})[field] = data[key]
        return traces, data["labels/validation"]
    traces, labels = {}, None
    for split in ("holdout", "calibration", "validation"):
        traces[split], y = analysis.trace_dataset(model, ds[split], verbose=FLAGS.verbose)
        if split == "validation":
            labels = y
    if path:
        os.makedirs(FLAGS.trace_dir, exist_ok=True)
        arrays = {f"{s}/{k}": v for s, t in traces.items() for k, v in t.items()}
        np.savez_compressed(path, **arrays, **{"labels/validation": labels})
    return traces, labels


def _group_rows(group, epsilons, delta):
    import numpy as np

    from dact_tf.evaluation import analysis
    from dact_tf.training import train_lib

    g = cs.Group(group)
    ds = g.datasets
    full_ref = np.asarray(g.full_answers)
    base_info = {"task": group["label"], "seed": group["seed"], "metric_name": g.metric_name}
    rows = []
    for method in ("dact", "deebert"):
        if method not in group["models"]:
            continue
        first = len(rows)
        model = train_lib.load_model_dir(group["models"][method])[0]
        if model.task == "regression":
            logging.info("%s: regression, skipped (the oracle needs classes).", group["name"])
            return rows
        traces, labels = _traces(model, ds, f"{group['label']}_seed{group['seed']}_{method}")
        answers = {s: model.exit_criterion.answers_in(t) for s, t in traces.items()}

        def metric_fn(preds):
            result = analysis.task_metrics(g.metric_task, labels, preds)
            return result[g.metric_name]

        base = dict(base_info, method=method)
        tail = (metric_fn, full_ref, labels)
        splits = ("calibration", "validation")
        preds = {s: _predictions(a) for s, a in answers.items()}
        context = model.encoder.exit_context
        # rule -> [(knob label, criterion or per-split exits)], safest setting first.
        # DACT without rows to fit on (the slack of the tight test); the others as
        # `certify_halting` runs them with the selection rows apart (DeeBERT: the quantiles
        # of their entropies).
        rules = {"certified (slack)" if method == "dact" else "certified": [
            (f"{k}={v:.4g}", c) for k, v, c in model.exit_criterion.certified_grid(
                model.num_layers, fit_trace=None if method == "dact" else traces["holdout"],
                context=context)]}
        if method == "dact":
            rules["certified (learned)"] = [
                (f"{k}={v:.4g}", c) for k, v, c in model.exit_criterion.certified_grid(
                    model.num_layers, fit_trace=traces["holdout"], context=context)]
            # DeeBERT's kind of rule on DACT's answers: the top probability of a_n, on
            # thresholds from the selection rows' own values.
            top = {s: a.max(-1) for s, a in answers.items()}
            grid = consistency.threshold_grid(top["holdout"])
            rules["top probability"] = [("never", {s: np.full(preds[s].shape[1], model.num_layers)
                                                   for s in splits})] + [
                (f"T={t:.4g}", {s: first_passing(top[s], [t])[0] for s in splits})
                for t in grid]
        replays = {}  # (setting, split) -> exits, shared by the EPS
        for eps in epsilons:
            # The oracle (on the evaluation set itself: a floor, not a rule).
            rows.append(_rule_rows(dict(base, rule="oracle"), answers,
                                   {s: oracle_blocks(preds[s], eps)[1] for s in splits},
                                   eps, "-", "-", *tail))
            for rule, settings in rules.items():
                index, ok = certify_setting(model, traces, settings, preds, eps, delta, replays)
                knob, chosen = settings[index]
                rows.append(_rule_rows(dict(base, rule=rule), answers,
                                       {s: _exits(model, traces, chosen, s, replays)
                                        for s in splits},
                                       eps, knob, ok, *tail))
        for r in rows[first:]:
            logging.info("%s %s %s eps=%s: %.2f blocks (cal %.2f), disagreement %.4f, %s %.4f",
                         group["name"], r["method"], r["rule"], r["eps"], r["blocks"],
                         r["cal_blocks"], r["disagreement"], r["metric_name"], r["metric"])
        del model
        gc.collect()
    return rows


def _markdown(rows, command):
    env = bench_utils.environment()
    lines = [
        "# Exit headroom: the fewest blocks any exit rule could use, and what certified rules use",
        "",
        "Generated by `benchmarks/exit_headroom.py` (every row in `results/exit_headroom.csv`). "
        "Command, from the repository root:",
        "",
        "    " + command,
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_cores']} cores, no GPU; TensorFlow "
        f"{env['tensorflow']}, Keras {env['keras']}; dact_tf at commit {env['git_commit'][:10]}; "
        f"last written {env['date_utc']}.",
        "",
        "*oracle*: the floor of any exit rule reading the same answers with at most EPS of the "
        "evaluation rows differing from the model's own full depth (computed on the evaluation "
        "rows themselves, so it is not a rule). *certified* rules: the threshold is chosen on "
        "the calibration rows (Clopper-Pearson, 95 %, fixed sequence) and scored on the "
        "evaluation set. *disagr.*: evaluation rows whose answer differs from the model's own "
        "full depth; *drop vs full*: P(worse) - P(better) against the separately fine-tuned "
        "full-depth model.",
        "",
    ]
    for (task, seed), group_rows in cs._groups(rows).items():
        lines += [f"## {task}, seed {seed}", "",
                  "| method | rule | EPS | certified | setting | blocks | cal. blocks | disagr. "
                  "| metric | agree full | drop vs full |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in group_rows:
            lines.append(
                f"| {r['method']} | {r['rule']} | {float(r['eps']):g} | {r['certified']} | "
                f"{r['knob']} | {float(r['blocks']):.2f} | {float(r['cal_blocks']):.2f} | "
                f"{float(r['disagreement']):.4f} | {r['metric_name']} {float(r['metric']):.4f} "
                f"| {float(r['agreement_with_full']):.4f} | {float(r['drop_vs_full']):+.4f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv):
    del argv
    if not FLAGS.groups:
        raise app.UsageError("--groups is required (NAME=DIR,...).")
    epsilons = [float(e) for e in FLAGS.epsilons]
    from dact_tf.calibration import risk_bounds

    delta = risk_bounds.delta_from_confidence(FLAGS.confidence)
    rows = []
    for group in cs._parse_groups():
        rows += _group_rows(group, epsilons, delta)
    os.makedirs(os.path.dirname(FLAGS.headroom_csv), exist_ok=True)
    with open(FLAGS.headroom_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_KEYS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k) for k in CSV_KEYS})
    command = "PYTHONPATH=. python -m benchmarks.exit_headroom " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    bench_utils.write_generated_markdown(FLAGS.headroom_md, _markdown(rows, command))


if __name__ == "__main__":
    app.run(main)
