#!/usr/bin/env bash
# Side by side on the same 512 JPEGs (500x375): torch DataLoader (2 workers) over OML's dataset with
# norm_resize_torch(224), and oml's ImageLoader with the same preset.
# Needs a venv with open-metric-learning (PYTHON=/path/to/venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
dir=${1:-$(mktemp -d)}
"$py" benches/python_loader.py "$dir" --n 512 --workers 2 --threads 2
cargo bench --bench loader -- "$dir"
