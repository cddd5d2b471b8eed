#!/usr/bin/env bash
# The default model on a product-like catalogue generated in code (issue 14): 50,000 items
# with long category-path texts and 20,000 shoppers with short histories and a long tail.
# Trains with `train`'s defaults under a wall-clock budget, exports, and evaluates it paired
# against the untrained encoder (zero-shot) and popularity on histories, text requests and
# history + request. Tables: QUALITY.md, "The default model on a product-like sample".
#
#   benchmarks/product_sample.sh [RUNS_DIR] [MINUTES]   (defaults: ../runs/product-sample, 30)
#
# A model folder that already exists is kept (delete it to retrain).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-../runs/product-sample}
MINUTES=${2:-30}
CLI=${CLI:-.venv/bin/recsys-infer}
DATA=${DATA:-sample:items=50000,users=20000}
# torch threads per training run (empty: torch's own choice); the issue 39 rows of QUALITY.md
# were trained with THREADS=1, two runs at a time.
THREADS=${THREADS:-}
out=$RUNS
mkdir -p "$out"

train() {  # train NAME ARGS...: skip when the model exists
  local name=$1; shift
  [ -d "$out/$name" ] || $CLI train --data "$DATA" --out "$out/$name" --overwrite \
    --json "$out/$name.train.json" ${THREADS:+--threads "$THREADS"} "$@"
  [ -d "$out/$name-bundle" ] || $CLI export "$out/$name" --out "$out/$name-bundle" \
    --json "$out/$name.export.json"
}

# The default model: no flags but the clock. Above 20,000 items it trains with sampled softmax.
train default --max-minutes "$MINUTES"
# The pretrained encoder as text towers, untrained.
train zero-shot --user-tower text --max-steps 0
$CLI evaluate "$out/default-bundle" "$out/zero-shot-bundle" --data "$DATA" --baseline popularity \
  --exclude-seen --requests --json "$out/evaluate-default.json"
# The same bundles by exact search: what the HNSW index loses on this catalogue, where each
# category holds about 1,700 near-identical products.
$CLI evaluate "$out/default-bundle" "$out/zero-shot-bundle" --data "$DATA" --exclude-seen --requests --exact \
  --k 10 --json "$out/evaluate-default-exact.json"
# Issue 39: whitening alone under the same clock, and the seen penalty (the default's checkpoint
# exported without it is the default as it was), history items left out and left in.
train whitened --whiten on --max-minutes "$MINUTES"
[ -d "$out/default-raw-bundle" ] || $CLI export "$out/default" --out "$out/default-raw-bundle" \
  --no-seen-penalty --json "$out/default-raw.export.json"
$CLI evaluate "$out/default-bundle" "$out/whitened-bundle" --data "$DATA" --exclude-seen --requests \
  --json "$out/evaluate-levers.json"
# (5,000 of the 20,000 shoppers, seeded: a full run of three query kinds takes about 20 minutes.)
$CLI evaluate "$out/default-raw-bundle" "$out/default-bundle" --data "$DATA" --users 5000 \
  --include-seen --requests --json "$out/evaluate-levers-include-seen.json"
