r"""Certificates under a shift of rows: calibrating on rows like the served ones.

A certified halting mode bounds P(early answer differs from full depth) on
unseen rows drawn like its calibration rows. GLUE's SST-2 calibrates on held-out
training rows, parse-tree phrases (median 7 words), and is scored on whole
sentences (median 19): the dev rates can break the bound (seed 2 at 2 %: 3.2 %
of dev sentences, lower confidence bound 2.3 %; CERTIFIED_STUDY.md).

The remedy a user has is to certify on rows like the served ones. This script
measures it without new data: for each group, each method and each EPS, the
halting is certified twice on the group's kept-apart calibration rows: on all
of them, and on those of at least `--min_tokens` tokens only (a choice made on
the inputs alone, before any answer is seen, so the subset is an independent
draw from the longer rows' distribution and the certificate holds for it). Each
point reports the dev blocks, accuracy, disagreement with full depth and
`dact_tf.calibration.certificate_check`'s verdict (what `dact-tf evaluate`
prints).

`--shift_modes=drop` does the same for DACT's certified drop against the plain
full-depth model (item 5's one-point promise), and reports the dev drop.

Resumable per point (a JSON under `--shift_out_dir`); after each point the CSV
and the Markdown are rewritten.

Usage (from the repository root):
    PYTHONPATH=. python -m benchmarks.calibration_shift --glue_dir=GLUE_DIR \
        --groups=sst2:1=runs/study/sst2/seed1,sst2:2=runs/study/sst2/seed2 \
        --methods=dact,deebert --epsilons=0.01,0.02 --min_tokens=0,14
"""

import csv
import gc
import itertools
import json
import os
import platform
import re
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

# The groups, data and shared flags (--groups, --glue_dir, --methods, --epsilons,
# --confidence, --verbose) are the certified study's.
from benchmarks import certified_study  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = ("task", "seed", "method", "mode", "eps", "min_tokens", "cal_rows", "certified", "cert_bound",
        "cert_at_risk", "cal_blocks", "eval_rows", "eval_long_share", "accuracy", "mean_blocks",
        "full_depth_disagreement", "eval_lower", "contradicted", "drop_vs_full", "seconds")

flags.DEFINE_list("min_tokens", ["0", "14"], "Certify on the calibration rows of at least this "
                  "many tokens ([CLS] and [SEP] included; 0: every row).")
flags.DEFINE_list("shift_modes", ["halting"], "halting: the certified halting mode "
                  "(--max_disagreement=EPS); drop: DACT's certified drop against the full "
                  "model (--certified_risk=drop --calibration_max_drop=EPS).")
flags.DEFINE_string("shift_out_dir", "runs/calibration_shift/points", "Finished points (JSON).")
flags.DEFINE_string("shift_csv", os.path.join(HERE, "results", "calibration_shift.csv"),
                    "The CSV.")
flags.DEFINE_string("shift_md", os.path.join(HERE, "CALIBRATION_SHIFT.md"), "The Markdown.")
FLAGS = flags.FLAGS


def _long_share(g, min_tokens):
    """The share of the group's evaluation rows with at least `min_tokens` tokens (once)."""
    from dact_tf import data

    if not hasattr(g, "eval_tokens"):
        g.eval_tokens = data.token_counts(g.datasets["validation"])
    return float((g.eval_tokens >= min_tokens).mean())


def _point(g, method, mode, eps, min_tokens):
    from dact_tf.calibration import calibration_run
    from dact_tf.calibration import certificate_check
    from dact_tf.calibration import certify
    from dact_tf.evaluation import scoring
    from dact_tf.training import train_lib

    from dact_tf import data

    start = time.time()
    model, _, _ = train_lib.load_model_dir(g.group["models"][method])
    cal = g.datasets["calibration"]
    if min_tokens:
        cal = data.keep_min_tokens(cal, min_tokens)
    if mode == "drop":
        result = calibration_run.calibrate_drop(
            model, g.datasets["holdout"], cal, reference=g.full, max_drop=eps,
            confidence=FLAGS.confidence, metric_task=g.metric_task, verbose=0)
    else:
        result = certify.certify_halting(model, cal, max_disagreement=eps,
                                         confidence=FLAGS.confidence, verbose=FLAGS.verbose,
                                         fit_dataset=g.datasets["holdout"])
    cert = result["certificate"]
    results = scoring.evaluate(model, g.datasets["validation"], g.metric_task,
                               verbose=FLAGS.verbose, full_depth_disagreement=True)
    check = certificate_check.check_halting(cert, results) or {}
    point = {
        "task": g.group["label"], "seed": g.group["seed"], "method": method, "mode": mode,
        "eps": eps, "min_tokens": min_tokens, "cal_rows": cert["rows"],
        "certified": cert["certified"], "cert_bound": cert["bound"],
        "cert_at_risk": cert["at_risk"], "cal_blocks": result["mean_layers_executed"],
        "eval_rows": results["num_examples"],
        "eval_long_share": _long_share(g, min_tokens),
        "accuracy": results[g.metric_name], "mean_blocks": results["mean_layers_executed"],
        "full_depth_disagreement": results["full_depth_disagreement"],
        "eval_lower": check.get("lower_bound"), "contradicted": check.get("contradicted"),
        "drop_vs_full": _full_metric(g) - results[g.metric_name],
        "seconds": round(time.time() - start, 1)}
    del model
    gc.collect()
    return point


def _full_metric(g):
    """The group's full model's metric on the evaluation rows (computed once)."""
    if not hasattr(g, "full_metric"):
        from dact_tf.evaluation import scoring

        g.full_metric = scoring.evaluate(g.full, g.datasets["validation"],
                                         g.metric_task)[g.metric_name]
    return g.full_metric


def _path(group, method, mode, eps, min_tokens):
    name = f"{group['label']}_seed{group['seed']}_{method}_eps{eps:g}_min{min_tokens}"
    name += "" if mode == "halting" else f"_{mode}"
    return os.path.join(FLAGS.shift_out_dir, re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".json")


_ID = ("task", "seed", "method", "mode", "eps", "min_tokens")


def _rows():
    """Every finished point: the JSON files, and the committed CSV's other rows."""
    points = {}
    if os.path.exists(FLAGS.shift_csv):
        with open(FLAGS.shift_csv) as f:
            for r in csv.DictReader(f):
                r["mode"] = r.get("mode") or "halting"
                points[tuple(r[k] for k in _ID)] = r
    if os.path.isdir(FLAGS.shift_out_dir):
        for name in sorted(os.listdir(FLAGS.shift_out_dir)):
            with open(os.path.join(FLAGS.shift_out_dir, name)) as f:
                p = json.load(f)
            p.setdefault("mode", "halting")
            points[tuple(str(p[k]) for k in _ID)] = p
    return [points[k] for k in sorted(points, key=lambda k: (k[0], int(k[1]), k[3], k[2],
                                                              float(k[4]), int(k[5])))]


def _fmt(value, spec):
    value = _value(value)
    if value is None:
        return "-"
    return format(value, spec) if not isinstance(value, bool) else ("yes" if value else "no")


def _write(rows):
    os.makedirs(os.path.dirname(FLAGS.shift_csv), exist_ok=True)
    with open(FLAGS.shift_csv + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, KEYS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(FLAGS.shift_csv + ".tmp", FLAGS.shift_csv)
    lines = [
        "# Certificates under a shift of rows: calibrating on rows like the served ones",
        "",
        "Written by `benchmarks/calibration_shift.py` (its docstring has the method) on "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU:",
        "",
        "```",
        "PYTHONPATH=. python -m benchmarks.calibration_shift --glue_dir=GLUE_DIR "
        "--groups=sst2:SEED=runs/study/sst2/seedSEED,... --methods=dact,deebert "
        "--epsilons=0.01,0.02 --min_tokens=0,14 --shift_modes=halting,drop",
        "```",
        "",
        "Each row certifies the model's halting at EPS (95 % confidence) on its kept-apart "
        "calibration rows: all of them (min tokens 0) or those of at least that many tokens "
        "only. *long dev*: the share of dev rows that long. *dev disagreement*: dev rows whose "
        "early answer differs from the model's own full depth; *lower*: its one-sided 95 % "
        "lower bound; *contradicted*: lower > EPS (the certificate does not hold on dev: "
        "what `dact-tf evaluate` warns about). Mode *drop*: DACT's certified drop "
        "(`--certified_risk=drop`, the promise of at most EPS below the plain full-depth model) "
        "certified on the same rows; *drop vs full*: the full model's dev accuracy minus this "
        "one's.",
        "",
        "| task | seed | method | mode | EPS | min tokens | cal. rows | certified (bound) "
        "| cal. blocks | long dev | accuracy | drop vs full | dev blocks | dev disagreement "
        "| lower | contradicted |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['seed']} | {r['method']} | {r['mode']} | {_fmt(r['eps'], '.1%')} "
            f"| {r['min_tokens']} | {r['cal_rows']} | {_fmt(r['certified'], '')} "
            f"({_fmt(r['cert_bound'], '.2%')}) | {_fmt(r['cal_blocks'], '.2f')} "
            f"| {_fmt(r['eval_long_share'], '.0%')} | {_fmt(r['accuracy'], '.4f')} "
            f"| {_fmt(r.get('drop_vs_full'), '+.2%')} "
            f"| {_fmt(r['mean_blocks'], '.2f')} | {_fmt(r['full_depth_disagreement'], '.2%')} "
            f"| {_fmt(r['eval_lower'], '.2%')} | {_fmt(r['contradicted'], '')} |")
    lines += _summary(rows)
    with open(FLAGS.shift_md, "w") as f:
        f.write("\n".join(lines) + "\n")


def _value(value):
    """A value from a JSON point, or from the CSV (a string), as a float, bool or None."""
    if isinstance(value, str):
        value = {"True": True, "False": False, "": None}.get(value, value)
        value = float(value) if isinstance(value, str) else value
    return value


def _summary(rows):
    """Per method, mode and EPS, across seeds: does the promise hold on dev, and at how many
    blocks, certified on every calibration row against the long ones."""
    groups = {}
    for r in rows:
        key = (r["method"], r.get("mode") or "halting", float(r["eps"]))
        groups.setdefault(key, {}).setdefault(int(r["min_tokens"]), []).append(r)
    lines = ["", "## Across seeds", "",
             "*holds*: seeds where the dev set does not break the promise (halting: not "
             "contradicted; drop: the dev drop against the full model, measured, at most EPS); *blocks*: "
             "mean dev blocks over the seeds.", "",
             "| method | mode | EPS | rows | seeds | holds | blocks |", "|---|---|---|---|---|---|---|"]
    for (method, mode, eps), by_length in sorted(groups.items()):
        for length, group in sorted(by_length.items()):
            if mode == "drop":
                holds = sum(_value(r["drop_vs_full"]) <= eps + 1e-9 for r in group)
            else:
                holds = sum(not _value(r["contradicted"]) for r in group)
            blocks = sum(_value(r["mean_blocks"]) for r in group) / len(group)
            rows_kind = f"at least {length} tokens" if length else "every row"
            lines.append(f"| {method} | {mode} | {eps:.1%} | {rows_kind} | {len(group)} "
                         f"| {holds} of {len(group)} | {blocks:.2f} |")
    return lines


def main(argv):
    del argv
    groups = certified_study._parse_groups()
    epsilons = [float(e) for e in FLAGS.epsilons]
    lengths = [int(m) for m in FLAGS.min_tokens]
    os.makedirs(FLAGS.shift_out_dir, exist_ok=True)
    for group in groups:
        g = certified_study.Group(group)
        for method in FLAGS.methods:
            if method not in group["models"] or method in ("full", "static"):
                continue
            for mode, eps, min_tokens in itertools.product(FLAGS.shift_modes, epsilons,
                                                           lengths):
                if mode == "drop" and method != "dact":
                    continue
                path = _path(group, method, mode, eps, min_tokens)
                if os.path.exists(path):
                    continue
                point = _point(g, method, mode, eps, min_tokens)
                with open(path + ".tmp", "w") as f:
                    json.dump(point, f, indent=2, sort_keys=True)
                os.replace(path + ".tmp", path)
                logging.info("%s: %s", os.path.basename(path), point)
                _write(_rows())
    _write(_rows())


if __name__ == "__main__":
    flags.mark_flag_as_required("groups")
    app.run(main)
