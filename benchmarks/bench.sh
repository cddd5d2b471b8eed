#!/usr/bin/env bash
# Reproduces the `recsys-infer bench` results of benchmarks/README.md: builds the compressed
# variants of the ml-latest-small sequence model (benchmarks/quality.sh trains it as
# `sequence-masked`) and measures them side by side with the PyTorch reference and the
# sentence-transformers peers.
#
#   benchmarks/bench.sh [DATA_DIR] [RUNS_DIR] [OUT_DIR]
#       defaults: ../shared/data, ../runs, benchmarks/results
#
# A variant folder that already exists is kept (delete it to rebuild). Building the variants
# takes about 30 minutes on 2 cores (the pruning's 1,500 distillation steps 13 of them, each auto
# search 2 to 4); the bench itself took 33 minutes on an AVX2-only 2-core EPYC, 13 on one with VNNI
# (both 2026-12-02, the second without the pruned variants).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}/ml-latest-small
RUNS=${2:-../runs}
OUT=${3:-benchmarks/results}
CLI=${CLI:-.venv/bin/recsys-infer}
CKPT=$RUNS/quality/ml-latest-small/sequence-masked
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
build b8 $CLI quantize "$C/opt" --out "$C/b8" --mode blockwise --tower user
build qdq $CLI quantize "$REF" --out "$C/qdq" --mode static --tower user
# Mixed precision searched on the probe's requests: the fastest graph holding each target.
build auto95 $CLI quantize "$C/opt" --out "$C/auto95" --mode auto --tower user --target-overlap 0.95
build auto90 $CLI quantize "$C/opt" --out "$C/auto90" --mode auto --tower user --target-overlap 0.90
# The catalogue side: a dynamic int8 item tower, the index rebuilt with it (--reindex).
build item-int8 $CLI quantize "$C/opt" --out "$C/item-int8" --mode dynamic --tower item --reindex
# Pruning the request path alone: a request tower of its own, items and history users untouched.
build req50-ckpt $CLI prune "$CKPT" --ratio 0.5 --tower user --distill-steps 1500 --data "$DATA" --out "$C/req50-ckpt"
build req50 $CLI export "$C/req50-ckpt" --out "$C/req50" --reference "$REF"
build req50-opt $CLI optimize "$C/req50" --out "$C/req50-opt"
build req50-int8 $CLI quantize "$C/req50-opt" --out "$C/req50-int8" --mode dynamic --tower user
build req50-b8 $CLI quantize "$C/req50-opt" --out "$C/req50-b8" --mode blockwise --tower user

$CLI bench "$REF" "$C/opt" "$C/int8" "$C/b8" "$C/qdq" "$C/auto95" "$C/auto90" "$C/req50-int8" "$C/req50-b8" \
  "$C/item-int8" --data "$DATA" \
  --reference "$CKPT" --threads 2 --json "$OUT/bench.json" --md "$OUT/bench.md" --plot "$OUT/bench.png"
