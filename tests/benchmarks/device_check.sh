#!/usr/bin/env bash
# The GPU checks as one command, for a machine with one NVIDIA GPU (about 9 minutes on an H200):
# the CUDA tests, then the shakespeare_char GPU recipe's commands against the original's way (tests/benchmarks/gpu_check.py).
#
#   bash tests/benchmarks/device_check.sh path/to/tinyshakespeare/input.txt
#
# Logs and gpu_check.json go to $OUT where it is set (the lent machines' folder that comes back),
# else to ./device-check. Each part has its own time limit, so that a hang in one leaves the other's
# results; the input file must be inside the copy of the project that reaches the machine.
set -uo pipefail
cd "$(dirname "$0")/../.."
input=${1:?usage: bash tests/benchmarks/device_check.sh path/to/input.txt}
out=${OUT:-device-check}
mkdir -p "$out"
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())" \
    2>&1 | tee "$out/env.txt"
timeout 150 python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
timeout 420 python3 tests/benchmarks/gpu_check.py --input="$input" --out="$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.log"
