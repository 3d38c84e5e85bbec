#!/usr/bin/env bash
# Side by side on the same files: Python OML's check_retrieval_dataframe_format vs `oml`'s check of
# a 100,000-row CSV (with and without a category column).
# Needs a venv with open-metric-learning (PYTHON=/path/to/venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
dir=$(mktemp -d)
"$py" benches/python_csv_check.py "$dir/plain.csv" --dataset-root "$dir/root"
"$py" benches/python_csv_check.py "$dir/category.csv" --category --dataset-root "$dir/root"
cargo bench --bench csv_check -- "$dir"
rm -rf "$dir"
