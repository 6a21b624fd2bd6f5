#!/usr/bin/env bash
# The checks to run when a session is lent a GPU (docs/performance.md "GPU"), as one command on
# the device machine, from the repository root; its python3 holds a CUDA build of torch:
#
#     bash benchmarks/device_check.sh
#
# 1. the estimator-equality tests on the device (tests/test_cuda.py, marker cuda);
# 2. benchmarks/gpu.py for the full profile's batch, then for the lab's (fewer directions).
# Each stage has its own time limit, so one slow stage leaves the others' output. The logs go to
# $OUT (the device tool's folder that comes back) or ./device-logs. A dry run here:
#     PYTHON=.venv/bin/python DEVICE=cpu SAMPLES=20 LAB_SAMPLES=5 bash benchmarks/device_check.sh
set -uo pipefail
out="${OUT:-device-logs}"
python="${PYTHON:-python3}"
device="${DEVICE:-cuda}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TEST_DEVICE="$device"

"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')" 2>&1 | tee "$out/device.txt"
timeout 180 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/cuda_tests.txt"
timeout 240 "$python" benchmarks/gpu.py --device "$device" --profiles full --samples "${SAMPLES:-2000}" \
  2>&1 | tee "$out/gpu_full.txt"
timeout 240 "$python" benchmarks/gpu.py --device "$device" --profiles lab --samples "${LAB_SAMPLES:-200}" \
  2>&1 | tee "$out/gpu_lab.txt"
