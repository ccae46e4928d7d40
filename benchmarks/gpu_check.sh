#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): GPU tests, a paper-scale KD cell under bf16
# autocast with CUDA peak memory, and the perf benchmarks on CUDA, within 8 minutes.
#   benchmarks/gpu_check.sh            on a machine with one CUDA GPU
#   benchmarks/gpu_check.sh --dry-run  the same logic on the CPU at toy scale
# PYTHON selects the interpreter (default: python3 on PATH).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="${here}/..${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON:-python3}" "${here}/gpu_check.py" "$@"
