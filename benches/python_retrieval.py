#!/usr/bin/env python3
"""Baseline timings for retrieval + metrics in Python, to compare the Rust port against.

Data: N = 10,000 items, dim 384, float32 standard-normal embeddings (numpy seed 0), labels 1000 x 10
(``np.repeat(np.arange(1000), 10)``), every item is both a query and a gallery item (so each query's own item is
excluded from its results, as OML does).

Parts (each runs in its own subprocess so that peak RSS is measured per part):

* ``numpy``: brute force with numpy/BLAS, blocked over queries: ``d^2 = |q|^2 + |g|^2 - 2 q.g`` (one GEMM per
  block), clip at 0, the query's own item set to +inf, ``np.argpartition`` for the top ``n`` (default 5), then the
  ``n`` candidates are sorted and ``sqrt`` is taken. Then cmc@1,5 / precision@5 / map@5 are computed vectorised
  with OML's definitions (timed separately).
* ``torch_mm``: the same brute force with torch's GEMM (``torch.addmm``, MKL) and ``torch.topk`` -- shows what a fast
  BLAS gives (numpy's bundled OpenBLAS may not use the best kernels for the CPU).
* ``oml``: Python OML 4.0 ``RetrievalResults.from_embeddings(embeddings, dataset, n_items=n)`` (torch.cdist in
  batches of 5000 queries + torch.topk) followed by ``calc_retrieval_metrics_rr(rr, cmc_top_k=(1, 5),
  precision_top_k=(5,), map_top_k=(5,))`` -- the same calls ``EmbeddingMetrics`` makes (n_items = max k = 5).

Usage:
    python benches/python_retrieval.py [--threads 2] [--n 10000] [--dim 384] [--top-n 5] [--parts numpy,torch_mm,oml]

Thread count is applied through OMP/MKL/OPENBLAS env vars (set before numpy/torch are imported in the child) and
``torch.set_num_threads``. Peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the child process.
"""

import argparse
import json
import os
import subprocess
import sys
import time

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def make_data(n: int, dim: int):
    import numpy as np

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n, dim), dtype=np.float32)
    labels = np.repeat(np.arange(n // 10), 10)[:n]
    return emb, labels


def metrics_numpy(hits, n_gts, ks_cmc, ks_prec, ks_map):
    """OML definitions, vectorised (every query here has >= top_n retrieved items and n_gt > 0)."""
    import numpy as np

    out = {"cmc": {}, "precision": {}, "map": {}}
    cs = np.cumsum(hits, axis=1)
    for k in ks_cmc:
        out["cmc"][k] = float(hits[:, :k].any(axis=1).mean())
    for k in ks_prec:
        kk = min(k, hits.shape[1])
        out["precision"][k] = float((cs[:, kk - 1] / np.minimum(n_gts, kk)).mean())
    for k in ks_map:
        kk = min(k, hits.shape[1])
        pos = np.arange(1, kk + 1)
        num = (cs[:, :kk] / pos * hits[:, :kk]).sum(axis=1)
        den = cs[:, kk - 1].astype(np.float64)
        out["map"][k] = float(np.where(den > 0, num / np.where(den > 0, den, 1), 0.0).mean())
    return out


def part_numpy(n: int, dim: int, top_n: int, block: int) -> dict:
    import numpy as np

    emb, labels = make_data(n, dim)
    t0 = time.perf_counter()
    sq = np.einsum("ij,ij->i", emb, emb)
    ids = np.empty((n, top_n), dtype=np.int64)
    dists = np.empty((n, top_n), dtype=np.float32)
    rows = np.arange(block)
    for s in range(0, n, block):
        e = min(s + block, n)
        q = emb[s:e]
        d2 = q @ emb.T  # GEMM, [b, n]
        d2 *= -2.0
        d2 += sq[s:e, None]
        d2 += sq[None, :]
        np.maximum(d2, 0.0, out=d2)
        d2[rows[: e - s], np.arange(s, e)] = np.inf  # exclude the query itself
        part = np.argpartition(d2, top_n - 1, axis=1)[:, :top_n]
        pd = np.take_along_axis(d2, part, axis=1)
        order = np.argsort(pd, axis=1, kind="stable")
        ids[s:e] = np.take_along_axis(part, order, axis=1)
        dists[s:e] = np.sqrt(np.take_along_axis(pd, order, axis=1))
    t_knn = time.perf_counter() - t0

    t1 = time.perf_counter()
    hits = labels[ids] == labels[:, None]
    n_gts = np.bincount(labels)[labels] - 1  # same-label items minus the query itself
    m = metrics_numpy(hits, n_gts, (1, 5), (5,), (5,))
    t_metrics = time.perf_counter() - t1
    return {"knn_s": t_knn, "metrics_s": t_metrics, "total_s": t_knn + t_metrics, "metrics": m, "block": block}


def part_torch_mm(n: int, dim: int, top_n: int, block: int) -> dict:
    """The same brute force as ``part_numpy`` but with torch's BLAS (MKL) GEMM and ``torch.topk``."""
    import numpy as np
    import torch

    emb, labels = make_data(n, dim)
    x = torch.from_numpy(emb)
    t0 = time.perf_counter()
    sq = (x * x).sum(1)
    ids = torch.empty((n, top_n), dtype=torch.long)
    dists = torch.empty((n, top_n), dtype=torch.float32)
    for s in range(0, n, block):
        e = min(s + block, n)
        d2 = torch.addmm(sq[None, :], x[s:e], x.T, beta=1.0, alpha=-2.0)
        d2 += sq[s:e, None]
        d2.clamp_(min=0.0)
        d2[torch.arange(e - s), torch.arange(s, e)] = float("inf")
        v, i = torch.topk(d2, top_n, dim=1, largest=False, sorted=True)
        ids[s:e] = i
        dists[s:e] = v.sqrt()
    t_knn = time.perf_counter() - t0
    t1 = time.perf_counter()
    ids_np = ids.numpy()
    hits = labels[ids_np] == labels[:, None]
    n_gts = np.bincount(labels)[labels] - 1
    m = metrics_numpy(hits, n_gts, (1, 5), (5,), (5,))
    t_metrics = time.perf_counter() - t1
    return {"knn_s": t_knn, "metrics_s": t_metrics, "total_s": t_knn + t_metrics, "metrics": m, "block": block}


def part_oml(n: int, dim: int, top_n: int) -> dict:
    import numpy as np
    import torch

    from oml.interfaces.datasets import IQueryGalleryLabeledDataset
    from oml.metrics.embeddings import calc_retrieval_metrics_rr
    from oml.retrieval.retrieval_results import RetrievalResults

    class AllQueryGallery(IQueryGalleryLabeledDataset):
        def __init__(self, labels):
            self._labels = labels
            self._ids = torch.arange(len(labels))
            self.extra_data = {}
            self.input_tensors_key = "input_tensors"
            self.index_key = "idx"

        def __getitem__(self, item):
            return {self.index_key: item}

        def __len__(self):
            return len(self._labels)

        def get_query_ids(self):
            return self._ids

        def get_gallery_ids(self):
            return self._ids

        def get_labels(self):
            return self._labels

    emb, labels = make_data(n, dim)
    emb_t = torch.from_numpy(emb)
    ds = AllQueryGallery(labels)
    t0 = time.perf_counter()
    rr = RetrievalResults.from_embeddings(emb_t, ds, n_items=top_n)
    t_knn = time.perf_counter() - t0
    t1 = time.perf_counter()
    m = calc_retrieval_metrics_rr(rr, cmc_top_k=(1, 5), precision_top_k=(5,), map_top_k=(5,), verbose=False)
    t_metrics = time.perf_counter() - t1
    m = {k: {kk: float(vv) for kk, vv in v.items()} for k, v in m.items()}
    return {
        "knn_s": t_knn,
        "metrics_s": t_metrics,
        "total_s": t_knn + t_metrics,
        "metrics": m,
        "torch_threads": torch.get_num_threads(),
    }


def child(args: argparse.Namespace) -> None:
    import resource

    if args.child == "numpy":
        res = part_numpy(args.n, args.dim, args.top_n, args.block)
    else:
        import torch

        torch.set_num_threads(args.threads)
        if args.child == "torch_mm":
            res = part_torch_mm(args.n, args.dim, args.top_n, args.block)
        else:
            res = part_oml(args.n, args.dim, args.top_n)
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--top-n", type=int, default=5)
    ap.add_argument("--block", type=int, default=1000, help="query block size for the numpy part")
    ap.add_argument("--parts", default="numpy,torch_mm,oml")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        child(args)
        return

    env = dict(os.environ)
    for v in THREAD_VARS:
        env[v] = str(args.threads)
    print(f"N={args.n} dim={args.dim} top_n={args.top_n} threads={args.threads}")
    for part in args.parts.split(","):
        cmd = [sys.executable, __file__, "--child", part, "--n", str(args.n), "--dim", str(args.dim),
               "--top-n", str(args.top_n), "--threads", str(args.threads), "--block", str(args.block)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            raise SystemExit(f"part {part} failed")
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        res = json.loads(line[len("RESULT "):])
        print(
            f"{part:6s} knn {res['knn_s']:7.3f} s  metrics {res['metrics_s']:7.3f} s  total {res['total_s']:7.3f} s  "
            f"peak RSS {res['peak_rss_mib']:8.1f} MiB  metrics={res['metrics']}"
        )


if __name__ == "__main__":
    main()
