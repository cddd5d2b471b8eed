#!/usr/bin/env bash
# The GPU check (issue 15): an fp32 bundle and its fp16 variant served by ONNX Runtime's CUDA
# provider, side by side with the PyTorch checkpoint on the same GPU, in one `recsys-infer bench`
# run; prints the table and writes it beside the JSON report.
#
#   benchmarks/gpu.sh BUNDLE [OUT] [DEVICE]     (defaults: ../runs/gpu, cuda)
#
# BUNDLE: an fp32 bundle (e.g. quickstart-out/bundle, or the ml-latest-small default bundle of
# benchmarks/quality.sh); its checkpoint is the PyTorch reference and its data is read from its
# manifest. Needs the [gpu] extra (onnxruntime-gpu), a CUDA build of torch and an NVIDIA GPU;
# without one it stops at once, saying what is missing, with exit status 2.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/recsys-infer}
PY=$(dirname "$CLI")/python
BUNDLE=${1:?usage: benchmarks/gpu.sh BUNDLE [OUT] [DEVICE]}
OUT=${2:-../runs/gpu}
DEVICE=${3:-cuda}

no_gpu() { echo "no GPU: $*" >&2; exit 2; }
command -v nvidia-smi >/dev/null || no_gpu "nvidia-smi is not on PATH (no NVIDIA driver on this machine)"
nvidia-smi -L >/dev/null 2>&1 || no_gpu "nvidia-smi finds no GPU: $(nvidia-smi -L 2>&1 | head -1)"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
  || no_gpu "torch has no CUDA here ($("$PY" -c 'import torch; print(torch.__version__)' 2>&1 | tail -1)); install a CUDA build of torch"
# The bundle on the device, for real (a CPU onnxruntime, missing CUDA libraries: said here).
"$CLI" info "$BUNDLE" --no-verify --device "$DEVICE" >/dev/null || no_gpu "ONNX Runtime cannot run $BUNDLE on $DEVICE (above)"

mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
[ -d "$OUT/fp16" ] || "$CLI" quantize "$BUNDLE" --mode fp16 --out "$OUT/fp16" --json "$OUT/fp16.json"
"$CLI" bench "$BUNDLE" "$OUT/fp16" --device "$DEVICE" --json "$OUT/bench-gpu.json" --md "$OUT/bench-gpu.md"
echo "table: $OUT/bench-gpu.md (copy it into benchmarks/README.md, section 'On a GPU')"
