#!/usr/bin/env bash
# Side by side, 10,000 x 10,000, dim 384: numpy brute force, Python OML, and oml; then oml alone on
# 1,000 queries x 1,000,000 gallery items. Needs a venv with open-metric-learning
# (PYTHON=/path/to/venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
"$py" benches/python_retrieval.py --threads 2
RAYON_NUM_THREADS=2 cargo bench --bench retrieval -- 10k 1m
