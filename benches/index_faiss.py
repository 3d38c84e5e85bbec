"""FAISS's HNSW on the data `oml/examples/index_bench.rs` wrote (gallery.npy, queries.npy and the
exact top-10 in exact_ids.npy): build time, size, queries/s at k = 10 and recall@10 over the same
sweep of the search depth, with the same threads. Writes faiss.json beside the data.

    pip install faiss-cpu numpy
    python benches/index_faiss.py /tmp/ib_1m [--threads 2]
"""

import json
import os
import sys
import tempfile
import time

import faiss
import numpy as np


def main():
    out = sys.argv[1]
    threads = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 2
    faiss.omp_set_num_threads(threads)
    g = np.load(os.path.join(out, "gallery.npy")).astype(np.float32)
    q = np.load(os.path.join(out, "queries.npy")).astype(np.float32)
    truth = np.load(os.path.join(out, "exact_ids.npy"))
    n, d = g.shape
    k = truth.shape[1]
    print(f"gallery {n} x {d}, {len(q)} queries, k = {k}, {threads} threads, faiss {faiss.__version__}")
    rows = []
    # Exact, for reference.
    flat = faiss.IndexFlatL2(d)
    flat.add(g)
    t = time.perf_counter()
    flat.search(q, k)
    s = time.perf_counter() - t
    print(f"faiss flat  {len(q) / s:9.0f} q/s")
    rows.append({"method": "faiss flat", "qps": len(q) / s, "recall": 1.0})
    del flat

    index = faiss.IndexHNSWFlat(d, 16)  # M = 16 links per node, as USearch's connectivity
    index.hnsw.efConstruction = 128  # as USearch's expansion_add
    t = time.perf_counter()
    index.add(g)
    build = time.perf_counter() - t
    with tempfile.NamedTemporaryFile(suffix=".faiss") as f:
        faiss.write_index(index, f.name)
        size = os.path.getsize(f.name)
    for ef in [16, 32, 64, 128, 256]:
        index.hnsw.efSearch = max(ef, k)
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            _, ids = index.search(q, k)
            best = min(best, time.perf_counter() - t)
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, truth)])
        qps = len(q) / best
        print(f"faiss hnsw ef {ef:3d} build {build:7.1f} s  size {size / 1e6:7.1f} MB  {qps:9.0f} q/s  recall@10 {recall:.4f}")
        rows.append({"method": "faiss hnsw", "ef_search": ef, "build_s": build, "bytes": size, "qps": qps, "recall": float(recall)})
    with open(os.path.join(out, "faiss.json"), "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
