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
# takes about 40 minutes on 2 cores (the int8-aware distillation's 800 steps about 25 of them, each
# auto search about 2, the smoothed int8 under 1); the bench itself took 8 minutes on a 2-core
# Emerald Rapids with AMX (2026-12-06), 33 on an AVX2-only EPYC and 13 on one with VNNI (2026-12-02).
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
# The same with the request graph's activations smoothed first, the strength chosen on the probe.
build int8-smooth $CLI quantize "$C/opt" --out "$C/int8-smooth" --mode dynamic --tower user --smooth auto
# Mixed precision searched on the probe's requests: the fastest graph holding each target, on
# the smoothed graph (auto's default), and at 0.95 without smoothing for comparison.
build auto95 $CLI quantize "$C/opt" --out "$C/auto95" --mode auto --tower user --target-overlap 0.95
build auto90 $CLI quantize "$C/opt" --out "$C/auto90" --mode auto --tower user --target-overlap 0.90
build auto95-plain $CLI quantize "$C/opt" --out "$C/auto95-plain" --mode auto --tower user --target-overlap 0.95 \
  --smooth off
# The catalogue side: a dynamic int8 item tower, the index rebuilt with it (--reindex).
build item-int8 $CLI quantize "$C/opt" --out "$C/item-int8" --mode dynamic --tower item --reindex
build item-int8-smooth $CLI quantize "$C/opt" --out "$C/item-int8-smooth" --mode dynamic --tower item --reindex \
  --smooth auto
# int8-aware distillation of the request tower (prune --quant-aware, --ratio 0: nothing pruned):
# all six layers retrained for dynamic int8, then quantized so.
build req-q6-ckpt $CLI prune "$CKPT" --ratio 0 --tower user --quant-aware --distill-steps 800 --batch-size 64 \
  --learning-rate 3e-5 --data "$DATA" --out "$C/req-q6-ckpt"
build req-q6 $CLI export "$C/req-q6-ckpt" --out "$C/req-q6" --reference "$REF"
build req-q6-opt $CLI optimize "$C/req-q6" --out "$C/req-q6-opt" --tower user
build req-q6-int8 $CLI quantize "$C/req-q6-opt" --out "$C/req-q6-int8" --mode dynamic --tower user

$CLI bench "$REF" "$C/opt" "$C/int8" "$C/int8-smooth" "$C/auto95" "$C/auto90" "$C/auto95-plain" "$C/req-q6-int8" \
  "$C/item-int8" "$C/item-int8-smooth" --data "$DATA" \
  --reference "$CKPT" --threads 2 --json "$OUT/bench.json" --md "$OUT/bench.md" --plot "$OUT/bench.png"
