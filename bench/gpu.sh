#!/usr/bin/env bash
# The GPU table of docs/benchmarks.md in one run (bench/gpu.py): VAE step per call and inside lax.scan at batch
# 64…4096, the discrete mixture (per-point enum / reinforce at N = 2,000 and 100,000), AIR time per step, ppl.fit
# throughput — ppl against hand-coded JAX and NumPyro, measured in the same run on the same device.
#
#   bench/gpu.sh              on an NVIDIA machine with JAX's CUDA build: measure, print, write the table into
#                             docs/benchmarks.md (region bench:gpu:table); a few minutes
#   bench/gpu.sh --no-write   measure and print only
#   bench/gpu.sh --tiny       CPU fallback smoke test (JAX_PLATFORMS=cpu, smallest sizes; writes nothing)
#
# Setup on the GPU machine (from the checkout):
#   python3 -m venv .venv && .venv/bin/pip install -e '.[bench]'
#   .venv/bin/pip install -U "jax[cuda12]==$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
# The output is also saved to $OUT (or $TMPDIR, or /tmp)/gpu-bench-<date>.md. PYTHON=... picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

tiny=0
for a in "$@"; do
  if [ "$a" = "--tiny" ]; then tiny=1; fi
done

if [ "$tiny" = 1 ]; then
  export JAX_PLATFORMS=cpu
else
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "bench/gpu.sh: no nvidia-smi, so no NVIDIA GPU here (bench/gpu.sh --tiny runs the CPU smoke test)" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  backend=$("$PY" -c 'import jax; print(jax.default_backend())')
  if [ "$backend" != "gpu" ]; then
    echo "bench/gpu.sh: JAX's default backend is '$backend', not gpu. Install JAX's CUDA build:" >&2
    echo "  $PY -m pip install -U \"jax[cuda12]==\$($PY -c 'import jax; print(jax.__version__)')\"" >&2
    exit 2
  fi
fi

log="${OUT:-${TMPDIR:-/tmp}}/gpu-bench-$(date +%Y%m%d-%H%M%S).md"
"$PY" bench/gpu.py "$@" | tee "$log"
echo "output saved to $log" >&2
