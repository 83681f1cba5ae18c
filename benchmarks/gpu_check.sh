#!/usr/bin/env bash
# The GPU checks, in one script for a machine with a CUDA GPU (run from the repository root):
#   1. the test suite on CUDA (device='auto' picks the GPU),
#   2. bf16 training throughput at 3x64x64 for the baseline and ConPreDiff, and their step-time
#      ratio (benchmarks/throughput.py),
#   3. the context-prediction overhead at 1x28x28 on the GPU (benchmarks/context_overhead.py),
#   4. every precision / memory-format path against diffusers' UNet2DModel on CUDA
#      (benchmarks/fast_path.py; skipped when diffusers is not importable).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]     (figures land in OUT_DIR, default gpu_check/)
# On the project's GPU machines nothing can be installed from a registry, and their image lacks
# POT and mlxtend: 'bash benchmarks/gpu_plateau.sh --prepare' (or make gpu-prep) downloads them
# into .gpu/ on the CPU machine; carry .gpu along and they are installed from there.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=python3
if [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
if ! "$py" -c "import ot, mlxtend" 2>/dev/null && ls .gpu/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .gpu/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
"$py" - <<'PY' | tee "$out/device.txt"
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))
PY
"$py" -m pytest -q -x 2>&1 | tail -n 15 | tee "$out/tests.txt"
"$py" benchmarks/throughput.py --size 64 --channels 3 --precision bf16 --steps 30 \
  | tee "$out/throughput_bf16.md"
"$py" benchmarks/context_overhead.py --device cuda --repeats 30 | tee "$out/context_overhead_cuda.md"
if "$py" -c "import diffusers" 2>/dev/null; then
  "$py" benchmarks/fast_path.py --device cuda --repeats 20 --out "$out" | tee "$out/fast_path_cuda.txt"
else
  echo "fast_path.py skipped: diffusers is not installed" | tee "$out/fast_path_cuda.txt"
fi
