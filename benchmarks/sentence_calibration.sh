#!/bin/bash
# Where a certificate holds: SST-2's training rows are parse-tree phrases, its dev rows whole
# sentences. This certifies kept SST-2 models twice, on their held-out training phrases (the
# default) and on half of the dev sentences (--calibration_file), and scores both on the other
# half of the dev sentences. No retraining; the model directories are copied, never changed.
#
# Usage (from the repository root, with the project's Python on PATH or in .venv):
#   bash benchmarks/sentence_calibration.sh GLUE_DIR STUDY_SEED_DIR OUT_DIR
# STUDY_SEED_DIR holds full/, dact/ and deebert/ (as benchmarks/study.py writes them, e.g.
# runs/study/sst2/seed0). Results: OUT_DIR/sentence_calibration.md.
set -euo pipefail
GLUE=$1; MODELS=$2; OUT=$3
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
mkdir -p "$OUT/glue/SST-2"
ln -sfn "$(realpath "$GLUE/SST-2/train.tsv")" "$OUT/glue/SST-2/train.tsv"
# Dev split in two halves, at random with a fixed seed: A certifies, B (the new dev.tsv) scores.
"$PY" - "$GLUE/SST-2/dev.tsv" "$OUT" <<'PYEOF'
import random, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
head, rows = lines[0], lines[1:]
order = list(range(len(rows)))
random.Random(0).shuffle(order)
half = len(rows) // 2
for name, part in (("A.tsv", order[:half]), ("glue/SST-2/dev.tsv", order[half:])):
    with open(f"{sys.argv[2]}/{name}", "w", encoding="utf-8") as f:
        f.write("\n".join([head] + [rows[i] for i in sorted(part)]) + "\n")
PYEOF
run() { PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=2 "$PY" -m dact_tf "$@" >> "$OUT/log.txt" 2>&1; }
run evaluate --model_dir="$MODELS/full" --data_dir="$OUT/glue" --output_json="$OUT/full_B.json"
for eps in 0.01 0.02; do
  for method in dact deebert; do
    for rows in phrases sentences; do
      copy="$OUT/model_${method}_${rows}_$eps"
      rm -rf "$copy"; cp -r "$MODELS/$method" "$copy"
      extra=(); [ "$rows" = sentences ] && extra=(--calibration_file="$OUT/A.tsv")
      run calibrate --model_dir="$copy" --data_dir="$OUT/glue" --halting_rule=certified \
          --max_disagreement=$eps ${extra[@]+"${extra[@]}"} --output_json="$OUT/cal_${method}_${rows}_$eps.json"
      run evaluate --model_dir="$copy" --data_dir="$OUT/glue" \
          --output_json="$OUT/eval_${method}_${rows}_$eps.json"
      rm -rf "$copy"
    done
  done
done
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
"$PY" - "$OUT" "$MODELS" "$COMMIT" <<'PYEOF'
import json, os, platform, sys, time
out, models, commit = sys.argv[1:4]
load = lambda name: json.load(open(f"{out}/{name}.json"))
full = load("full_B")
lines = [
    "# Certified on training phrases or on sentences, scored on sentences (SST-2)", "",
    f"`bash benchmarks/sentence_calibration.sh GLUE_DIR {os.path.relpath(models)} OUT_DIR` "
    f"(dact_tf {commit}, {platform.processor() or platform.machine()}, {os.cpu_count()} "
    f"cores, {time.strftime('%Y-%m-%d', time.gmtime())}). Dev split at random (seed 0) into "
    "A (certifies with `--calibration_file`) and B (scores); *phrases*: the model's held-out "
    "training rows. `--halting_rule=certified --max_disagreement=EPS`, 95 % confidence.", "",
    "| EPS | method | certified on | rows | at risk | bound | blocks (cal.) | blocks (B) "
         "| disagreement (B) | accuracy (B) | drop vs full (B) |", "|" + "---|" * 11]
for eps in ("0.01", "0.02"):
    for method in ("dact", "deebert"):
        for rows in ("phrases", "sentences"):
            halting = load(f"cal_{method}_{rows}_{eps}")["halting"]
            cert, ev = halting["certificate"], load(f"eval_{method}_{rows}_{eps}")
            lines.append(
                f"| {float(eps):.0%} | {method} | {rows} | {cert['rows']} | {cert['at_risk']} "
                f"| {cert['bound']:.2%} | {halting['mean_layers_executed']:.2f} "
                f"| {ev['mean_layers_executed']:.2f} | {ev['full_depth_disagreement']:.2%} "
                f"| {ev['accuracy']:.4f} | {full['accuracy'] - ev['accuracy']:+.2%} |")
lines.append(f"\n`full` on B: accuracy {full['accuracy']:.4f}, {full['num_examples']} rows.")
open(f"{out}/sentence_calibration.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
