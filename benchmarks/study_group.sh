#!/bin/bash
# One group of the certified study from scratch, on a fresh machine: trains the models of TASK
# and SEED as benchmarks/study.py does (full, dact, static_k3, pabee, and deebert for a
# classifier), then certifies them with benchmarks/certified_study.py, which adds the group to
# the committed results/certified_study.csv and CERTIFIED_STUDY.md (the other groups' rows are
# read back from the CSV).
#
# Usage (from the repository root, after `make venv`):
#   bash benchmarks/study_group.sh GLUE_DIR TASK SEED      # e.g. GLUE_DIR stsb 1
#
# Resumable: a finished model or point is skipped, an interrupted model resumes from its backup.
# The code runs from a snapshot of HEAD (a git worktree under runs/), so edits made meanwhile
# cannot change a model being trained. Timings on an idle 2-core AMD EPYC (2026-12-08): STS-B's
# four models train in about 15 minutes; SST-2's five in about 40 (one epoch each) and its
# points take about 45 minutes. Shared with other work, the same took hours.
set -euo pipefail
GLUE=$(realpath "$1"); TASK=$2; SEED=$3
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo "$PWD/.venv/bin/python" || echo python )}
SNAP=runs/snapshot
if [ ! -d "$SNAP" ]; then
  git worktree add --detach "$SNAP" HEAD
fi
echo "code: $(git -C "$SNAP" rev-parse --short HEAD) (remove $SNAP to take a newer HEAD)"
SCHEDULE="$TASK:$SEED:full,$TASK:$SEED:dact,$TASK:$SEED:static,$TASK:$SEED:pabee"
[ "$TASK" != stsb ] && SCHEDULE="$SCHEDULE,$TASK:$SEED:deebert"
export TF_CPP_MIN_LOG_LEVEL=2
# The study's flags (benchmarks/STUDY.md); its own points go to a side CSV, so that the
# committed study.csv, which may hold this seed already, does not skip the training.
PYTHONPATH="$SNAP" "$PY" "$SNAP/benchmarks/study.py" --glue_dir="$GLUE" \
  --mixed_precision=mixed_bfloat16 --epochs=3 --epochs_per_task=sst2:1 --static_layers=3 \
  --target_blocks=2,2.5 --out_dir="$PWD/runs/study" \
  --results_csv="$PWD/runs/study/$TASK/seed$SEED/study.csv" \
  --results_md="$PWD/runs/study/$TASK/seed$SEED/STUDY.md" --schedule="$SCHEDULE"
PYTHONPATH="$SNAP" "$PY" "$SNAP/benchmarks/certified_study.py" --glue_dir="$GLUE" \
  --out_dir="$PWD/runs/certified_study/points" \
  --results_csv="$PWD/benchmarks/results/certified_study.csv" \
  --results_md="$PWD/benchmarks/CERTIFIED_STUDY.md" --plot_dir="$PWD/benchmarks" \
  --groups="$TASK:$SEED=runs/study/$TASK/seed$SEED"
echo "Done: benchmarks/CERTIFIED_STUDY.md has the group $TASK:$SEED."
