#!/usr/bin/env bash
# The prepared GPU check (lego_embed/bench/gpu_check.py): one command, on the GPU machine as it
# is (no network, no pip: its own python3 and torch), results under one folder.
#   tools/gpu_check.sh [OUT]              on a GPU (default OUT: docs/benchmarks/gpu)
#   tools/gpu_check.sh --dry-run OUT      the same steps on the CPU with a tiny model (seconds)
# PYTHON selects the interpreter (default python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
exec "${PYTHON:-python3}" -m lego_embed.bench.gpu_check "$@"
