#!/usr/bin/env python3
"""Golden fixtures for OML 4.0's pairwise re-ranking, made with Python OML itself, for the Rust port.

Run from anywhere (needs the venv with open-metric-learning 4.0, torch (CPU is fine), torchvision, numpy,
safetensors, pandas):

    /work/venv/bin/python tests/golden/make_reranker_fixtures.py

It writes ``tests/golden/reranker_oml.json`` (about 0.2 MB) in a few seconds on one torch thread. Every
input is seeded (``torch.Generator().manual_seed(seed)``, ``np.random.seed`` before the numpy-random miner);
a rerun gives a byte-identical file for a given torch build (versions are recorded in the JSON).

What is in the JSON (top level)
-------------------------------
* ``rerank_cases``          -> ``oml.retrieval.postprocessors.pairwise.PairwiseReranker`` with OML's
  ``LinearTrivialDistanceSiamese`` as the pairwise model, on an embeddings query/gallery dataset
* ``concat_siamese_inputs`` -> ``x1`` and ``x2`` ([3, 3, 32, 32], shared by every ConcatSiamese case, to keep
  the file small)
* ``concat_siamese_cases``  -> ``oml.models.meta.siamese.ConcatSiamese`` around the small random DINO ViT and
  BasicBlock ResNet of ``tests/data/extractors/`` (plus one train-mode record, ``"mode": "train"``)
* ``pairs_miner_cases``     -> ``oml.miners.pairs.PairsMiner(hard_mining=True/False).sample(features, labels)``

JSON conventions
----------------
* Float tensors: ``<name>_f32_b64`` = base64 of the little-endian float32 C-order bytes, ``<name>_shape``
  beside it. Float lists / scalars (distances, scores, output_bias) are float32 values written as JSON numbers
  (parse as f64 and cast to f32 to get the exact value). Integer ids are 0-based plain lists.
* ``python``: the exact calls that produced a case.

rerank_cases
------------
Per case: ``name``, ``embeddings`` (``embeddings_f32_b64`` / ``embeddings_shape`` = [N, D]), ``labels``,
``is_query``, ``is_gallery`` (per row), ``query_rows`` / ``gallery_rows`` (the dataset rows of the queries and
of the gallery items, in order: OML's ``get_query_ids()`` / ``get_gallery_ids()``), ``proj`` (``proj_f32_b64``,
``proj_shape`` = [D, D], torch ``Linear.weight`` layout out x in, so the model computes
``||x1 @ proj.T - x2 @ proj.T||_2 + output_bias``), ``output_bias``, ``top_n``, ``n_items`` (K of the first
stage), ``batch_size`` (of the reranker's DataLoader), ``eps`` (what OML passes to
``cat_two_sorted_tensors_and_keep_it_sorted``: ``10**3 * torch.finfo(float32).eps``), and:

* ``before``: ``{"retrieved_ids": [[...] per query], "distances": [[...]]}`` =
  ``RetrievalResults.from_embeddings(embeddings, dataset, n_items=K)``. **Retrieved ids are gallery-local**:
  positions among the gallery items (index into ``gallery_rows``), not dataset rows. Lists may be ragged: a
  query that is also a gallery item never retrieves itself, so it may get one item fewer.
* ``pair_scores``: per query, the pairwise model's outputs (``model.predict(x1=query_emb, x2=gallery_emb)``,
  via OML's ``pairwise_inference``) on that query's first ``min(top_n, len(retrieved))`` retrieved items, in the
  order OML forms the pairs (= the order of ``before.retrieved_ids``).
* ``pairs_rows``: the same pairs as dataset rows ``[query_row, gallery_row]``.
* ``after``: ``{"retrieved_ids", "distances"}`` from
  ``PairwiseReranker(top_n, pairwise_model, num_workers=0, batch_size).process(rr, dataset)``.
* ``rescaled``: per query, whether OML rescaled the new scores (derived: last sorted score > first remaining
  distance), and ``scale`` (``first remaining distance / last sorted score``, float32, or null).
* ``gt_ids``: per query, gallery-local ids of the same label (the query itself excluded).
* ``ties`` (tie cases only): per query a list of records, one per tied pair found among that query's first
  ``top_n``: ``tied_ids``, ``score`` (equal, bitwise), ``first_stage_distances``, ``first_stage_order`` and
  ``reranked_order`` (the two ids as they appear in ``before`` / ``after``), ``kept_incoming_order``.

What OML does (observed with this torch build, checked by assertions in this script):

1. For query q with first-stage ids ``r`` and distances ``d``: ``s = model.predict(q, r[:top_n])`` (eval mode,
   over a DataLoader of the pairs); ``s_sorted, perm = s.sort()``; new ids = ``r[:top_n][perm] ++ r[top_n:]``;
   new distances = ``cat_two_sorted_tensors_and_keep_it_sorted(s_sorted, d[top_n:], eps)``.
2. Rescaling: if ``s_sorted[-1] > d[top_n]`` (strict), the whole head becomes
   ``s_sorted * (d[top_n] / s_sorted[-1]) - eps`` (float32 ops: divide, multiply, then subtract eps), so the
   last re-ranked item ends just below the first untouched one; otherwise the scores are kept as they are (so
   they may be negative, or far below the remaining distances). The tail ``d[top_n:]`` is never changed.
   If nothing remains after top_n (``top_n >= len(r)``, e.g. ``n_items <= top_n``), the sorted raw scores are
   the new distances, never rescaled. A first remaining distance of 0 gives scale 0: the whole head becomes
   ``-eps`` (case ``zero_next_distance``).
3. ``top_n > len(r)`` simply re-ranks all retrieved items (slices clip); the number of items never changes.
4. Ties (tie cases: ``tie_identical_gallery``, ``tie_null_space``, ``zero_next_distance``):
   * the re-ranker's ``Tensor.sort()`` (default ``stable=False``) kept equal scores in their incoming
     (first-stage) order in every case here, also where that puts the higher gallery index first
     (``tie_null_space``: 5 before 0; ``tie_identical_gallery``: 7 before 6, 4 before 1), i.e. it behaved as a
     stable sort. A Rust port should sort the scores stably (ascending).
   * the first stage's ``torch.topk(largest=False, sorted=True)`` does NOT order exact ties by gallery index:
     bitwise-equal distances came out as 7 before 6, 1 before 4 in one query and 4 before 1 in another, and
     three zero distances as 1, 3, 2. That order is an implementation detail of torch's topk; a Rust test
     should compare first-stage ties as sets (the ``ties`` records name them) and feed the re-ranker the
     first-stage order stored in ``before``.

concat_siamese_cases
--------------------
``ConcatSiamese(extractor, mlp_hidden_dims, use_tta)`` concatenates ``x1`` and ``x2`` along dim 2 (height):
``concat_shape`` = [3, 3, 64, 32]; the extractor sees 64x32 images (x1 on top). Both extractors accept that:
the DINO ViT interpolates its 4x4 position grid to 4 (rows) x 2 (columns) (bicubic, scale factors
(4.1 / 4, 2.1 / 4), as for any non-square input; ``vit_accepts_64x32`` is true), the ResNet pools to 1x1.
Per eval case: ``name``, ``mode`` = "eval", ``extractor`` (``vit_dino_small`` or ``resnet_basic_small``),
``extractor_file`` / ``extractor_sha256`` (in ``tests/data/extractors/``, loaded as in ``python``), ``feat_dim``
(32 / 64, the head's input), ``mlp_hidden_dims``, ``python``, ``head_keys`` (every ``head.*`` key of
``model.state_dict()``, in order), ``head`` = ``{"<key>_f32_b64", "<key>_shape"}`` for each of them (e.g.
``head["head.0.weight_f32_b64"]``, torch Linear layout out x in), ``head_str`` = ``str(model.head)``,
``state_dict_keys_not_head`` (count of the extractor's keys), ``concat_shape``, ``inputs`` (=
"concat_siamese_inputs": x1 and x2 live there), and the outputs: ``logits`` = ``model(x1=x1, x2=x2)`` ([3],
before the sigmoid; also as ``logits_list``), ``logits_swapped`` = ``model(x1=x2, x2=x1)``, ``predict`` =
``model.predict(x1, x2)`` with ``use_tta=False`` (= sigmoid(logits)), ``predict_tta`` with ``use_tta=True``
(= (sigmoid(logits) + sigmoid(logits_swapped)) / 2), ``f32_vs_f64_max_abs_diff`` (|logits - float64 rerun|, a
tolerance hint). Were an extractor to fail, ``error`` would hold ``"<Type>: <message>"`` instead of outputs.
Head layout (torchvision ``MLP`` with ``activation_layer=Sigmoid, dropout=0.5``, then OML replaces the last
Linear by one without bias and the last Dropout by Identity): [16] -> 0 Linear(F, 16), 1 Sigmoid, 2 Dropout,
3 Linear(16, 1, bias=False), 4 Identity; [16, 8] -> 0 Linear(F, 16), 1 Sigmoid, 2 Dropout, 3 Linear(16, 8),
4 Sigmoid, 5 Dropout, 6 Linear(8, 1, bias=False), 7 Identity. The ``"mode": "train"`` record
(``train_mode_modules``) holds only ``head_str``, ``head_modules``, ``dropout_indices``, ``dropout_p``,
``head_training``, ``train_backbone`` and a ``note`` (outputs are random there).

pairs_miner_cases
-----------------
Per case: ``features`` ([8, 4]), ``labels``, ``hard_mining``, ``numpy_seed`` (``np.random.seed`` right before
``sample``; only AllTripletsMiner draws from it), ``oml`` = ``{"ids1", "ids2", "is_negative"}`` exactly as OML
returns them, and ``canonical`` = the same pairs with positives first, then negatives, each group sorted
lexicographically by (ids1, ids2). OML turns triplets into pairs through a Python ``set`` of sorted tuples
(``(min, max)``), so duplicates are removed and ``ids1 < ids2`` always, but the order inside each group is
Python's set iteration order (deterministic for small int tuples, yet arbitrary); the Rust port uses
``canonical``. Positives always come before negatives. ``oml_order_is_canonical`` says whether the two agree.
Hard mining: per anchor the farthest same-label item (argmax over the distance row with other labels at
-inf; the anchor itself, at 0, is a candidate) and the nearest other-label item (argmin), so at most B positive
and B negative pairs before de-duplication. All mining: every same-label pair and every other-label pair,
once each (ids1 < ids2).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import platform
import re
import sys
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import safetensors
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn
from torchvision.models import resnet as tv_resnet

import oml
from oml.const import (
    INDEX_KEY,
    INPUT_TENSORS_KEY,
    IS_GALLERY_COLUMN,
    IS_QUERY_COLUMN,
    LABELS_COLUMN,
)
from oml.datasets.dataframe import DFQueryGalleryLabeledDataset
from oml.inference.abstract import pairwise_inference
from oml.interfaces.datasets import IBaseDataset
from oml.miners.pairs import PairsMiner
from oml.models.meta.siamese import ConcatSiamese, LinearTrivialDistanceSiamese
from oml.models.resnet.extractor import ResnetExtractor
from oml.models.vit_dino.external import vision_transformer as dino_v1
from oml.models.vit_dino.extractor import ViTExtractor
from oml.retrieval.postprocessors.pairwise import PairwiseReranker
from oml.retrieval.retrieval_results import RetrievalResults

torch.set_num_threads(1)

SEED = 20240801
REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_PATH = REPO_ROOT / "tests" / "golden" / "reranker_oml.json"
SMALL_DIR = REPO_ROOT / "tests" / "data" / "extractors"
EPS = 10**3 * torch.finfo(torch.float32).eps  # what PairwiseReranker passes to cat_two_sorted_...


# ----------------------------------------------------------------------------- helpers


def randn(shape: Sequence[int], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def f32_b64(t: torch.Tensor) -> str:
    arr = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
    return base64.b64encode(arr.tobytes()).decode("ascii")


def put(d: Dict[str, Any], name: str, t: torch.Tensor) -> None:
    d[f"{name}_f32_b64"] = f32_b64(t)
    d[f"{name}_shape"] = list(t.shape)


def f32(x: Any) -> float:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().item()
    return float(np.float32(x))


def f32_list(t: torch.Tensor) -> List[float]:
    return [f32(v) for v in t.detach().reshape(-1).float()]


def int_list(t: Any) -> List[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def versions() -> Dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.machine(),
        "oml": oml.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "safetensors": safetensors.__version__,
        "torch_num_threads": str(torch.get_num_threads()),
    }


# ----------------------------------------------------------------------------- part 1: PairwiseReranker


class EmbeddingsDataset(IBaseDataset):
    """OML 4.0 ships no embeddings dataset, so this minimal IBaseDataset serves rows of a tensor:
    ``{"input_tensors": embeddings[i], "idx": i}``. OML's DFQueryGalleryLabeledDataset wraps it."""

    def __init__(self, embeddings: torch.Tensor):
        self.embeddings = embeddings
        self.input_tensors_key = INPUT_TENSORS_KEY
        self.index_key = INDEX_KEY
        self.extra_data: Dict[str, Any] = {}

    def __getitem__(self, item: int) -> Dict[str, Any]:
        return {self.input_tensors_key: self.embeddings[item], self.index_key: item}

    def __len__(self) -> int:
        return len(self.embeddings)


def make_dataset(embeddings: torch.Tensor, labels, is_query, is_gallery) -> DFQueryGalleryLabeledDataset:
    df = pd.DataFrame({LABELS_COLUMN: labels, IS_QUERY_COLUMN: is_query, IS_GALLERY_COLUMN: is_gallery})
    return DFQueryGalleryLabeledDataset(dataset=EmbeddingsDataset(embeddings), df=df)


def make_model(proj: torch.Tensor, output_bias: float) -> LinearTrivialDistanceSiamese:
    model = LinearTrivialDistanceSiamese(feat_dim=proj.shape[0], identity_init=False, output_bias=output_bias)
    with torch.no_grad():
        model.proj.weight.copy_(proj)
    model.eval()
    return model


def rerank_case(
    name: str,
    about: str,
    embeddings: torch.Tensor,
    labels: List[int],
    is_query: List[bool],
    is_gallery: List[bool],
    proj: torch.Tensor,
    output_bias: float,
    top_n: int,
    n_items: int,
    batch_size: int,
    tie_pairs: Optional[List[Tuple[int, int]]] = None,
) -> Dict[str, Any]:
    dataset = make_dataset(embeddings, labels, is_query, is_gallery)
    model = make_model(proj, output_bias)

    rr = RetrievalResults.from_embeddings(embeddings, dataset, n_items=n_items)
    query_rows = dataset.get_query_ids().view(-1)
    gallery_rows = dataset.get_gallery_ids().view(-1)

    # the pairs exactly as PairwiseReranker._process_raw forms them
    pairs, bounds = [], [0]
    for iq, ids in enumerate(rr.retrieved_ids):
        g_rows = gallery_rows[ids][:top_n].tolist()
        pairs.extend(zip([int(query_rows[iq])] * len(g_rows), g_rows))
        bounds.append(bounds[-1] + len(g_rows))
    scores = pairwise_inference(model, dataset, pairs, num_workers=0, batch_size=batch_size, verbose=False)

    before = (copy.deepcopy(rr.retrieved_ids), copy.deepcopy(rr.distances))
    reranker = PairwiseReranker(top_n=top_n, pairwise_model=model, num_workers=0, batch_size=batch_size)
    rr_after = reranker.process(rr, dataset)

    pair_scores, rescaled, scales = [], [], []
    for iq, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        s = scores[lo:hi]
        pair_scores.append(f32_list(s))
        d = before[1][iq]
        head = s.sort().values
        if len(d) > top_n and head[-1] > d[top_n]:
            rescaled.append(True)
            scales.append(f32(d[top_n] / head[-1]))
            expected = head * (d[top_n] / head[-1]) - EPS
        else:
            rescaled.append(False)
            scales.append(None)
            expected = head
        # the semantics stated in the docstring, checked against what OML returned
        assert torch.equal(rr_after.distances[iq][: len(s)], expected.float()), (name, iq)
        assert torch.equal(rr_after.distances[iq][len(s):], d[top_n:]), (name, iq)
        assert torch.equal(rr_after.retrieved_ids[iq][len(s):], before[0][iq][top_n:]), (name, iq)
        assert len(rr_after.retrieved_ids[iq]) == len(before[0][iq])
        # the rr object passed in was left as it was
        assert torch.equal(rr.distances[iq], d)

    ties = None
    if tie_pairs:
        ties = []
        for iq in range(len(query_rows)):
            recs = []
            first = int_list(before[0][iq][:top_n])
            first_d = f32_list(before[1][iq][:top_n])
            after_ids = int_list(rr_after.retrieved_ids[iq][:top_n])
            for a, b in tie_pairs:
                if a in first and b in first:
                    sa = pair_scores[iq][first.index(a)]
                    sb = pair_scores[iq][first.index(b)]
                    assert sa == sb, (name, iq, sa, sb)
                    rec = {
                        "tied_ids": [a, b],
                        "score": sa,
                        "first_stage_distances": [first_d[first.index(a)], first_d[first.index(b)]],
                        "first_stage_order": [x for x in first if x in (a, b)],
                        "reranked_order": [x for x in after_ids if x in (a, b)],
                    }
                    rec["kept_incoming_order"] = rec["first_stage_order"] == rec["reranked_order"]
                    assert rec["kept_incoming_order"], (name, iq, rec)
                    recs.append(rec)
            ties.append(recs)

    case: Dict[str, Any] = {"name": name, "about": about}
    put(case, "embeddings", embeddings)
    case.update(
        {
            "labels": int_list(labels),
            "is_query": [bool(v) for v in is_query],
            "is_gallery": [bool(v) for v in is_gallery],
            "query_rows": int_list(query_rows),
            "gallery_rows": int_list(gallery_rows),
        }
    )
    put(case, "proj", proj)
    case.update(
        {
            "output_bias": f32(output_bias),
            "top_n": top_n,
            "n_items": n_items,
            "batch_size": batch_size,
            "eps": f32(EPS),
            "python": [
                "dataset = DFQueryGalleryLabeledDataset(dataset=EmbeddingsDataset(embeddings), "
                "df=pd.DataFrame({'label': labels, 'is_query': is_query, 'is_gallery': is_gallery}))",
                f"model = LinearTrivialDistanceSiamese(feat_dim={proj.shape[0]}, identity_init=False, "
                f"output_bias={output_bias!r}); model.proj.weight = proj; model.eval()",
                f"rr = RetrievalResults.from_embeddings(embeddings, dataset, n_items={n_items})",
                f"rr_after = PairwiseReranker(top_n={top_n}, pairwise_model=model, num_workers=0, "
                f"batch_size={batch_size}).process(rr, dataset)",
            ],
            "before": {
                "retrieved_ids": [int_list(r) for r in before[0]],
                "distances": [f32_list(d) for d in before[1]],
            },
            "pair_scores": pair_scores,
            "pairs_rows": [[int(a), int(b)] for a, b in pairs],
            "after": {
                "retrieved_ids": [int_list(r) for r in rr_after.retrieved_ids],
                "distances": [f32_list(d) for d in rr_after.distances],
            },
            "rescaled": rescaled,
            "scale": scales,
            "gt_ids": [int_list(g) for g in rr.gt_ids],
        }
    )
    if ties is not None:
        case["ties"] = ties
    return case


def rerank_cases() -> List[Dict[str, Any]]:
    cases = []

    # a plain split: 4 query-only rows, 10 gallery-only rows, 4 labels
    n, dim = 14, 5
    emb = randn((n, dim), SEED + 1)
    labels = [0, 1, 2, 3] + [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    is_q = [True] * 4 + [False] * 10
    is_g = [False] * 4 + [True] * 10
    proj = randn((dim, dim), SEED + 2)

    c = rerank_case("rescale_positive_bias",
                    "scores (|proj| ~ randn, bias +3) exceed the remaining distances: OML rescales the head",
                    emb, labels, is_q, is_g, proj, 3.0, top_n=3, n_items=6, batch_size=4)
    assert all(c["rescaled"]), c["rescaled"]
    cases.append(c)

    c = rerank_case("no_rescale_negative_bias",
                    "bias -50: every score is below every distance, so the raw (negative) scores are kept",
                    emb, labels, is_q, is_g, proj, -50.0, top_n=4, n_items=8, batch_size=5)
    assert not any(c["rescaled"])
    cases.append(c)

    c = rerank_case("mixed_rescale",
                    "proj scaled by 0.45, bias 0: some queries need rescaling, others not",
                    emb, labels, is_q, is_g, 0.45 * proj, 0.0, top_n=4, n_items=10, batch_size=3)
    assert any(c["rescaled"]) and not all(c["rescaled"]), c["rescaled"]
    cases.append(c)

    c = rerank_case("top_n_exceeds_retrieved",
                    "n_items=3 < top_n=5: all retrieved items are re-ranked, nothing remains, no rescaling",
                    emb, labels, is_q, is_g, proj, 3.0, top_n=5, n_items=3, batch_size=2)
    assert all(len(r) == 3 for r in c["after"]["retrieved_ids"])
    cases.append(c)

    c = rerank_case("top_n_equals_n_items",
                    "top_n = n_items = 4: the whole list is re-ranked, no rescaling even with bias +3",
                    emb, labels, is_q, is_g, proj, 3.0, top_n=4, n_items=4, batch_size=16)
    cases.append(c)

    # queries that are also gallery items (plus two query-only rows); n_items above the gallery size
    n, dim = 16, 4
    emb = randn((n, dim), SEED + 3)
    labels = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0, 1, 2, 3]
    is_q = [i in (0, 3, 6, 9, 12, 13) for i in range(n)]
    is_g = [i < 12 for i in range(n)]
    proj = randn((dim, dim), SEED + 4)
    c = rerank_case("query_in_gallery",
                    "rows 0, 3, 6, 9 are query and gallery (never retrieve themselves: 11 items, ragged), "
                    "rows 12, 13 query-only (12 items); n_items=20 is clipped to the gallery size",
                    emb, labels, is_q, is_g, proj, 0.5, top_n=5, n_items=20, batch_size=7)
    cases.append(c)

    c = rerank_case("query_in_gallery_rescale",
                    "the same dataset, top_n=3, n_items=6, bias +2 (rescaling)",
                    emb, labels, is_q, is_g, proj, 2.0, top_n=3, n_items=6, batch_size=4)
    assert any(c["rescaled"])
    cases.append(c)

    # ties (a): two identical gallery embeddings, tied in both stages
    n, dim = 12, 5
    emb = randn((n, dim), SEED + 5)
    emb[7] = emb[4]  # gallery rows 4 and 7 -> gallery-local ids 1 and 4
    emb[10] = emb[9]  # gallery-local 6 and 7
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]
    is_q = [i < 3 for i in range(n)]
    is_g = [i >= 3 for i in range(n)]
    proj = randn((dim, dim), SEED + 6)
    c = rerank_case("tie_identical_gallery",
                    "gallery rows 4 and 7 (local 1, 4) and rows 9 and 10 (local 6, 7) are identical: equal "
                    "first-stage distances and equal pair scores",
                    emb, labels, is_q, is_g, proj, 0.0, top_n=9, n_items=9, batch_size=4,
                    tie_pairs=[(1, 4), (6, 7)])
    assert any(c["ties"])
    # first stage: the duplicates have bitwise equal distances
    assert all(r["first_stage_distances"][0] == r["first_stage_distances"][1] for t in c["ties"] for r in t)
    cases.append(c)

    # ties (b): proj's last column is zero, so two items that differ only in the last coordinate tie in the
    # pairwise model but not in the first stage; the lower gallery index is the farther one
    n, dim = 12, 5
    emb = randn((n, dim), SEED + 7)
    base = emb[0].clone()
    emb[3] = base + torch.tensor([0.3, -0.2, 0.1, 0.0, 0.9])  # gallery-local 0, farther
    emb[8] = base + torch.tensor([0.3, -0.2, 0.1, 0.0, 0.1])  # gallery-local 5, nearer
    emb[1] = base + torch.tensor([0.05, 0.05, -0.05, 0.02, 0.0])  # a second query near both
    labels = [0, 0, 1, 0, 1, 2, 1, 2, 0, 1, 2, 2]
    is_q = [i < 3 for i in range(n)]
    is_g = [i >= 3 for i in range(n)]
    proj = randn((dim, dim), SEED + 8)
    proj[:, -1] = 0.0
    c = rerank_case("tie_null_space",
                    "proj[:, 4] = 0; gallery-local 0 and 5 differ only in coordinate 4: first stage puts 5 "
                    "first (nearer), the pair scores tie exactly, and the re-ranked order keeps 5 before 0",
                    emb, labels, is_q, is_g, proj, 0.0, top_n=6, n_items=8, batch_size=3,
                    tie_pairs=[(5, 0)])
    tied = [r for t in c["ties"] for r in t]
    assert tied and all(r["first_stage_order"] == [5, 0] for r in tied), c["ties"]
    cases.append(c)

    # the first remaining distance is exactly 0: scale 0, the head becomes -eps
    n, dim = 12, 4
    emb = randn((n, dim), SEED + 9)
    for row in (3, 4, 5):
        emb[row] = emb[0]  # three exact copies of query 0 in the gallery
    labels = [0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    is_q = [i < 2 for i in range(n)]
    is_g = [i >= 2 for i in range(n)]
    proj = randn((dim, dim), SEED + 10)
    c = rerank_case("zero_next_distance",
                    "query row 0 has three exact copies in the gallery; top_n=2 leaves d[top_n] = 0, bias 1: "
                    "scale 0, so the re-ranked head is all -eps",
                    emb, labels, is_q, is_g, proj, 1.0, top_n=2, n_items=5, batch_size=2,
                    tie_pairs=[(1, 3)])
    assert c["rescaled"][0] and c["scale"][0] == 0.0
    cases.append(c)

    return cases


# ----------------------------------------------------------------------------- part 2: ConcatSiamese


class SmallResNet(tv_resnet.ResNet):
    """torchvision's ResNet with the stage widths w, 2w, 4w, 8w instead of 64..512. ``ResNet.__init__``
    hard-codes the widths, so its steps are redone here; blocks, ``_make_layer`` and ``forward`` are
    torchvision's, and so are the state-dict keys (this is how ``resnet_basic_small.safetensors`` was laid out,
    see tests/data/extractors/README.md)."""

    def __init__(self, block, layers: List[int], width: int, num_classes: int) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)


def load_vit_dino_small() -> Tuple[ViTExtractor, List[str]]:
    path = SMALL_DIR / "vit_dino_small.safetensors"
    vit = dino_v1.VisionTransformer(img_size=[64], patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4,
                                    qkv_bias=True, num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    vit.load_state_dict(load_file(str(path)), strict=True)
    extractor = ViTExtractor(weights=None, arch="vits16", normalise_features=False)
    extractor.model = vit
    extractor.eval()
    python = [
        "vit = oml.models.vit_dino.external.vision_transformer.VisionTransformer(img_size=[64], patch_size=16, "
        "embed_dim=32, depth=2, num_heads=2, mlp_ratio=4, qkv_bias=True, num_classes=0, "
        "norm_layer=partial(nn.LayerNorm, eps=1e-6))",
        "vit.load_state_dict(safetensors.torch.load_file('tests/data/extractors/vit_dino_small.safetensors'), "
        "strict=True)",
        "extractor = ViTExtractor(weights=None, arch='vits16', normalise_features=False); extractor.model = vit",
    ]
    return extractor, python


def load_resnet_basic_small() -> Tuple[ResnetExtractor, List[str]]:
    path = SMALL_DIR / "resnet_basic_small.safetensors"
    net = SmallResNet(tv_resnet.BasicBlock, [1, 1, 1, 1], width=8, num_classes=10)
    net.load_state_dict(load_file(str(path)), strict=True)
    net.fc = nn.Identity()
    extractor = ResnetExtractor(weights=None, arch="resnet18", gem_p=None, remove_fc=True, normalise_features=False)
    extractor.model = net
    extractor.eval()
    python = [
        "net = torchvision ResNet(BasicBlock, [1, 1, 1, 1]) with widths 8, 16, 32, 64 and fc Linear(64, 10) "
        "(SmallResNet in this script)",
        "net.load_state_dict(safetensors.torch.load_file('tests/data/extractors/resnet_basic_small.safetensors'), "
        "strict=True); net.fc = nn.Identity()",
        "extractor = ResnetExtractor(weights=None, arch='resnet18', gem_p=None, remove_fc=True, "
        "normalise_features=False); extractor.model = net",
    ]
    return extractor, python


EXTRACTORS = {"vit_dino_small": load_vit_dino_small, "resnet_basic_small": load_resnet_basic_small}


def set_head_(model: ConcatSiamese, seed: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    head = {}
    with torch.no_grad():
        for key, p in model.state_dict().items():
            if key.startswith("head."):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
                head[key] = p.clone()
    return head


def concat_siamese_case(extractor_name: str, hidden: List[int], seed: int, x1, x2) -> Dict[str, Any]:
    extractor, python = EXTRACTORS[extractor_name]()
    model = ConcatSiamese(extractor=extractor, mlp_hidden_dims=hidden, use_tta=False)
    head = set_head_(model, seed)
    model.eval()
    case: Dict[str, Any] = {
        "name": f"{extractor_name}_mlp_{'_'.join(map(str, hidden))}",
        "mode": "eval",
        "extractor": extractor_name,
        "extractor_file": f"tests/data/extractors/{extractor_name}.safetensors",
        "extractor_sha256": sha256_file(SMALL_DIR / f"{extractor_name}.safetensors"),
        "feat_dim": int(extractor.feat_dim),
        "mlp_hidden_dims": hidden,
        "python": python + [
            f"model = ConcatSiamese(extractor=extractor, mlp_hidden_dims={hidden}, use_tta=False)",
            f"g = torch.Generator().manual_seed({seed}); for every head.* key of model.state_dict() in order: "
            "p.copy_(0.3 * torch.randn(p.shape, generator=g))",
            "model.eval()",
            "logits = model(x1=x1, x2=x2); predict = model.predict(x1, x2); "
            "model.use_tta = True; predict_tta = model.predict(x1, x2)",
        ],
        "head_keys": list(head),
        "head": {},
        "head_str": str(model.head),
        "state_dict_keys_not_head": sum(1 for k in model.state_dict() if not k.startswith("head.")),
        "concat_shape": list(torch.concat([x1, x2], dim=2).shape),
        "inputs": "concat_siamese_inputs",
    }
    for key, value in head.items():
        put(case["head"], key, value)
    try:
        with torch.no_grad():
            logits = model(x1=x1, x2=x2)
            model.use_tta = False
            pred = model.predict(x1, x2)
            model.use_tta = True
            pred_tta = model.predict(x1, x2)
            model.use_tta = False
            swapped = model(x1=x2, x2=x1)
            ref = copy.deepcopy(model).double().eval()
            logits64 = ref(x1=x1.double(), x2=x2.double())
    except Exception as e:  # noqa: BLE001
        case["error"] = err(e)
        if extractor_name.startswith("vit"):
            case["vit_accepts_64x32"] = False
        return case
    assert torch.equal(pred, torch.sigmoid(logits))
    assert torch.allclose(pred_tta, (torch.sigmoid(logits) + torch.sigmoid(swapped)) / 2, atol=0, rtol=1e-6)
    if extractor_name.startswith("vit"):
        case["vit_accepts_64x32"] = True
    put(case, "logits", logits)
    put(case, "logits_swapped", swapped)
    put(case, "predict", pred)
    put(case, "predict_tta", pred_tta)
    case["logits_list"] = f32_list(logits)
    case["f32_vs_f64_max_abs_diff"] = float((logits.double() - logits64).abs().max())
    return case


def concat_siamese_train_record() -> Dict[str, Any]:
    extractor, python = EXTRACTORS["resnet_basic_small"]()
    model = ConcatSiamese(extractor=extractor, mlp_hidden_dims=[16, 8], use_tta=False)
    model.train()
    modules = [(str(i), m) for i, m in enumerate(model.head)]
    return {
        "name": "train_mode_modules",
        "mode": "train",
        "extractor": "resnet_basic_small",
        "mlp_hidden_dims": [16, 8],
        "python": python + ["model = ConcatSiamese(extractor=extractor, mlp_hidden_dims=[16, 8]); model.train()"],
        "head_str": str(model.head),
        "head_modules": [f"{i}: {m}" for i, m in modules],
        "dropout_indices": [int(i) for i, m in modules if isinstance(m, nn.Dropout)],
        "dropout_p": [float(m.p) for _, m in modules if isinstance(m, nn.Dropout)],
        "head_training": bool(model.head.training),
        "train_backbone": bool(model.train_backbone),
        "note": "outputs not recorded: Dropout(p=0.5) after every hidden Linear+Sigmoid is random in train mode; "
        "the last Linear has no bias and the final Dropout is replaced by Identity",
    }


def concat_siamese_part() -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    x1 = randn((3, 3, 32, 32), SEED + 101)
    x2 = randn((3, 3, 32, 32), SEED + 102)
    inputs: Dict[str, Any] = {"python": f"x1 = randn((3, 3, 32, 32), {SEED + 101}); "
                              f"x2 = randn((3, 3, 32, 32), {SEED + 102})"}
    put(inputs, "x1", x1)
    put(inputs, "x2", x2)
    cases = []
    seed = SEED + 200
    for name in ("vit_dino_small", "resnet_basic_small"):
        for hidden in ([16], [16, 8]):
            seed += 1
            cases.append(concat_siamese_case(name, hidden, seed, x1, x2))
    cases.append(concat_siamese_train_record())
    return inputs, cases


# ----------------------------------------------------------------------------- part 3: PairsMiner


def canonical_pairs(ids1: List[int], ids2: List[int], is_neg: List[bool]) -> Dict[str, Any]:
    pos = sorted((a, b) for a, b, n in zip(ids1, ids2, is_neg) if not n)
    neg = sorted((a, b) for a, b, n in zip(ids1, ids2, is_neg) if n)
    return {
        "ids1": [a for a, _ in pos + neg],
        "ids2": [b for _, b in pos + neg],
        "is_negative": [False] * len(pos) + [True] * len(neg),
    }


def pairs_miner_cases() -> List[Dict[str, Any]]:
    batches = [
        ("two_labels", [0, 1, 0, 1, 0, 1, 0, 1]),
        ("three_labels", [2, 0, 1, 1, 0, 2, 1, 0]),
        ("four_labels", [3, 1, 0, 2, 1, 3, 0, 2]),
    ]
    cases = []
    for ib, (bname, labels) in enumerate(batches):
        features = randn((8, 4), SEED + 300 + ib)
        for hard in (True, False):
            numpy_seed = SEED % 2**31 + ib
            np.random.seed(numpy_seed)
            miner = PairsMiner(hard_mining=hard)
            ids1, ids2, is_neg = miner.sample(features, labels)
            oml_out = {"ids1": int_list(ids1), "ids2": int_list(ids2), "is_negative": [bool(v) for v in is_neg]}
            canon = canonical_pairs(oml_out["ids1"], oml_out["ids2"], oml_out["is_negative"])
            assert all(a < b for a, b in zip(canon["ids1"], canon["ids2"]))
            pairs = list(zip(canon["ids1"], canon["ids2"]))
            assert len(set(pairs)) == len(pairs)
            case: Dict[str, Any] = {"name": f"{bname}_{'hard' if hard else 'all'}"}
            put(case, "features", features)
            case.update(
                {
                    "labels": labels,
                    "hard_mining": hard,
                    "numpy_seed": numpy_seed,
                    "python": f"np.random.seed({numpy_seed}); ids1, ids2, is_negative = "
                    f"PairsMiner(hard_mining={hard}).sample(features, labels)",
                    "oml": oml_out,
                    "canonical": canon,
                    "oml_order_is_canonical": oml_out == canon,
                }
            )
            cases.append(case)
    return cases


# ----------------------------------------------------------------------------- main


def main() -> None:
    inputs, siamese = concat_siamese_part()
    data = {
        "about": "Golden fixtures for OML 4.0 pairwise re-ranking (PairwiseReranker, LinearTrivialDistanceSiamese, "
        "ConcatSiamese, PairsMiner); made by tests/golden/make_reranker_fixtures.py, see its docstring for the "
        "layout and the observed semantics.",
        "versions": versions(),
        "inputs_python": "randn(shape, seed) = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))",
        "rerank_cases": rerank_cases(),
        "concat_siamese_inputs": inputs,
        "concat_siamese_cases": siamese,
        "pairs_miner_cases": pairs_miner_cases(),
    }
    text = json.dumps(data, indent=1, allow_nan=False)
    # lists of plain numbers / null / booleans on one line
    text = re.sub(
        r"\[\s*((?:-?[0-9.eE+-]+|null|true|false)(?:,\s*(?:-?[0-9.eE+-]+|null|true|false))*)\s*\]",
        lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]",
        text,
    )
    OUT_PATH.write_text(text + "\n")
    print(f"wrote {OUT_PATH} ({len(text) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
