#!/usr/bin/env bash
# Reproduces "Two CPU runtimes" in benchmarks/README.md: the quickstart's bundle and its dynamic
# int8 variant, each under ONNX Runtime, OpenVINO and `auto`, in one interleaved
# `recsys-infer bench` run beside the PyTorch reference and the sentence-transformers peers.
# A bundle whose item tower runs on OpenVINO (under openvino, and under auto where auto takes it)
# re-encodes its catalogue through it first, so its overlap and Recall are after reindexing.
#
#   benchmarks/backends.sh [WORK_DIR] [OUT_DIR]      defaults: /tmp/backends, benchmarks/results
#
# Needs the openvino extra. About 3 minutes for the quickstart, 10 for the bench on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/backends}
OUT=${2:-benchmarks/results}
CLI=${CLI:-.venv/bin/recsys-infer}
[ -d "$WORK/bundle" ] || $CLI quickstart --out "$WORK"
[ -d "$WORK/int8" ] || $CLI quantize "$WORK/bundle" --out "$WORK/int8" --mode dynamic --tower user
$CLI bench "$WORK/bundle" "$WORK/int8" --backends onnxruntime,openvino,auto --rounds 3 \
    --json "$OUT/backends.json" --md "$OUT/backends.md"
