#!/usr/bin/env python3
"""Generate golden retrieval/metric fixtures from Python OML 4.0 for the Rust port.

Run (needs a venv with `open-metric-learning==4.0.0`, torch, numpy):

    /work/venv/bin/python tests/golden/make_metrics_fixtures.py

It writes `tests/golden/metrics_oml.json` (next to this script). Everything in that file is produced by
calling Python OML 4.0 itself; the script only builds inputs and serialises outputs.

Which OML function produced what
--------------------------------
* ``functional_cases``   -> ``oml.functional.metrics.calc_retrieval_metrics`` (``reduce=False`` for the
  ``per_query`` vectors and ``reduce=True`` for ``reduced``), and, where the case is given as ``gt_tops``/``n_gts``
  (docstring examples), also ``calc_cmc`` / ``calc_precision`` / ``calc_map`` directly (``direct``).
* ``knn_cases``          -> ``oml.functional.knn.batched_knn`` (item-index space, query/gallery may overlap)
  and ``RetrievalResults.from_embeddings_qg`` (separate query / gallery sets).
* ``fnmr_cases``         -> ``oml.functional.metrics.calc_fnmr_at_fmr`` (raw distances) and
  ``oml.metrics.embeddings.calc_fnmr_at_fmr_rr`` (from a ``RetrievalResults``).
* ``pcf_cases``          -> ``oml.functional.metrics.calc_pcf``.
* ``thresholding_cases`` -> ``oml.retrieval.postprocessors.algo.ConstantThresholding`` /
  ``AdaptiveThresholding`` ``.process(rr)``.
* ``embedding_metrics_cases`` -> ``oml.metrics.embeddings.EmbeddingMetrics.compute_metrics()``; the retrieval
  lists are ``EmbeddingMetrics.retrieval_results`` (built by ``RetrievalResults.from_embeddings`` with
  ``n_items = top_n_used``), ``metrics`` is the returned (reduced) nested dict and ``metrics_unreduced`` is
  ``EmbeddingMetrics.metrics_unreduced`` (per-query vectors for cmc/precision/map).
* ``rr_metrics_cases``   -> ``RetrievalResults.from_embeddings`` with an explicit (small) ``n_items`` followed by
  ``calc_retrieval_metrics_rr`` (exercises retrieved lists shorter than ``k``).

JSON conventions
----------------
* All ids are 0-based. In ``embedding_metrics_cases`` / ``rr_metrics_cases`` ``retrieved_ids`` and ``gt_ids`` are
  *gallery positions* (index into the list of gallery items, i.e. into ``np.nonzero(is_gallery)``), exactly as
  OML returns them; ``gallery_item_ids`` / ``query_item_ids`` give the mapping to dataset item indices.
* Dict keys are strings: ``k`` (python ints in OML) -> ``"5"``; ``fmr``/``pcf`` (python floats in OML) -> ``repr``
  (e.g. ``"0.1"``); categories -> ``str(category)``. The OML dict nesting is kept: ``{"OVERALL": {"cmc": {"1": v}}}``.
* NaN -> ``null``. Floats are float32 values written as decimal (parse as f64, cast to f32 to get exact inputs).
* ``distances`` are OML's float32 distances (torch.cdist; for >25 rows per side torch uses the
  ``||a||^2+||b||^2-2ab`` matmul path, so tiny distances can be off by ~1e-3); ``distances_f64`` are the same pairs
  recomputed in float64 from the float32 embeddings -- compare against those with a tight tolerance.
* Randomised ``embedding_metrics_cases`` store the numpy ``seed`` used: the first of base, base+1000, ... for which
  OML's retrieved distances have no consecutive gap <= 1e-4 and no positive distance lies within 1e-5 of an FMR
  threshold, so the expected order/metrics do not hinge on float rounding.
* ``tie_groups``: per query, ``[start, end)`` ranges of retrieved positions whose OML distances are equal within
  1e-5. OML's order inside such a range comes from ``torch.topk`` and is arbitrary; compare those ranges as sets.
"""

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import BoolTensor, FloatTensor, LongTensor

import oml
from oml.functional.knn import batched_knn
from oml.functional.metrics import (
    calc_cmc,
    calc_fnmr_at_fmr,
    calc_map,
    calc_pcf,
    calc_precision,
    calc_retrieval_metrics,
)
from oml.interfaces.datasets import ILabeledDataset, IQueryGalleryLabeledDataset
from oml.metrics.embeddings import EmbeddingMetrics, calc_fnmr_at_fmr_rr, calc_retrieval_metrics_rr
from oml.retrieval.postprocessors.algo import AdaptiveThresholding, ConstantThresholding
from oml.retrieval.retrieval_results import RetrievalResults

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

OUT_PATH = Path(__file__).resolve().parent / "metrics_oml.json"
TIE_EPS = 1e-5


# ----------------------------------------------------------------------------------------------------------------
# serialisation helpers
# ----------------------------------------------------------------------------------------------------------------


def num(x: Any) -> Any:
    """A python scalar for JSON; NaN/inf -> None."""
    if isinstance(x, torch.Tensor):
        x = x.item()
    if isinstance(x, (np.floating, np.integer, np.bool_)) or (isinstance(x, np.ndarray) and x.ndim == 0):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def to_list(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.ndim == 0:
            return num(x)
        return [to_list(v) for v in x]
    if isinstance(x, (list, tuple)):
        return [to_list(v) for v in x]
    return num(x)


def key(k: Any) -> str:
    if isinstance(k, torch.Tensor):
        k = k.item()
    if isinstance(k, (np.generic,)):
        k = k.item()
    if isinstance(k, float):
        return repr(k)
    return str(k)


def metrics_to_json(d: Any) -> Any:
    if isinstance(d, dict):
        return {key(k): metrics_to_json(v) for k, v in d.items()}
    return to_list(d)


def f32(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def tie_groups(dists: Sequence[float]) -> List[List[int]]:
    groups = []
    i = 0
    n = len(dists)
    while i < n:
        j = i + 1
        while j < n and abs(dists[j] - dists[i]) <= TIE_EPS:
            j += 1
        if j - i > 1:
            groups.append([i, j])
        i = j
    return groups


def min_consecutive_gap(distances: Sequence[torch.Tensor]) -> Optional[float]:
    gaps = [float((d[1:] - d[:-1]).min()) for d in distances if len(d) > 1]
    return min(gaps) if gaps else None


def rr_to_json(rr: RetrievalResults, emb_q: Optional[np.ndarray] = None, emb_g: Optional[np.ndarray] = None) -> dict:
    out: Dict[str, Any] = {
        "retrieved_ids": [to_list(r) for r in rr.retrieved_ids],
        "distances": [to_list(d) for d in rr.distances],
        "gt_ids": None if rr.gt_ids is None else [to_list(g) for g in rr.gt_ids],
        "tie_groups": [tie_groups(d.tolist()) for d in rr.distances],
    }
    if emb_q is not None and emb_g is not None:
        q64 = emb_q.astype(np.float64)
        g64 = emb_g.astype(np.float64)
        out["distances_f64"] = [
            [float(np.sqrt(((q64[i] - g64[j]) ** 2).sum())) for j in r.tolist()] for i, r in enumerate(rr.retrieved_ids)
        ]
    gap = min_consecutive_gap(rr.distances)
    out["min_consecutive_gap"] = gap
    return out


# ----------------------------------------------------------------------------------------------------------------
# a minimal in-memory dataset implementing OML's query/gallery labeled interface
# ----------------------------------------------------------------------------------------------------------------


class EmbDataset(IQueryGalleryLabeledDataset):
    def __init__(
        self,
        embeddings: np.ndarray,
        labels: Sequence[int],
        is_query: Sequence[bool],
        is_gallery: Sequence[bool],
        categories: Optional[Sequence[Any]] = None,
        sequence: Optional[Sequence[Any]] = None,
    ):
        self.input_tensors_key = "input_tensors"
        self.index_key = "idx"
        self.labels_key = "labels"
        self._emb = torch.from_numpy(f32(embeddings))
        self._labels = np.asarray(labels, dtype=np.int64)
        self._query_ids = torch.from_numpy(np.nonzero(np.asarray(is_query, dtype=bool))[0]).long().view(-1)
        self._gallery_ids = torch.from_numpy(np.nonzero(np.asarray(is_gallery, dtype=bool))[0]).long().view(-1)
        self.extra_data: Dict[str, Any] = {}
        if categories is not None:
            self.extra_data["category"] = list(categories)
        if sequence is not None:
            self.extra_data["sequence"] = list(sequence)

    def __getitem__(self, item: int) -> Dict[str, Any]:
        return {self.input_tensors_key: self._emb[item], self.index_key: item, self.labels_key: self._labels[item]}

    def __len__(self) -> int:
        return len(self._emb)

    def get_query_ids(self) -> LongTensor:
        return self._query_ids

    def get_gallery_ids(self) -> LongTensor:
        return self._gallery_ids

    def get_labels(self) -> np.ndarray:
        return self._labels


class PlainDataset(ILabeledDataset):
    """Query-only or gallery-only dataset for from_embeddings_qg."""

    def __init__(self, n: int, labels: Optional[Sequence[int]] = None, sequence: Optional[Sequence[Any]] = None):
        self.input_tensors_key = "input_tensors"
        self.index_key = "idx"
        self._n = n
        self._labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.extra_data: Dict[str, Any] = {}
        if sequence is not None:
            self.extra_data["sequence"] = list(sequence)

    def __getitem__(self, item: int) -> Dict[str, Any]:
        return {self.index_key: item}

    def __len__(self) -> int:
        return self._n

    def get_labels(self) -> np.ndarray:
        return self._labels


# ----------------------------------------------------------------------------------------------------------------
# functional cases: retrieved ids + gt ids -> metrics
# ----------------------------------------------------------------------------------------------------------------


def gt_tops_to_ids(gt_tops: List[List[int]], n_gts: List[int]) -> Dict[str, Any]:
    """Turn docstring-style (gt_tops, n_gts) into (retrieved_ids, gt_ids).

    Retrieved ids are 0..len-1; relevant items that were not retrieved get ids 1000, 1001, ...
    """
    retrieved, gts = [], []
    for tops, n_gt in zip(gt_tops, n_gts):
        r = list(range(len(tops)))
        g = [i for i, t in enumerate(tops) if t]
        assert len(g) <= n_gt
        g += [1000 + j for j in range(n_gt - len(g))]
        retrieved.append(r)
        gts.append(g)
    return {"retrieved_ids": retrieved, "gt_ids": gts}


def functional_case(
    name: str,
    source: str,
    retrieved_ids: List[List[int]],
    gt_ids: List[List[int]],
    cmc_top_k: tuple,
    precision_top_k: tuple,
    map_top_k: tuple,
    query_categories: Optional[List[Any]] = None,
    expected_from_oml_test: Optional[dict] = None,
    gt_tops: Optional[List[List[int]]] = None,
    n_gts: Optional[List[int]] = None,
) -> dict:
    r_t = [LongTensor(r) for r in retrieved_ids]
    g_t = [LongTensor(g) for g in gt_ids]
    qc = None if query_categories is None else np.array(query_categories)
    args = dict(cmc_top_k=cmc_top_k, precision_top_k=precision_top_k, map_top_k=map_top_k, verbose=False)
    per_query = calc_retrieval_metrics(r_t, g_t, query_categories=qc, reduce=False, **args)
    reduced = calc_retrieval_metrics(r_t, g_t, query_categories=qc, reduce=True, **args)
    case = {
        "name": name,
        "source": source,
        "retrieved_ids": retrieved_ids,
        "gt_ids": gt_ids,
        "query_categories": query_categories,
        "cmc_top_k": list(cmc_top_k),
        "precision_top_k": list(precision_top_k),
        "map_top_k": list(map_top_k),
        "per_query": metrics_to_json(dict(per_query)),
        "reduced": metrics_to_json(dict(reduced)),
    }
    if gt_tops is not None:
        bt = [BoolTensor([bool(v) for v in t]) for t in gt_tops]
        direct = {}
        if cmc_top_k:
            direct["cmc"] = dict(zip(cmc_top_k, calc_cmc(bt, n_gts, cmc_top_k)))
        if precision_top_k:
            direct["precision"] = dict(zip(precision_top_k, calc_precision(bt, n_gts, precision_top_k)))
        if map_top_k:
            direct["map"] = dict(zip(map_top_k, calc_map(bt, n_gts, map_top_k)))
        case["gt_tops"] = gt_tops
        case["n_gts"] = n_gts
        case["direct"] = metrics_to_json(direct)
    if expected_from_oml_test is not None:
        case["expected_from_oml_test"] = metrics_to_json(expected_from_oml_test)
    return case


def exact_six_item_case() -> dict:
    """The 6-item case from OML's tests (test_outdated/test_retrieval_metrics.py::exact_test_case).

    labels [0,0,0,0,1,1], every item is both query and gallery. For each query the five other items are ranked so
    that the same-label items occupy the given positions (V = relevant, X = not):
        q0 VVXVX  q1 VXXVV  q2 XVVXV  q3 XXVVV  q4 VXXXX  q5 XXXVX
    """
    labels = [0, 0, 0, 0, 1, 1]
    positions = [[0, 1, 3], [0, 3, 4], [1, 2, 4], [2, 3, 4], [0], [3]]
    retrieved, gts, dist_rows = [], [], []
    n = len(labels)
    for q in range(n):
        same = [j for j in range(n) if j != q and labels[j] == labels[q]]
        other = [j for j in range(n) if labels[j] != labels[q]]
        order = []
        si, oi = iter(same), iter(other)
        for p in range(n - 1):
            order.append(next(si) if p in positions[q] else next(oi))
        retrieved.append(order)
        gts.append(same)
        row = [0.0] * n
        for rank, j in enumerate(order):
            row[j] = float(rank + 1)
        dist_rows.append(row)  # self distance 0 (ignored: the query is the same item as that gallery)

    expected = {
        "cmc": {
            1: [1, 1, 0, 0, 1, 0],
            2: [1, 1, 1, 0, 1, 0],
            3: [1, 1, 1, 1, 1, 0],
            4: [1, 1, 1, 1, 1, 1],
            5: [1, 1, 1, 1, 1, 1],
            10: [1, 1, 1, 1, 1, 1],
        },
        "precision": {
            1: [1, 1, 0, 0, 1, 0],
            2: [1, 0.5, 0.5, 0, 1, 0],
            3: [2 / 3, 1 / 3, 2 / 3, 1 / 3, 1, 0],
            4: [1, 2 / 3, 2 / 3, 2 / 3, 1, 1],
            5: [1, 1, 1, 1, 1, 1],
            10: [1, 1, 1, 1, 1, 1],
        },
        "map": {
            1: [1, 1, 0, 0, 1, 0],
            2: [1, 1, 1 / 2, 0, 1, 0],
            3: [1, 1, 7 / 12, 1 / 3, 1, 0],
            4: [11 / 12, 3 / 4, 7 / 12, 5 / 12, 1, 1 / 4],
            5: [11 / 12, 21 / 30, 53 / 90, 43 / 90, 1, 1 / 4],
            10: [11 / 12, 21 / 30, 53 / 90, 43 / 90, 1, 1 / 4],
        },
    }
    ks = (1, 2, 3, 4, 5, 10)
    case = functional_case(
        "exact_six_items",
        "tests/test_oml/test_functional/test_metrics/test_outdated/test_retrieval_metrics.py::exact_test_case",
        retrieved,
        gts,
        ks,
        ks,
        ks,
        expected_from_oml_test=expected,
    )
    case["labels"] = labels
    case["positions"] = positions
    case["distance_matrix"] = dist_rows
    case["note"] = (
        "Query i and gallery i are the same item (all items are query and gallery); retrieved lists exclude the "
        "query itself. distance_matrix[q][g] = rank+1 of g for q (0 on the diagonal, which is ignored)."
    )
    return case


def build_functional_cases() -> List[dict]:
    cases = []

    cases.append(exact_six_item_case())

    # docstring of calc_cmc
    gt_tops, n_gts = [[1, 0], [0, 1, 1], [0, 0], []], [2, 2, 1, 0]
    ids = gt_tops_to_ids(gt_tops, n_gts)
    cases.append(
        functional_case(
            "docstring_calc_cmc",
            "oml/functional/metrics.py::calc_cmc docstring",
            ids["retrieved_ids"],
            ids["gt_ids"],
            (1, 2),
            (1, 2),
            (1, 2),
            gt_tops=gt_tops,
            n_gts=n_gts,
            expected_from_oml_test={"cmc": {1: [1.0, 0.0, 0.0, 1.0], 2: [1.0, 1.0, 0.0, 1.0]}},
        )
    )

    # docstring of calc_precision
    gt_tops, n_gts = [[1, 0], [0, 1, 1], [0, 0], []], [2, 3, 5, 2]
    ids = gt_tops_to_ids(gt_tops, n_gts)
    cases.append(
        functional_case(
            "docstring_calc_precision",
            "oml/functional/metrics.py::calc_precision docstring",
            ids["retrieved_ids"],
            ids["gt_ids"],
            (1, 2),
            (1, 2),
            (1, 2),
            gt_tops=gt_tops,
            n_gts=n_gts,
            expected_from_oml_test={"precision": {1: [1.0, 0.0, 0.0, 0.0], 2: [0.5, 0.5, 0.0, 0.0]}},
        )
    )

    # docstring of calc_map
    gt_tops, n_gts = [[1, 0], [0, 1], [0, 0, 0, 0], []], [1, 1, 2, 0]
    ids = gt_tops_to_ids(gt_tops, n_gts)
    cases.append(
        functional_case(
            "docstring_calc_map",
            "oml/functional/metrics.py::calc_map docstring",
            ids["retrieved_ids"],
            ids["gt_ids"],
            (1, 2),
            (1, 2),
            (1, 2),
            gt_tops=gt_tops,
            n_gts=n_gts,
            expected_from_oml_test={"map": {1: [1.0, 0.0, 0.0, 1.0], 2: [1.0, 0.5, 0.0, 1.0]}},
        )
    )

    # precision docstring narrative: n = 3 relevant, g = [1, 1, 1, 0, 0]
    gt_tops, n_gts = [[1, 1, 1, 0, 0, 0]], [3]
    ids = gt_tops_to_ids(gt_tops, n_gts)
    cases.append(
        functional_case(
            "docstring_precision_denominator",
            "oml/functional/metrics.py::calc_precision docstring text (n=3, g=[1,1,1,0,0,...])",
            ids["retrieved_ids"],
            ids["gt_ids"],
            (1, 2, 3, 4, 5, 6),
            (1, 2, 3, 4, 5, 6),
            (1, 2, 3, 4, 5, 6),
            gt_tops=gt_tops,
            n_gts=n_gts,
            expected_from_oml_test={"precision": {k: [1.0] for k in (1, 2, 3, 4, 5, 6)}},
        )
    )

    # test_metrics_retrieval.py::test_categories_in_metrics
    retrieved = [[0, 5, 4], [2, 1, 5], [2, 1, 5]]
    gts = [[0, 10, 4], [2, 3], [2, 3]]
    overall = {"cmc": {1: 1.0}, "precision": {3: (2 / 3 + 2 * 1 / 2) / 3, 5: (2 / 3 + 2 * 1 / 2) / 3}}
    cases.append(
        functional_case(
            "categories_none",
            "tests/test_oml/test_functional/test_metrics/test_metrics_retrieval.py::test_categories_in_metrics",
            retrieved,
            gts,
            (1,),
            (3, 5),
            tuple(),
            expected_from_oml_test=overall,
        )
    )
    cases.append(
        functional_case(
            "categories_cat_dog",
            "tests/test_oml/test_functional/test_metrics/test_metrics_retrieval.py::test_categories_in_metrics",
            retrieved,
            gts,
            (1,),
            (3, 5),
            tuple(),
            query_categories=["cat", "dog", "dog"],
            expected_from_oml_test={
                "cat": {"cmc": {1: 1.0}, "precision": {3: 2 / 3, 5: 2 / 3}},
                "dog": {"cmc": {1: 1.0}, "precision": {3: 1 / 2, 5: 1 / 2}},
                "OVERALL": overall,
            },
        )
    )

    # test_metrics_retrieval.py::test_empty_predictions
    cases.append(
        functional_case(
            "empty_predictions",
            "tests/test_oml/test_functional/test_metrics/test_metrics_retrieval.py::test_empty_predictions",
            [[], [], []],
            [[0], [], [10, 20]],
            (3,),
            (2,),
            (1,),
            expected_from_oml_test={"cmc": {3: [0.0, 1.0, 0.0]}, "precision": {2: [0.0, 1.0, 0.0]}, "map": {1: [0.0, 1.0, 0.0]}},
        )
    )

    # queries without ground truth but with retrieved items: precision is 0/0 = NaN (-> null), cmc and map are 0
    cases.append(
        functional_case(
            "no_gt_with_retrieved",
            "synthetic (this script): a query with retrieved items but no gt",
            [[1, 2, 3], [0, 1], [4, 0, 2]],
            [[], [0], [2, 7]],
            (1, 3),
            (1, 3),
            (1, 3),
            query_categories=[1, 1, 2],
        )
    )

    # retrieved lists shorter than k (e.g. after thresholding): k is clipped to len(retrieved)
    cases.append(
        functional_case(
            "short_retrieved_lists",
            "synthetic (this script): len(retrieved) < k and n_gt > len(retrieved)",
            [[5, 1], [3], [0, 9, 8, 7], [2, 4, 6]],
            [[5, 1, 7, 8, 9], [4, 5], [7], [6, 4, 2, 1]],
            (1, 2, 5, 10),
            (1, 2, 5, 10),
            (1, 2, 5, 10),
        )
    )
    return cases


# ----------------------------------------------------------------------------------------------------------------
# kNN cases
# ----------------------------------------------------------------------------------------------------------------


def one_hot(i: int, dim: int) -> List[float]:
    v = [0.0] * dim
    v[i] = 1.0
    return v


def knn_case(
    name: str,
    source: str,
    embeddings: np.ndarray,
    ids_query: List[int],
    ids_gallery: List[int],
    top_n: int,
    labels: Optional[List[int]] = None,
    sequence_ids: Optional[List[int]] = None,
    bs: int = 5000,
    expected_from_oml_test: Optional[dict] = None,
) -> dict:
    emb = torch.from_numpy(f32(embeddings))
    distances, retrieved, gt_ids = batched_knn(
        embeddings=emb,
        ids_query=LongTensor(ids_query),
        ids_gallery=LongTensor(ids_gallery),
        top_n=top_n,
        labels_gt=None if labels is None else LongTensor(labels),
        sequence_ids=None if sequence_ids is None else LongTensor(sequence_ids),
        bs=bs,
    )
    rr = RetrievalResults(distances=distances, retrieved_ids=retrieved, gt_ids=gt_ids)
    e = f32(embeddings)
    out = {
        "name": name,
        "source": source,
        "function": "oml.functional.knn.batched_knn",
        "embeddings": to_list(e),
        "ids_query": ids_query,
        "ids_gallery": ids_gallery,
        "labels": labels,
        "sequence_ids": sequence_ids,
        "top_n": top_n,
        "bs": bs,
        **rr_to_json(rr, e[ids_query], e[ids_gallery]),
    }
    if expected_from_oml_test is not None:
        out["expected_from_oml_test"] = expected_from_oml_test
    return out


def build_knn_cases() -> List[dict]:
    cases = []
    # tests/test_oml/test_functional/test_knn.py::test_on_exact_case
    emb = np.array([one_hot(i, 4) for i in [0, 0, 0, 1, 1, 1]], dtype=np.float32)
    cases.append(
        knn_case(
            "knn_exact_case_with_sequences",
            "tests/test_oml/test_functional/test_knn.py::test_on_exact_case",
            emb,
            [0, 3],
            [0, 1, 2, 3, 4, 5],
            10,
            labels=[0, 0, 0, 1, 1, 1],
            sequence_ids=[0, 1, 2, 3, 3, 4],
            expected_from_oml_test={
                "distances": [[0, 0, math.sqrt(2), math.sqrt(2), math.sqrt(2)], [0, math.sqrt(2), math.sqrt(2), math.sqrt(2)]],
                "retrieved_ids_one_valid_order": [[1, 2, 3, 4, 5], [5, 1, 2, 0]],
                "gt_ids": [[1, 2], [5]],
                "note": "OML's test compares retrieved ids with themselves (tie order is not checked).",
            },
        )
    )

    # randomised: overlapping query/gallery, labels, sequences, small batch size (batching must not matter)
    rng = np.random.default_rng(101)
    n = 30
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    labels = rng.integers(0, 4, n).tolist()
    seqs = rng.integers(0, 6, n).tolist()
    ids_q = sorted(rng.choice(n, 18, replace=False).tolist())
    ids_g = sorted(rng.choice(n, 22, replace=False).tolist())
    cases.append(knn_case("knn_random_overlap_seq", "synthetic seed 101", emb, ids_q, ids_g, 7, labels, seqs, bs=4))
    cases.append(knn_case("knn_random_overlap_topn_gt_gallery", "synthetic seed 101", emb, ids_q, ids_g, 100, labels, None, bs=5))
    # no labels -> gt_ids is None
    cases.append(knn_case("knn_random_no_labels", "synthetic seed 101", emb, ids_q, ids_g, 3, None, seqs, bs=7))
    return cases


def build_qg_cases() -> List[dict]:
    """RetrievalResults.from_embeddings_qg: queries and galleries are separate sets (no self-exclusion)."""
    cases = []
    rng = np.random.default_rng(202)
    nq, ng, dim = 12, 20, 8
    eq = rng.standard_normal((nq, dim)).astype(np.float32)
    eg = rng.standard_normal((ng, dim)).astype(np.float32)
    lq = rng.integers(0, 5, nq).tolist()
    lg = rng.integers(0, 5, ng).tolist()
    sq = [f"s{v}" for v in rng.integers(0, 6, nq).tolist()]
    sg = [f"s{v}" for v in rng.integers(0, 6, ng).tolist()]
    for name, labels, seq, top_n in [
        ("qg_labels", True, False, 5),
        ("qg_labels_sequences", True, True, 30),
        ("qg_no_labels", False, False, 4),
    ]:
        dq = PlainDataset(nq, lq if labels else None, sq if seq else None)
        dg = PlainDataset(ng, lg if labels else None, sg if seq else None)
        rr = RetrievalResults.from_embeddings_qg(
            embeddings_query=torch.from_numpy(eq),
            embeddings_gallery=torch.from_numpy(eg),
            dataset_query=dq,
            dataset_gallery=dg,
            n_items=top_n,
        )
        cases.append(
            {
                "name": name,
                "source": "synthetic seed 202",
                "function": "RetrievalResults.from_embeddings_qg",
                "embeddings_query": to_list(eq),
                "embeddings_gallery": to_list(eg),
                "labels_query": lq if labels else None,
                "labels_gallery": lg if labels else None,
                "sequence_query": sq if seq else None,
                "sequence_gallery": sg if seq else None,
                "top_n": top_n,
                **rr_to_json(rr, eq, eg),
            }
        )
    return cases


# ----------------------------------------------------------------------------------------------------------------
# FNMR@FMR, PCF
# ----------------------------------------------------------------------------------------------------------------


def build_fnmr_cases() -> List[dict]:
    cases = []
    pos = np.array([0, 0, 1, 1, 2, 2, 5, 5, 9, 9], dtype=np.float32)
    neg = np.array([3, 3, 4, 4, 6, 6, 7, 7, 8, 8], dtype=np.float32)
    for name, fmr_vals in [("docstring", (0.1, 0.5)), ("docstring_interpolated", (0.0, 0.05, 0.13, 0.37, 0.5, 0.77, 1.0))]:
        cases.append(
            {
                "name": f"fnmr_{name}",
                "source": "oml/functional/metrics.py::calc_fnmr_at_fmr docstring / test_calc_fnmr_at_fmr",
                "function": "calc_fnmr_at_fmr",
                "pos_dist": to_list(pos),
                "neg_dist": to_list(neg),
                "fmr_vals": list(fmr_vals),
                "thresholds": to_list(np.quantile(neg, fmr_vals)),
                "fnmr": to_list(calc_fnmr_at_fmr(pos, neg, fmr_vals)),
            }
        )
    rng = np.random.default_rng(303)
    pos = (rng.random(37) * 2).astype(np.float32)
    neg = (rng.random(53) * 2 + 0.7).astype(np.float32)
    fmr_vals = (0.01, 0.1, 0.25, 0.5, 0.9)
    cases.append(
        {
            "name": "fnmr_random",
            "source": "synthetic seed 303",
            "function": "calc_fnmr_at_fmr",
            "pos_dist": to_list(pos),
            "neg_dist": to_list(neg),
            "fmr_vals": list(fmr_vals),
            "thresholds": to_list(np.quantile(neg, fmr_vals)),
            "fnmr": to_list(calc_fnmr_at_fmr(pos, neg, fmr_vals)),
        }
    )

    # test_calc_fnmr_at_fmr_rr: same data as a RetrievalResults
    dist = [FloatTensor([0, 0, 1, 1, 2, 2, 5, 5, 7, 7, 8, 8, 9]), FloatTensor([3, 3, 4, 4, 6, 6, 9])]
    rids = [LongTensor([10, 11, 12, 13, 14, 15, 16, 17, 20, 21, 22, 23, 18]), LongTensor([20, 21, 22, 23, 24, 25, 10])]
    gts = [LongTensor([10, 11, 12, 13, 14, 15, 16, 17, 18]), LongTensor([10])]
    rr = RetrievalResults(dist, rids, gts)
    res = calc_fnmr_at_fmr_rr(rr, fmr_vals=(0.1, 0.5))
    cases.append(
        {
            "name": "fnmr_rr_test",
            "source": "tests/test_oml/test_functional/test_metrics/test_outdated/test_retrieval_metrics.py::test_calc_fnmr_at_fmr_rr",
            "function": "calc_fnmr_at_fmr_rr",
            "distances": [to_list(d) for d in dist],
            "retrieved_ids": [to_list(r) for r in rids],
            "gt_ids": [to_list(g) for g in gts],
            "fmr_vals": [0.1, 0.5],
            "result": metrics_to_json(res),
        }
    )
    return cases


def build_pcf_cases() -> List[dict]:
    cases = []
    e = torch.eye(4, 10, dtype=torch.float)
    cases.append(
        {
            "name": "pcf_docstring_eye_4x10",
            "source": "oml/functional/metrics.py::calc_pcf docstring",
            "embeddings": to_list(e),
            "pcf_variance": [0.5, 1.0],
            "pcf": to_list(torch.stack(list(calc_pcf(e, (0.5, 1.0))))),
            "expected_from_oml_test": [0.2, 0.5],
            "note": (
                "fragile: r = 1.0 coincides with the explained-variance cumsum [1/3, 2/3, 1, 1]; OML's float32 "
                "cumsum gives <= 1.0 for the last two entries (-> 1 + 4 = 5 components). An f64 cumsum may land "
                "just above 1.0 and give a different count."
            ),
        }
    )
    e = torch.eye(300, 10, dtype=torch.float)
    e = torch.cat((e, e), dim=1)
    cases.append(
        {
            "name": "pcf_eye_case_300x20",
            "source": "tests/test_oml/test_functional/test_metrics/test_topological_metrics.py::eye_case",
            "embeddings_spec": "torch.cat((torch.eye(300, 10), torch.eye(300, 10)), dim=1)  -> shape [300, 20]",
            "pcf_variance": [0.5, 0.9],
            "pcf": to_list(torch.stack(list(calc_pcf(e, (0.5, 0.9))))),
            "expected_from_oml_test": [0.25, 0.45],
        }
    )
    rng = np.random.default_rng(404)
    # anisotropic data so that the answers are well separated from the thresholds
    scales = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1], dtype=np.float32)
    x = (rng.standard_normal((40, 8)) * scales).astype(np.float32)
    variances = (0.1, 0.5, 0.8, 0.9, 0.95, 0.99)
    xt = torch.from_numpy(x)
    ratio = (np.linalg.svd(x.astype(np.float64) - x.astype(np.float64).mean(0), compute_uv=False) ** 2)
    ratio = np.cumsum(ratio / ratio.sum())
    cases.append(
        {
            "name": "pcf_random_anisotropic",
            "source": "synthetic seed 404",
            "embeddings": to_list(x),
            "pcf_variance": list(variances),
            "pcf": to_list(torch.stack(list(calc_pcf(xt, variances)))),
            "explained_variance_ratio_cumsum_f64": to_list(ratio),
        }
    )
    return cases


# ----------------------------------------------------------------------------------------------------------------
# thresholding
# ----------------------------------------------------------------------------------------------------------------


def thresholding_case(name: str, source: str, kind: str, param: float, rr: RetrievalResults, expected: Optional[dict] = None) -> dict:
    proc = ConstantThresholding(th=param) if kind == "constant" else AdaptiveThresholding(n_std=param)
    out = proc.process(rr)
    case = {
        "name": name,
        "source": source,
        "kind": kind,
        "th" if kind == "constant" else "n_std": param,
        "input": {
            "distances": [to_list(d) for d in rr.distances],
            "retrieved_ids": [to_list(r) for r in rr.retrieved_ids],
            "gt_ids": None if rr.gt_ids is None else [to_list(g) for g in rr.gt_ids],
        },
        "output": {
            "distances": [to_list(d) for d in out.distances],
            "retrieved_ids": [to_list(r) for r in out.retrieved_ids],
            "gt_ids": None if out.gt_ids is None else [to_list(g) for g in out.gt_ids],
        },
    }
    if kind == "adaptive":
        diffs = torch.cat([d[1:] - d[:-1] for d in rr.distances])
        case["mean_gap_f64"] = float(diffs.double().mean()) if len(diffs) else None
    if expected is not None:
        case["expected_from_oml_test"] = expected
    return case


def build_thresholding_cases() -> List[dict]:
    cases = []
    rr = RetrievalResults(
        distances=[FloatTensor([0.0, 0.05, 0.07, 0.1, 0.12, 0.2, 0.2, 0.4]), FloatTensor([]), FloatTensor([0.21, 0.25])],
        retrieved_ids=[LongTensor([0, 1, 2, 3, 4, 5, 6, 7]), LongTensor([]), LongTensor([3, 5])],
        gt_ids=[LongTensor([0, 1]), LongTensor([1, 500]), LongTensor([10, 20])],
    )
    cases.append(
        thresholding_case(
            "constant_test",
            "tests/test_oml/test_postprocessor/test_thresholding.py::test_thresholding",
            "constant",
            0.2,
            rr,
            {"distances": [[0.0, 0.05, 0.07, 0.1, 0.12], [], []], "retrieved_ids": [[0, 1, 2, 3, 4], [], []]},
        )
    )
    rr = RetrievalResults(
        distances=[
            FloatTensor([1, 2, 3, 4, 10, 11, 12, 13]),
            FloatTensor([]),
            FloatTensor([4, 5, 6, 7]),
            FloatTensor([3, 4, 5, 12, 13, 14, 20, 21, 22]),
            FloatTensor([100]),
        ],
        retrieved_ids=[
            LongTensor([1, 2, 3, 4, 10, 11, 12, 13]),
            LongTensor([]),
            LongTensor([4, 5, 6, 7]),
            LongTensor([3, 4, 5, 12, 13, 14, 20, 21, 22]),
            LongTensor([100]),
        ],
        gt_ids=[LongTensor([0, 1]), LongTensor([1, 0]), LongTensor([10, 20]), LongTensor([30, 20]), LongTensor([1])],
    )
    cases.append(
        thresholding_case(
            "adaptive_test",
            "tests/test_oml/test_postprocessor/test_thresholding.py::test_adaptive_thresholding",
            "adaptive",
            3,
            rr,
            {
                "distances": [[1, 2, 3, 4], [], [4, 5, 6, 7], [3, 4, 5], [100]],
                "retrieved_ids": [[1, 2, 3, 4], [], [4, 5, 6, 7], [3, 4, 5], [100]],
            },
        )
    )
    # random: from a real RetrievalResults
    rng = np.random.default_rng(505)
    emb = rng.standard_normal((25, 4)).astype(np.float32)
    ds = EmbDataset(emb, rng.integers(0, 5, 25), [True] * 25, [True] * 25)
    rr = RetrievalResults.from_embeddings(torch.from_numpy(emb), ds, n_items=8)
    cases.append(thresholding_case("constant_random", "synthetic seed 505", "constant", 1.5, rr))
    cases.append(thresholding_case("adaptive_random", "synthetic seed 505", "adaptive", 1.3, rr))
    cases.append(thresholding_case("adaptive_random_small_nstd", "synthetic seed 505", "adaptive", 0.5, rr))
    # all empty -> returned unchanged (deepcopy)
    rr = RetrievalResults([FloatTensor([]), FloatTensor([])], [LongTensor([]), LongTensor([])], [LongTensor([1]), LongTensor([])])
    cases.append(thresholding_case("constant_all_empty", "synthetic", "constant", 0.5, rr))
    cases.append(thresholding_case("adaptive_all_empty", "synthetic", "adaptive", 2.0, rr))
    return cases


# ----------------------------------------------------------------------------------------------------------------
# EmbeddingMetrics end-to-end
# ----------------------------------------------------------------------------------------------------------------


def embedding_metrics_case(
    name: str,
    source: str,
    embeddings: np.ndarray,
    labels: Sequence[int],
    is_query: Sequence[bool],
    is_gallery: Sequence[bool],
    categories: Optional[Sequence[Any]] = None,
    sequence: Optional[Sequence[Any]] = None,
    cmc_top_k: tuple = (5,),
    precision_top_k: tuple = (5,),
    map_top_k: tuple = (5,),
    fmr_vals: tuple = tuple(),
    pcf_variance: tuple = (0.5,),
    expected_from_oml_test: Optional[dict] = None,
    require_no_ties: bool = False,
) -> dict:
    e = f32(embeddings)
    ds = EmbDataset(e, labels, is_query, is_gallery, categories, sequence)
    calc = EmbeddingMetrics(
        dataset=ds,
        cmc_top_k=cmc_top_k,
        precision_top_k=precision_top_k,
        map_top_k=map_top_k,
        fmr_vals=fmr_vals,
        pcf_variance=pcf_variance,
        verbose=False,
    )
    calc.setup(num_samples=len(ds))
    calc.update(embeddings=torch.from_numpy(e), indices=list(range(len(ds))))
    metrics = calc.compute_metrics()
    rr = calc.retrieval_results
    n_gallery = len(ds.get_gallery_ids())
    top_n_used = max([*cmc_top_k, *precision_top_k, *map_top_k, n_gallery if fmr_vals else 1])
    q_ids = ds.get_query_ids().tolist()
    g_ids = ds.get_gallery_ids().tolist()
    rrj = rr_to_json(rr, e[q_ids], e[g_ids])
    if require_no_ties:
        gap = rrj["min_consecutive_gap"]
        assert gap is None or gap > 1e-4, f"{name}: near-tie in retrieved distances ({gap})"
        assert not any(rrj["tie_groups"]), name

    case = {
        "name": name,
        "source": source,
        "function": "EmbeddingMetrics.compute_metrics",
        "embeddings": to_list(e),
        "labels": [int(v) for v in labels],
        "is_query": [bool(v) for v in is_query],
        "is_gallery": [bool(v) for v in is_gallery],
        "categories": None if categories is None else [num(c) if not isinstance(c, str) else c for c in categories],
        "sequence": None if sequence is None else [num(s) if not isinstance(s, str) else s for s in sequence],
        "cmc_top_k": list(cmc_top_k),
        "precision_top_k": list(precision_top_k),
        "map_top_k": list(map_top_k),
        "fmr_vals": list(fmr_vals),
        "pcf_variance": list(pcf_variance),
        "top_n_used": top_n_used,
        "query_item_ids": q_ids,
        "gallery_item_ids": g_ids,
        **rrj,
        "metrics": metrics_to_json(metrics),
        "metrics_unreduced": metrics_to_json(calc.metrics_unreduced),
    }
    if fmr_vals:
        # positives / negatives exactly as calc_fnmr_at_fmr_rr forms them (for debugging a port)
        pos, neg = [], []
        for d, r, g in zip(rr.distances, rr.retrieved_ids, rr.gt_ids):
            m = torch.isin(r, g)
            pos += d[m].tolist()
            neg += d[~m].tolist()
        thr = np.quantile(np.array(neg, dtype=np.float32), fmr_vals)
        case["fnmr_thresholds"] = to_list(thr)
        case["fnmr_n_pos"] = len(pos)
        case["fnmr_n_neg"] = len(neg)
        if require_no_ties and pos:
            margin = float(np.min(np.abs(np.array(pos, dtype=np.float64)[None, :] - thr[:, None])))
            case["fnmr_min_margin"] = margin
            assert margin > 1e-5, f"{name}: a positive distance is too close to an FMR threshold ({margin})"
    if expected_from_oml_test is not None:
        case["expected_from_oml_test"] = metrics_to_json(expected_from_oml_test)
    return case


def random_split(rng: np.random.Generator, n: int, p_q_only: float = 0.25, p_g_only: float = 0.25):
    u = rng.random(n)
    is_query = u >= p_g_only  # gallery-only if u < p_g_only
    is_gallery = ~((u >= p_g_only) & (u < p_g_only + p_q_only))  # query-only in [p_g_only, p_g_only + p_q_only)
    return is_query.tolist(), is_gallery.tolist()


def build_embedding_metrics_cases() -> List[dict]:
    cases = []
    oh8 = lambda i: one_hot(i, 8)  # noqa: E731
    qmask = [True, True, True, False, False, False]
    gmask = [False, False, False, True, True, True]
    src = "tests/test_oml/test_metrics/test_embedding_metrics.py"

    cases.append(
        embedding_metrics_case(
            "em_perfect_case",
            src + "::perfect_case",
            np.array([oh8(i) for i in [0, 1, 1, 0, 1, 1]]),
            [0, 1, 1, 0, 1, 1],
            qmask,
            gmask,
            categories=["cat", "dog", "dog", "cat", "dog", "dog"],
            cmc_top_k=(1,),
            precision_top_k=tuple(),
            map_top_k=tuple(),
            fmr_vals=tuple(),
            pcf_variance=tuple(),
            expected_from_oml_test={"OVERALL": {"cmc": {1: 1.0}}, "cat": {"cmc": {1: 1.0}}, "dog": {"cmc": {1: 1.0}}},
        )
    )
    cases.append(
        embedding_metrics_case(
            "em_imperfect_case",
            src + "::imperfect_case",
            np.array([oh8(i) for i in [0, 1, 3, 0, 1, 1]]),
            [0, 1, 1, 0, 1, 1],
            qmask,
            gmask,
            categories=[10, 20, 20, 10, 20, 20],
            cmc_top_k=(1,),
            precision_top_k=tuple(),
            map_top_k=tuple(),
            fmr_vals=tuple(),
            pcf_variance=tuple(),
            expected_from_oml_test={"OVERALL": {"cmc": {1: 0.6666666865348816}}, 10: {"cmc": {1: 1.0}}, 20: {"cmc": {1: 0.5}}},
        )
    )
    cases.append(
        embedding_metrics_case(
            "em_worst_case",
            src + "::worst_case",
            np.array([oh8(i) for i in [1, 0, 0, 0, 1, 1]]),
            [0, 1, 1, 0, 1, 1],
            qmask,
            gmask,
            categories=[10, 20, 20, 10, 20, 20],
            cmc_top_k=(1,),
            precision_top_k=tuple(),
            map_top_k=tuple(),
            fmr_vals=tuple(),
            pcf_variance=tuple(),
            expected_from_oml_test={"OVERALL": {"cmc": {1: 0.0}}, 10: {"cmc": {1: 0.0}}, 20: {"cmc": {1: 0.0}}},
        )
    )
    all_requested = embedding_metrics_case(
            "em_all_requested_metrics",
            src + "::test_all_requested_metrics_are_calculated (perfect_case)",
            np.array([oh8(i) for i in [0, 1, 1, 0, 1, 1]]),
            [0, 1, 1, 0, 1, 1],
            qmask,
            gmask,
            categories=["cat", "dog", "dog", "cat", "dog", "dog"],
            cmc_top_k=(1,),
            precision_top_k=(2,),
            map_top_k=(4, 500),
            fmr_vals=(0.3, 0.5),
            pcf_variance=(0.2, 0.1),
            expected_from_oml_test={
                "OVERALL": {"cmc": {1: 1}, "precision": {2: 1}, "map": {4: 1, 500: 1}, "fnmr@fmr": {0.3: 0, 0.5: 0}},
                "cat": {"cmc": {1: 1}, "precision": {2: 1}, "map": {4: 1, 500: 1}},
                "dog": {"cmc": {1: 1}, "precision": {2: 1}, "map": {4: 1, 500: 1}},
            },
        )
    all_requested["note"] = (
        "pcf per category is degenerate here (all embeddings of a category are identical): OML's explained variance "
        "ratios are 0/0 = NaN and torch.searchsorted then returns len(ratios), so pcf = (min(n, d) + 1) / d "
        "(cat: 2 items -> 3/8, dog: 4 items -> 5/8). Retrieved distances contain exact ties (see tie_groups)."
    )
    cases.append(all_requested)

    # tests/test_integrations/test_retrieval_validation.py: IdealClusterEncoder = label + 0.01 * N(0, 1), dim 1
    rng = np.random.default_rng(7)
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 2, 1])
    gallery_mask = np.array([0, 1, 0, 1, 0, 0, 1, 1, 0], dtype=bool)
    inputs = labels.copy()
    inputs[4] = 0
    inputs[5] = 0
    emb = (inputs + 0.01 * rng.standard_normal(len(inputs))).astype(np.float32).reshape(-1, 1)
    cases.append(
        embedding_metrics_case(
            "em_ideal_encoder_separate_qg",
            "tests/test_integrations/test_retrieval_validation.py::get_separate_query_gallery (noise seed 7)",
            emb,
            labels.tolist(),
            (~gallery_mask).tolist(),
            gallery_mask.tolist(),
            cmc_top_k=(1,),
            expected_from_oml_test={"OVERALL": {"cmc": {1: 3 / 5}}},
        )
    )
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    inputs = labels.copy()
    inputs[0] = 3
    emb = (inputs + 0.01 * rng.standard_normal(len(inputs))).astype(np.float32).reshape(-1, 1)
    cases.append(
        embedding_metrics_case(
            "em_ideal_encoder_shared_qg",
            "tests/test_integrations/test_retrieval_validation.py::get_shared_query_gallery (noise seed 7)",
            emb,
            labels.tolist(),
            [True] * 8,
            [True] * 8,
            cmc_top_k=(1,),
            expected_from_oml_test={"OVERALL": {"cmc": {1: 7 / 8}}},
        )
    )

    # ---------------- randomised cases (no near-ties) ----------------
    for builder in RANDOM_CASE_BUILDERS:
        cases.append(first_tie_free(builder))
    return cases


class NearTie(Exception):
    pass


def first_tie_free(builder: Any, max_tries: int = 50) -> dict:
    """Call ``builder(seed)`` for seeds base, base + 1000, ... until OML's retrieved distances have no near-ties
    (consecutive gap > 1e-4) and no positive distance sits within 1e-5 of an FMR threshold."""
    base = builder.base_seed
    for t in range(max_tries):
        seed = base + 1000 * t
        try:
            case = builder(seed)
        except NearTie:
            continue
        case["seed"] = seed
        return case
    raise RuntimeError(f"no tie-free seed found for {builder.__name__}")


def seeded(base_seed: int) -> Any:
    def deco(fn: Any) -> Any:
        fn.base_seed = base_seed
        return fn

    return deco


ALL_K = dict(cmc_top_k=(1, 3, 5, 10), precision_top_k=(1, 3, 5, 10), map_top_k=(1, 3, 5, 10))


def tie_free_case(**kwargs: Any) -> dict:
    try:
        return embedding_metrics_case(require_no_ties=True, **kwargs)
    except AssertionError as e:
        raise NearTie(str(e))


@seeded(1)
def random_basic(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = 40
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    labels = rng.integers(0, 6, n)
    is_q, is_g = random_split(rng, n)
    return tie_free_case(
        name="em_random_basic",
        source=f"synthetic numpy seed {seed}: 40 items, dim 8, 6 labels, query-only/gallery-only/both",
        embeddings=emb,
        labels=labels.tolist(),
        is_query=is_q,
        is_gallery=is_g,
        fmr_vals=(0.1, 0.5),
        pcf_variance=(0.5, 0.9),
        **ALL_K,
    )


@seeded(2)
def random_categories(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = 40
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    labels = rng.integers(0, 6, n)
    label2cat = {0: "animals", 1: "animals", 2: "cars", 3: "cars", 4: "cars", 5: "plants"}
    is_q, is_g = random_split(rng, n)
    return tie_free_case(
        name="em_random_categories",
        source=f"synthetic numpy seed {seed}: 40 items, dim 8, 6 labels, 3 string categories",
        embeddings=emb,
        labels=labels.tolist(),
        is_query=is_q,
        is_gallery=is_g,
        categories=[label2cat[int(v)] for v in labels],
        fmr_vals=(0.2,),
        pcf_variance=(0.5, 0.9),
        **ALL_K,
    )


@seeded(3)
def random_sequences(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = 40
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    labels = rng.integers(0, 6, n)
    seq = rng.integers(0, 10, n)
    is_q, is_g = random_split(rng, n, 0.2, 0.2)
    return tie_free_case(
        name="em_random_sequences",
        source=f"synthetic numpy seed {seed}: 40 items, dim 8, 6 labels, integer sequence ids (10 sequences)",
        embeddings=emb,
        labels=labels.tolist(),
        is_query=is_q,
        is_gallery=is_g,
        sequence=seq.tolist(),
        pcf_variance=(0.5,),
        **ALL_K,
    )


@seeded(4)
def random_query_without_gt(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = 40
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    labels = rng.integers(0, 6, n)
    is_q, is_g = random_split(rng, n)
    labels[0] = 99  # unique label, query and gallery: itself is excluded, so no gt
    is_q[0], is_g[0] = True, True
    labels[1] = 98  # unique label, query-only
    is_q[1], is_g[1] = True, False
    return tie_free_case(
        name="em_random_query_without_gt",
        source=(
            f"synthetic numpy seed {seed}: 40 items, dim 8; items 0 (query+gallery) and 1 (query-only) have unique "
            "labels, so they have no gt -> precision NaN (null) for them and for every mean that includes them"
        ),
        embeddings=emb,
        labels=labels.tolist(),
        is_query=is_q,
        is_gallery=is_g,
        categories=["a" if i % 2 == 0 else "b" for i in range(n)],
        fmr_vals=(0.1,),
        pcf_variance=(0.5,),
        **ALL_K,
    )


@seeded(5)
def random_categories_sequences(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = 60
    emb = rng.standard_normal((n, 16)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    seq = [f"seq_{v}" for v in rng.integers(0, 15, n)]
    is_q, is_g = random_split(rng, n, 0.3, 0.2)
    return tie_free_case(
        name="em_random_categories_sequences",
        source=f"synthetic numpy seed {seed}: 60 items, dim 16, 10 labels, int categories, string sequences",
        embeddings=emb,
        labels=labels.tolist(),
        is_query=is_q,
        is_gallery=is_g,
        categories=[int(v) // 4 for v in labels],
        sequence=seq,
        cmc_top_k=(1, 2, 5),
        precision_top_k=(3, 5, 20),
        map_top_k=(5, 20),
        fmr_vals=(0.05, 0.3, 0.5),
        pcf_variance=(0.3, 0.6, 0.9),
    )


@seeded(6)
def random_all_qg_defaults(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = 30
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    labels = np.repeat(np.arange(6), 5)
    return tie_free_case(
        name="em_random_all_qg_defaults",
        source=f"synthetic numpy seed {seed}: 30 items (6 labels x 5), all query+gallery, EmbeddingMetrics defaults",
        embeddings=emb,
        labels=labels.tolist(),
        is_query=[True] * n,
        is_gallery=[True] * n,
    )


RANDOM_CASE_BUILDERS = [
    random_basic,
    random_categories,
    random_sequences,
    random_query_without_gt,
    random_categories_sequences,
    random_all_qg_defaults,
]



def build_rr_metrics_cases() -> List[dict]:
    """RetrievalResults.from_embeddings with a small n_items, metrics with k > n_items."""
    cases = []
    rng = np.random.default_rng(8)
    n = 40
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    labels = rng.integers(0, 5, n)
    seq = rng.integers(0, 12, n)
    is_q, is_g = random_split(rng, n)
    ds = EmbDataset(emb, labels, is_q, is_g, sequence=seq.tolist())
    top_n = 3
    rr = RetrievalResults.from_embeddings(torch.from_numpy(emb), ds, n_items=top_n)
    ks = (1, 2, 3, 5, 10)
    per_query = calc_retrieval_metrics_rr(rr, cmc_top_k=ks, precision_top_k=ks, map_top_k=ks, reduce=False, verbose=False)
    reduced = calc_retrieval_metrics_rr(rr, cmc_top_k=ks, precision_top_k=ks, map_top_k=ks, reduce=True, verbose=False)
    q_ids = ds.get_query_ids().tolist()
    g_ids = ds.get_gallery_ids().tolist()
    rrj = rr_to_json(rr, emb[q_ids], emb[g_ids])
    assert rrj["min_consecutive_gap"] is None or rrj["min_consecutive_gap"] > 1e-4
    cases.append(
        {
            "name": "rr_small_top_n_with_sequences",
            "source": "synthetic seed 8: from_embeddings(n_items=3) then calc_retrieval_metrics_rr with k up to 10",
            "function": "RetrievalResults.from_embeddings + calc_retrieval_metrics_rr",
            "embeddings": to_list(emb),
            "labels": labels.tolist(),
            "is_query": is_q,
            "is_gallery": is_g,
            "sequence": seq.tolist(),
            "top_n": top_n,
            "cmc_top_k": list(ks),
            "precision_top_k": list(ks),
            "map_top_k": list(ks),
            "query_item_ids": q_ids,
            "gallery_item_ids": g_ids,
            **rrj,
            "per_query": metrics_to_json(dict(per_query)),
            "reduced": metrics_to_json(dict(reduced)),
        }
    )
    return cases


def main() -> None:
    data = {
        "meta": {
            "generator": "tests/golden/make_metrics_fixtures.py",
            "oml_version": oml.__version__,
            "torch_version": torch.__version__,
            "numpy_version": np.__version__,
            "python_version": sys.version.split()[0],
            "tie_eps": TIE_EPS,
        },
        "functional_cases": build_functional_cases(),
        "knn_cases": build_knn_cases() + build_qg_cases(),
        "fnmr_cases": build_fnmr_cases(),
        "pcf_cases": build_pcf_cases(),
        "thresholding_cases": build_thresholding_cases(),
        "embedding_metrics_cases": build_embedding_metrics_cases(),
        "rr_metrics_cases": build_rr_metrics_cases(),
    }
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    OUT_PATH.write_text(text + "\n")
    print(f"wrote {OUT_PATH} ({len(text) / 1024:.1f} KiB)")
    for k, v in data.items():
        if isinstance(v, list):
            print(f"  {k}: {len(v)} cases")


if __name__ == "__main__":
    main()
