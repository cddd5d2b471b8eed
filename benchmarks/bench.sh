#!/usr/bin/env bash
# Reproduces the `recsys-infer bench` results of benchmarks/README.md: builds the compressed
# variants of the ml-latest-small sequence model (benchmarks/quality.sh trains it) and measures
# them side by side with the PyTorch reference and the sentence-transformers peers.
#
#   benchmarks/bench.sh [DATA_DIR] [RUNS_DIR] [OUT_DIR]
#       defaults: ../shared/data, ../runs, benchmarks/results
#
# A variant folder that already exists is kept (delete it to rebuild). About 25 minutes on 2
# cores when the variants must be built (the pruning's distillation is most of it), 15 without.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}/ml-latest-small
RUNS=${2:-../runs}
OUT=${3:-benchmarks/results}
CLI=${CLI:-.venv/bin/recsys-infer}
CKPT=$RUNS/quality/ml-latest-small/sequence
REF=$CKPT-bundle
C=$RUNS/compress
if [ ! -d "$REF" ]; then
  echo "no $REF: train and export the model first with benchmarks/quality.sh" >&2
  exit 1
fi
mkdir -p "$C" "$OUT"
build() {  # build NAME COMMAND...: skip when the bundle exists
  local name=$1; shift
  [ -d "$C/$name" ] || "$@"
}
build opt $CLI optimize "$REF" --out "$C/opt"
build int8 $CLI quantize "$C/opt" --out "$C/int8" --mode dynamic --tower user
build qdq $CLI quantize "$REF" --out "$C/qdq" --mode static --tower user
build pruned50-ckpt $CLI prune "$CKPT" --ratio 0.5 --distill-steps 300 --data "$DATA" --out "$C/pruned50-ckpt"
build pruned50 $CLI export "$C/pruned50-ckpt" --out "$C/pruned50" --reference "$REF"
build pruned50-opt $CLI optimize "$C/pruned50" --out "$C/pruned50-opt"
build pruned50-int8 $CLI quantize "$C/pruned50-opt" --out "$C/pruned50-int8" --mode dynamic --tower user

$CLI bench "$REF" "$C/opt" "$C/int8" "$C/qdq" "$C/pruned50-int8" --data "$DATA" --reference "$CKPT" \
  --threads 2 --json "$OUT/bench.json" --md "$OUT/bench.md" --plot "$OUT/bench.png"
