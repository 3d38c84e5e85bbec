#!/usr/bin/env python3
"""Reference timing of OML 4.0's ``check_retrieval_dataframe_format`` on a large CSV.

Generates a deterministic 100,000-row OML-format CSV and times the Python
checker, so the Rust implementation (benches/csv_check.rs) has a baseline.

CSV layout (row i, 0-based):
    label      = i // 5                       (20,000 labels x 5 samples)
    path       = images/{i}.jpg
    split      = "train" if label < 10,000 else "validation"   (class-disjoint halves)
    is_query   = empty on train rows, True on validation rows
    is_gallery = empty on train rows, True on validation rows
    category   = cat{label % 100}             (only with --category)

OML 4.0 has no switch to skip the "paths exist" check: whenever a ``path``
column is present it asserts ``(dataset_root / path).exists()`` for every row.
So the benchmark creates the 100,000 referenced files (empty) under a
dataset root (a temporary directory unless --dataset-root is given).

Reported (seconds, median over --runs repetitions):
    total_from_csv   check_retrieval_dataframe_format(csv_path, dataset_root=root, verbose=False)
    read_csv         pandas.read_csv(csv_path) alone (what the checker does first)
    checks_from_df   check_retrieval_dataframe_format(df, ...) on an already loaded DataFrame
    path_exists      just the per-row (root / path).exists() scan (part of checks_from_df)

Usage:
    python benches/python_csv_check.py /tmp/oml_bench.csv [--category] [--runs 5] [--dataset-root DIR]
"""

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

N_LABELS = 20_000
PER_LABEL = 5
N_CATEGORIES = 100


def write_csv(csv_path: Path, with_category: bool) -> int:
    header = ["label", "path", "split", "is_query", "is_gallery"]
    if with_category:
        header.append("category")
    lines = [",".join(header)]
    half = N_LABELS // 2
    for i in range(N_LABELS * PER_LABEL):
        label = i // PER_LABEL
        if label < half:
            fields = [str(label), f"images/{i}.jpg", "train", "", ""]
        else:
            fields = [str(label), f"images/{i}.jpg", "validation", "True", "True"]
        if with_category:
            fields.append(f"cat{label % N_CATEGORIES}")
        lines.append(",".join(fields))
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def make_empty_images(root: Path, n_rows: int) -> None:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(n_rows):
        p = images / f"{i}.jpg"
        if not p.exists():
            p.touch()


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv_path", type=Path, help="where to write the generated CSV")
    parser.add_argument("--category", action="store_true", help="add a 'category' column")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dataset-root", type=Path, default=None, help="dir for the (empty) image files")
    args = parser.parse_args()

    import pandas as pd
    import oml
    from oml.utils.dataframe_format import check_retrieval_dataframe_format

    n_rows = write_csv(args.csv_path, args.category)

    tmp_root = None
    if args.dataset_root is None:
        tmp_root = Path(tempfile.mkdtemp(prefix="oml_csv_bench_"))
        root = tmp_root
    else:
        root = args.dataset_root
    try:
        make_empty_images(root, n_rows)

        # Warm-up (imports, filesystem cache), not timed.
        check_retrieval_dataframe_format(args.csv_path, dataset_root=root, verbose=False)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            total = median_time(
                lambda: check_retrieval_dataframe_format(args.csv_path, dataset_root=root, verbose=False), args.runs
            )
            read_csv = median_time(lambda: pd.read_csv(args.csv_path, sep=",", index_col=None), args.runs)
            df = pd.read_csv(args.csv_path, sep=",", index_col=None)
            checks = median_time(
                lambda: check_retrieval_dataframe_format(df, dataset_root=root, verbose=False), args.runs
            )
            paths = df["path"].to_list()
            path_exists = median_time(lambda: [(root / p).exists() for p in paths], args.runs)

        result = {
            "rows": n_rows,
            "category": args.category,
            "runs": args.runs,
            "median_s": {
                "total_from_csv": round(total, 4),
                "read_csv": round(read_csv, 4),
                "checks_from_df": round(checks, 4),
                "path_exists": round(path_exists, 4),
            },
            "versions": {
                "python": platform.python_version(),
                "pandas": pd.__version__,
                "open-metric-learning": getattr(oml, "__version__", "unknown"),
            },
        }
        json.dump(result, sys.stdout, indent=1)
        print()
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)


if __name__ == "__main__":
    main()
