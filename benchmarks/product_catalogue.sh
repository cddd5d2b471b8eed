#!/usr/bin/env bash
# The default model on a real product catalogue (issue 39): amazon-scientific-dev, Amazon 2018
# "Industrial & Scientific" with each shopper's last purchase withheld (read its README). Trains
# today's default and each lever alone, exports them, and evaluates them paired on the dev
# test split, history not masked, every shopper (the published protocol's setting). Each model
# is exported twice: as `export` does by default, and with --no-seen-penalty (history items
# ranked as scored, as every bundle was before the seen penalty: NAME-raw-bundle).
# Tables: QUALITY.md, "A product catalogue".
#
#   benchmarks/product_catalogue.sh [DATA_DIR] [RUNS_DIR]
#       (defaults: ../shared/data/amazon-scientific-dev, ../runs/amazon)
#
# A model folder that already exists is kept (delete it to retrain). Training threads: TRAIN_ARGS
# (for instance "--threads 1" to run two of these at once; the timings in QUALITY.md say which).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/amazon-scientific-dev}
RUNS=${2:-../runs/amazon}
CLI=${CLI:-.venv/bin/recsys-infer}
if [ ! -f "$DATA/interactions.tsv" ]; then
  echo "no amazon-scientific-dev at $DATA: nothing to measure" >&2
  exit 0
fi
mkdir -p "$RUNS"

train() {  # train NAME ARGS...: skip when the model exists
  local name=$1; shift
  # shellcheck disable=SC2086
  [ -d "$RUNS/$name" ] || $CLI train --data "$DATA" --out "$RUNS/$name" --overwrite \
    --json "$RUNS/$name.train.json" ${TRAIN_ARGS:-} "$@"
  [ -d "$RUNS/$name-bundle" ] || $CLI export "$RUNS/$name" --out "$RUNS/$name-bundle" \
    --json "$RUNS/$name.export.json"
}

raw() {  # raw NAME: the model's bundle without the seen penalty
  [ -d "$RUNS/$1-raw-bundle" ] || $CLI export "$RUNS/$1" --out "$RUNS/$1-raw-bundle" --no-seen-penalty \
    --json "$RUNS/$1-raw.export.json"
}

train default                      # no flags: the default model
train whitened --whiten on         # whitening alone
train dropout --dropout 0.5        # the papers' dropout alone
train offsets --item-offsets on    # the bounded item offsets alone
for name in default whitened dropout; do raw "$name"; done
# Each training lever alone, history items ranked as scored ("each lever alone").
$CLI evaluate "$RUNS/default-raw-bundle" "$RUNS/whitened-raw-bundle" "$RUNS/dropout-raw-bundle" \
  --data "$DATA" --include-seen --requests --json "$RUNS/evaluate.json"
# The seen penalty, alone and with whitening, against the default as it was ("the seen penalty").
$CLI evaluate "$RUNS/default-raw-bundle" "$RUNS/default-bundle" "$RUNS/whitened-raw-bundle" \
  "$RUNS/whitened-bundle" --data "$DATA" --include-seen --requests --json "$RUNS/evaluate-seen.json"
# The same, history items left out, as the engine serves by default.
$CLI evaluate "$RUNS/default-bundle" "$RUNS/whitened-bundle" --data "$DATA" --exclude-seen \
  --json "$RUNS/evaluate-masked.json"
# The bounded item offsets against the default, both as export makes them today (with the seen
# penalty), history items left in ("every lever on the four data sets").
$CLI evaluate "$RUNS/default-bundle" "$RUNS/offsets-bundle" --data "$DATA" --include-seen --requests \
  --json "$RUNS/evaluate-offsets.json"
