#!/usr/bin/env python3
"""Generate golden fixtures for OML 4.0's losses and miners, for the Rust port.

Run (needs a venv with ``open-metric-learning==4.0.0``, torch (CPU is fine), torchvision, numpy):

    /work/venv/bin/python tests/golden/make_loss_fixtures.py

It writes ``tests/golden/losses_oml.json`` next to this script (about 0.3 MB) in a few seconds, on one torch
thread. Everything in that file is produced by calling Python OML 4.0 itself; this script only builds seeded
inputs, records what OML returns, and serialises it. The semantics behind the numbers are written up in
``tests/golden/loss_semantics.md``.

What is in the JSON (top level)
-------------------------------
* ``triplet_loss_cases``       -> ``oml.losses.TripletLoss`` on given anchor/positive/negative tensors
* ``triplet_plain_cases``      -> ``oml.losses.TripletLossPlain`` (features stacked as a,p,n,a,p,n,...)
* ``triplet_with_miner_cases`` -> ``oml.losses.TripletLossWithMiner`` with every in-batch miner
* ``miner_cases``              -> the miners alone (``sample`` or ``_sample``), including ties, duplicates,
  single-instance labels, batches without triplets and the invariants NHard(1,1)==Hard, NHard(big)==All
* ``hard_cluster_cases``       -> ``oml.miners.HardClusterMiner`` alone (it returns tensors, not ids)
* ``label_smoothing_cases``    -> ``oml.functional.label_smoothing.label_smoothing``
* ``arcface_cases``            -> ``oml.losses.ArcFaceLoss`` (weights set explicitly, stored)
* ``arcface_mlp_cases``        -> ``oml.losses.ArcFaceLossWithMLP`` (all parameters set and stored by state_dict key)
* ``surrogate_precision_cases`` -> ``oml.losses.SurrogatePrecision``
* ``miner_with_bank``          -> ``oml.miners.MinerWithBank`` + ``TripletLossWithMiner`` over consecutive batches
* ``triplet_miner_with_memory`` -> ``oml.miners.TripletMinerWithMemory`` (random; only deterministic parts are
  meant to be compared, see ``deterministic_fields``)

JSON conventions
----------------
* Float tensors: ``<name>_f32_b64`` = base64 of little-endian float32 C-order bytes, ``<name>_shape`` beside it.
  NaNs inside tensors are kept as float32 NaN bit patterns.
* Scalars (losses, logs) are the float32 values written as JSON numbers (parse as f64, cast to f32 for the exact
  value). Scalar NaN -> ``null``.
* Integer lists (labels, triplet ids) are plain JSON lists, 0-based.
* ``python``: the exact constructor call used for the case.
* Gradients are d(loss)/d(input) by torch autograd; for ``reduction="none"`` they are gradients of ``loss.sum()``.
* ``triplets``: ``{"ids_anchor": [...], "ids_pos": [...], "ids_neg": [...]}`` in OML's order. For
  ``AllTripletsMiner`` that order is a numpy-random permutation (see ``numpy_seed``); compare as sets and use
  ``canonical`` (OML's pre-permutation order, = lexicographic (a, p, n)).
* ``pos_dist`` / ``neg_dist`` per triplet (float32, OML's ``torch.cdist``) are given for mined triplets so a
  tie-robust comparison (multisets of distances per anchor) is possible.
* ``error``: ``"<ExceptionType>: <message>"`` when OML raised.
"""

import base64
import json
import math
import random
import re
import signal
import sys
from itertools import product
from pathlib import Path
from sys import maxsize
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from unittest import mock

import numpy as np
import torch
import torchvision

import oml
import oml.miners.inbatch_all_tri as all_tri_module
from oml.functional.label_smoothing import label_smoothing
from oml.losses import (
    ArcFaceLoss,
    ArcFaceLossWithMLP,
    SurrogatePrecision,
    TripletLoss,
    TripletLossPlain,
    TripletLossWithMiner,
)
from oml.miners import (
    AllTripletsMiner,
    HardClusterMiner,
    HardTripletsMiner,
    MinerWithBank,
    NHardTripletsMiner,
    TripletMinerWithMemory,
)

torch.set_num_threads(1)

SEED = 20240612
OUT_PATH = Path(__file__).resolve().parent / "losses_oml.json"
NEAR_TIE = 1e-3  # random inputs are re-drawn until no two distances in a row are closer than this

# ----------------------------------------------------------------------------- helpers


def b64(t: torch.Tensor) -> str:
    arr = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
    return base64.b64encode(arr.tobytes()).decode("ascii")


def put(d: Dict[str, Any], name: str, t: torch.Tensor) -> None:
    """Stores a float tensor as ``name_f32_b64`` + ``name_shape``."""
    d[f"{name}_f32_b64"] = b64(t)
    d[f"{name}_shape"] = list(t.shape)


def num(x: Any) -> Optional[float]:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().item()
    x = float(np.float32(x))
    return None if math.isnan(x) or math.isinf(x) else x


def logs_json(logs: Dict[str, Any]) -> Dict[str, Any]:
    return {k: num(v) for k, v in logs.items()}


def logs_types(logs: Dict[str, Any]) -> Dict[str, str]:
    return {k: ("tensor" if isinstance(v, torch.Tensor) else type(v).__name__) for k, v in logs.items()}


def err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def randn(shape: Sequence[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def no_near_ties(x: torch.Tensor, eps: float = NEAR_TIE) -> bool:
    d = torch.cdist(x.double(), x.double())
    s = d.sort(dim=1).values
    return bool(((s[:, 1:] - s[:, :-1]).abs() > eps).all())


def seeded_features(shape: Sequence[int], seed: int) -> Tuple[torch.Tensor, int]:
    """``randn`` from ``torch.Generator().manual_seed(seed)``; seed bumped by 1 until no near-ties."""
    while True:
        x = randn(shape, seed)
        if no_near_ties(x):
            return x, seed
        seed += 1


def balanced_labels(n_labels: int, n_instances: int, shuffle_seed: Optional[int] = None) -> List[int]:
    labels = [lb for lb in range(n_labels) for _ in range(n_instances)]
    if shuffle_seed is not None:
        rng = random.Random(shuffle_seed)
        rng.shuffle(labels)
    return labels


def tri_dict(ids: Tuple[Sequence[int], Sequence[int], Sequence[int]]) -> Dict[str, List[int]]:
    a, p, n = ids
    return {"ids_anchor": [int(i) for i in a], "ids_pos": [int(i) for i in p], "ids_neg": [int(i) for i in n]}


def tri_dists(features: torch.Tensor, ids) -> Dict[str, List[float]]:
    a, p, n = (list(map(int, i)) for i in ids)
    d = torch.cdist(features.detach(), features.detach())
    return {"pos_dist": [num(d[i, j]) for i, j in zip(a, p)], "neg_dist": [num(d[i, j]) for i, j in zip(a, n)]}


def canonical_all_triplets(labels: List[int], max_out: int = maxsize) -> Dict[str, List[int]]:
    """OML's ``get_available_triplets`` with the final numpy permutation replaced by the identity."""
    with mock.patch.object(
        all_tri_module.np.random, "choice", lambda n, k, replace=False: np.arange(min(n, k))
    ):
        return tri_dict(all_tri_module.get_available_triplets(labels, max_out_triplets=max_out))


def record_sample(miner) -> List[Tuple[List[int], List[int], List[int]]]:
    """Wraps ``miner._sample`` (instance attribute) so the ids OML produced are recorded."""
    calls: List[Any] = []
    orig = miner._sample

    def wrapped(*args, **kwargs):
        out = orig(*args, **kwargs)
        calls.append(out)
        return out

    miner._sample = wrapped
    return calls


def versions() -> Dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "oml": oml.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "torch_num_threads": str(torch.get_num_threads()),
    }


# ----------------------------------------------------------------------------- TripletLoss


def triplet_loss_cases() -> List[Dict[str, Any]]:
    cases = []
    a = randn((6, 5), SEED + 1)
    p = a + 0.7 * randn((6, 5), SEED + 2)
    n = a + 0.9 * randn((6, 5), SEED + 3)
    specs = [
        ("margin0.2_mean", "TripletLoss(margin=0.2, reduction='mean', need_logs=True)", 0.2, "mean", (a, p, n)),
        ("margin0.2_sum", "TripletLoss(margin=0.2, reduction='sum', need_logs=True)", 0.2, "sum", (a, p, n)),
        ("margin0.2_none", "TripletLoss(margin=0.2, reduction='none', need_logs=True)", 0.2, "none", (a, p, n)),
        ("margin1.5_mean", "TripletLoss(margin=1.5, reduction='mean', need_logs=True)", 1.5, "mean", (a, p, n)),
        ("soft_mean", "TripletLoss(margin=None, reduction='mean', need_logs=True)", None, "mean", (a, p, n)),
        ("soft_sum", "TripletLoss(margin=None, reduction='sum', need_logs=True)", None, "sum", (a, p, n)),
        ("soft_none", "TripletLoss(margin=None, reduction='none', need_logs=True)", None, "none", (a, p, n)),
    ]
    same = randn((4, 5), SEED + 4)
    specs += [
        (
            "soft_identical_vectors_ln2",
            "TripletLoss(margin=None, reduction='mean', need_logs=True)",
            None,
            "mean",
            (same, same.clone(), same.clone()),
        ),
        (
            "margin0.2_identical_vectors",
            "TripletLoss(margin=0.2, reduction='mean', need_logs=True)",
            0.2,
            "mean",
            (same, same.clone(), same.clone()),
        ),
        (
            "soft_large_gap_log1p_exp",
            "TripletLoss(margin=None, reduction='none', need_logs=True)",
            None,
            "none",
            (
                torch.zeros(3, 2),
                torch.tensor([[30.0, 0], [0, 0.5], [100.0, 0]]),
                torch.tensor([[0.0, 1], [60, 0], [0, 1]]),
            ),
        ),
    ]
    for name, py, margin, reduction, (xa, xp, xn) in specs:
        xa = xa.clone().requires_grad_(True)
        xp = xp.clone().requires_grad_(True)
        xn = xn.clone().requires_grad_(True)
        crit = TripletLoss(margin=margin, reduction=reduction, need_logs=True)
        loss = crit(xa, xp, xn)
        (loss.sum() if reduction == "none" else loss).backward()
        case: Dict[str, Any] = {"name": name, "python": py, "margin": margin, "reduction": reduction}
        put(case, "anchor", xa)
        put(case, "positive", xp)
        put(case, "negative", xn)
        if reduction == "none":
            case["loss_values"] = [num(v) for v in loss]
        else:
            case["loss"] = num(loss)
        put(case, "grad_anchor", xa.grad)
        put(case, "grad_positive", xp.grad)
        put(case, "grad_negative", xn.grad)
        case["logs"] = logs_json(crit.last_logs)
        case["logs_types"] = logs_types(crit.last_logs)
        if name == "soft_identical_vectors_ln2":
            case["expected_ln2"] = math.log(2)
            case["note"] = "all distances 0; torch.cdist's backward gives 0 (not NaN) at zero distance"
        if name == "margin0.2_identical_vectors":
            case["note"] = "relu(0.2 + 0 - 0) = 0.2 is active but the distance gradient at 0 is 0 -> all grads 0"
        if name == "soft_large_gap_log1p_exp":
            case["note"] = (
                "OML computes log1p(exp(d_pos - d_neg)) literally (not softplus): d_pos - d_neg = 99 overflows "
                "float32 exp -> the 3rd loss value is +inf (stored as null) and its gradients are NaN; the 1st "
                "(29) is log1p(exp(29)) rounded to 29.0 in float32, the 2nd is log1p(exp(-59.5)) ~ 1.4e-26"
            )
        cases.append(case)
    return cases


def triplet_plain_cases() -> List[Dict[str, Any]]:
    cases = []
    x = randn((9, 4), SEED + 10)
    for name, py, margin, reduction in [
        ("plain_margin0.3_mean", "TripletLossPlain(margin=0.3, reduction='mean', need_logs=True)", 0.3, "mean"),
        ("plain_soft_sum", "TripletLossPlain(margin=None, reduction='sum', need_logs=True)", None, "sum"),
    ]:
        xf = x.clone().requires_grad_(True)
        crit = TripletLossPlain(margin=margin, reduction=reduction, need_logs=True)
        loss = crit(xf)
        loss.backward()
        case = {"name": name, "python": py, "margin": margin, "reduction": reduction}
        put(case, "features", xf)
        case["triplet_layout"] = {"ids_anchor": [0, 3, 6], "ids_pos": [1, 4, 7], "ids_neg": [2, 5, 8]}
        case["loss"] = num(loss)
        put(case, "grad_features", xf.grad)
        case["logs"] = logs_json(crit.last_logs)
        cases.append(case)
    return cases


# ----------------------------------------------------------------------------- TripletLossWithMiner


def hard_cluster_ids(features: torch.Tensor, labels: List[int]) -> Dict[str, Any]:
    """Re-derives, with HardClusterMiner's own static helpers, which sample/label it picked."""
    m = HardClusterMiner
    mask = m._get_labels_mask(labels)
    n_labels = mask.shape[0]
    f = features.detach().repeat((n_labels, 1, 1))[mask].view((n_labels, -1, features.shape[-1]))
    means = f.mean(1)
    d_intra = m._count_intra_label_distances(f, means)
    pos_in_label = d_intra.max(1).indices
    d_inter = m._fill_diagonal(m._count_inter_label_distances(means), float("inf"))
    neg_label_idx = d_inter.min(1).indices
    uniq = sorted(set(labels))
    members = [[i for i, lb in enumerate(labels) if lb == u] for u in uniq]
    return {
        "label_order": uniq,
        "pos_batch_ids": [members[k][int(j)] for k, j in enumerate(pos_in_label)],
        "neg_label_positions": [int(i) for i in neg_label_idx],
        "neg_labels": [uniq[int(i)] for i in neg_label_idx],
    }


MINER_SPECS: List[Tuple[str, str, Callable[[], Any]]] = [
    ("all", "AllTripletsMiner()", lambda: AllTripletsMiner()),
    ("all_cap10", "AllTripletsMiner(max_output_triplets=10)", lambda: AllTripletsMiner(max_output_triplets=10)),
    ("hard", "HardTripletsMiner()", lambda: HardTripletsMiner()),
    ("nhard_2_3", "NHardTripletsMiner(n_positive=2, n_negative=3)", lambda: NHardTripletsMiner(2, 3)),
    (
        "nhard_range_1-2_2-4",
        "NHardTripletsMiner(n_positive=(1, 2), n_negative=(2, 4))",
        lambda: NHardTripletsMiner((1, 2), (2, 4)),
    ),
    ("nhard_1_1", "NHardTripletsMiner(n_positive=1, n_negative=1)", lambda: NHardTripletsMiner(1, 1)),
    ("hard_cluster", "HardClusterMiner()", lambda: HardClusterMiner()),
]


def triplet_with_miner_cases() -> List[Dict[str, Any]]:
    cases = []
    batches = []
    x, s = seeded_features((12, 6), SEED + 20)
    batches.append(("balanced_4x3", x, s, balanced_labels(4, 3)))
    x, s = seeded_features((12, 6), SEED + 40)
    batches.append(("balanced_3x4_shuffled", x, s, balanced_labels(3, 4, shuffle_seed=7)))
    x, s = seeded_features((9, 5), SEED + 60)
    batches.append(("unbalanced_9", x, s, [3, 3, 3, 3, 1, 1, 7, 7, 7]))

    for (bname, x, fseed, labels), (mname, mpy, mk), margin, reduction in product(
        batches, MINER_SPECS, [0.1, None], ["mean"]
    ):
        if bname == "balanced_3x4_shuffled" and margin is None:
            continue
        cases.append(one_miner_loss_case(bname, x, fseed, labels, mname, mpy, mk, margin, reduction))
    # one sum-reduction case
    bname, x, fseed, labels = batches[0]
    cases.append(one_miner_loss_case(bname, x, fseed, labels, *MINER_SPECS[3], 0.1, "sum"))
    # default miner (AllTripletsMiner) == "features + labels -> all triplets"
    cases.append(
        one_miner_loss_case(bname, x, fseed, labels, "default_all", "<default>", None, 0.2, "mean")
    )
    return cases


def one_miner_loss_case(bname, x, fseed, labels, mname, mpy, mk, margin, reduction) -> Dict[str, Any]:
    np_seed = SEED % 10000 + 1
    if mk is None:
        crit = TripletLossWithMiner(margin=margin, reduction=reduction, need_logs=True)
        miner = crit.miner
        py = f"TripletLossWithMiner(margin={margin!r}, reduction={reduction!r}, need_logs=True)"
    else:
        miner = mk()
        crit = TripletLossWithMiner(margin=margin, miner=miner, reduction=reduction, need_logs=True)
        py = f"TripletLossWithMiner(margin={margin!r}, miner={mpy}, reduction={reduction!r}, need_logs=True)"
    calls = record_sample(miner) if not isinstance(miner, HardClusterMiner) else []
    case: Dict[str, Any] = {
        "name": f"{bname}/{mname}/margin={margin}/{reduction}",
        "python": py,
        "miner": type(miner).__name__,
        "margin": margin,
        "reduction": reduction,
        "labels": labels,
        "features_seed": fseed,
    }
    xf = x.clone().requires_grad_(True)
    put(case, "features", xf)
    case["labels_passed_as"] = "torch.tensor(labels)"
    np.random.seed(np_seed)
    try:
        loss = crit(xf, torch.tensor(labels))
    except Exception as e:  # noqa
        case["error"] = err(e)
        return case
    loss.backward()
    case["loss"] = num(loss)
    put(case, "grad_features", xf.grad)
    case["logs"] = logs_json(crit.last_logs)
    case["logs_types"] = logs_types(crit.last_logs)
    if isinstance(miner, HardClusterMiner):
        case["hard_cluster"] = hard_cluster_ids(x, labels)
        case["n_triplets"] = len(set(labels))
    else:
        ids = calls[0]
        case["triplets"] = tri_dict(ids)
        case["n_triplets"] = len(ids[0])
        case.update(tri_dists(x, ids))
        if isinstance(miner, AllTripletsMiner):
            case["numpy_seed"] = np_seed
            case["canonical"] = canonical_all_triplets(labels)
            case["n_all_triplets"] = len(case["canonical"]["ids_anchor"])
            case["order_note"] = (
                "OML order = canonical order permuted by np.random.choice(n, min(n, cap), replace=False) "
                "after np.random.seed(numpy_seed); compare as sets (for the cap: subset of canonical, size = cap)"
            )
    return case


# ----------------------------------------------------------------------------- miners alone


def miner_alone(name, py, miner, features, labels, method="sample", note="", **kw) -> Dict[str, Any]:
    case: Dict[str, Any] = {"name": name, "python": py, "method": method, "labels": labels, "note": note}
    put(case, "features", features)
    put(case, "distmat", torch.cdist(features, features))
    calls = record_sample(miner)
    np.random.seed(1)
    try:
        if method == "sample":
            miner.sample(features, labels)
        else:
            calls.append(miner.__class__._sample(miner, features, labels=labels, **kw))
    except Exception as e:  # noqa
        case["error"] = err(e)
        return case
    ids = calls[0]
    case["triplets"] = tri_dict(ids)
    case.update(tri_dists(features, ids))
    if isinstance(miner, AllTripletsMiner):
        case["numpy_seed"] = 1
        case["canonical"] = canonical_all_triplets(labels, miner._max_out_triplets)
    return case


def miner_cases() -> List[Dict[str, Any]]:
    cases = []
    # --- ties: centre point + unit axis points, exact float distances 0, 1, sqrt(2), 2
    f_tie = torch.tensor(
        [[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0], [0, 0, 1]]
    )
    lab_tie = [0, 0, 0, 1, 1, 1]
    tie_note = (
        "exact distance ties; rows have <=16 entries so torch.argsort (libstdc++ std::sort -> insertion sort) "
        "behaves stably: descending order keeps ascending index among ties, hence NHard's flipped ascending order "
        "puts the HIGHER index first among tied negatives while HardTripletsMiner's argmin takes the LOWER one"
    )
    for name, py, m in [
        ("ties6/hard", "HardTripletsMiner()", HardTripletsMiner()),
        ("ties6/nhard_1_1", "NHardTripletsMiner(1, 1)", NHardTripletsMiner(1, 1)),
        ("ties6/nhard_2_2", "NHardTripletsMiner(2, 2)", NHardTripletsMiner(2, 2)),
        ("ties6/nhard_range_2-2_2-3", "NHardTripletsMiner((2, 2), (2, 3))", NHardTripletsMiner((2, 2), (2, 3))),
        ("ties6/all", "AllTripletsMiner()", AllTripletsMiner()),
    ]:
        cases.append(miner_alone(name, py, m, f_tie, lab_tie, note=tie_note))

    # --- ties in a 20-row batch: argsort is NOT stable (introsort), OML order is implementation-specific
    f20 = torch.zeros(20, 2)
    f20[1:, 0] = torch.tensor([1.0 if i % 2 else -1.0 for i in range(19)])
    f20[1:, 1] = 0
    lab20 = [i % 4 for i in range(20)]
    for name, py, m in [
        ("ties20/hard", "HardTripletsMiner()", HardTripletsMiner()),
        ("ties20/nhard_1_1", "NHardTripletsMiner(1, 1)", NHardTripletsMiner(1, 1)),
        ("ties20/nhard_2_2", "NHardTripletsMiner(2, 2)", NHardTripletsMiner(2, 2)),
    ]:
        cases.append(
            miner_alone(
                name,
                py,
                m,
                f20,
                lab20,
                note="rows of 20 > 16 entries with massive ties: torch.argsort(descending=True) uses unstable "
                "std::sort introsort, so which tied index NHard picks is torch-specific; compare only the "
                "distances (pos_dist/neg_dist) per anchor, not ids. HardTripletsMiner (argmax/argmin -> first "
                "index) stays well defined",
            )
        )

    # --- random balanced batch: invariants
    x, s = seeded_features((12, 6), SEED + 100)
    lab = balanced_labels(4, 3)
    cases.append(miner_alone("rand12/hard", "HardTripletsMiner()", HardTripletsMiner(), x, lab,
                             note="invariant: equals rand12/nhard_1_1"))
    cases.append(miner_alone("rand12/nhard_1_1", "NHardTripletsMiner(1, 1)", NHardTripletsMiner(1, 1), x, lab))
    cases.append(miner_alone("rand12/nhard_100_100", "NHardTripletsMiner(100, 100)", NHardTripletsMiner(100, 100),
                             x, lab, note="invariant: same triplet SET as rand12/all (order differs)"))
    cases.append(miner_alone("rand12/all", "AllTripletsMiner()", AllTripletsMiner(), x, lab))
    cases.append(miner_alone("rand12/all_cap7", "AllTripletsMiner(max_output_triplets=7)",
                             AllTripletsMiner(max_output_triplets=7), x, lab,
                             note="random subset (np.random.choice without replacement) of canonical, size 7"))
    cases.append(miner_alone("rand12/nhard_3_2", "NHardTripletsMiner(3, 2)", NHardTripletsMiner(3, 2), x, lab,
                             note="n_positive=3 > 2 available positives: slice just truncates"))
    cases.append(miner_alone("rand12/nhard_range_2-2_3-5", "NHardTripletsMiner((2, 2), (3, 5))",
                             NHardTripletsMiner((2, 2), (3, 5)), x, lab))
    cases.append(miner_alone("rand12/nhard_range_3-4_1", "NHardTripletsMiner((3, 4), 1)",
                             NHardTripletsMiner((3, 4), 1), x, lab,
                             note="range starts beyond the 2 available positives -> empty cartesian product -> error"))
    cases.append(miner_alone("rand12/nhard_ignore_anchor_mask", "NHardTripletsMiner(2, 2)._sample(..., "
                             "ignore_anchor_mask=mask)", NHardTripletsMiner(2, 2), x, lab, method="_sample",
                             ignore_anchor_mask=torch.tensor([i % 3 == 0 for i in range(12)]),
                             note="ignore_anchor_mask = [i % 3 == 0]: those rows are never anchors but can be "
                             "positives/negatives"))

    # --- unbalanced random batch
    x, s = seeded_features((9, 5), SEED + 120)
    lab = [5, 5, 5, 5, 2, 2, 9, 9, 9]
    for name, py, m in [
        ("unbalanced9/hard", "HardTripletsMiner()", HardTripletsMiner()),
        ("unbalanced9/nhard_2_2", "NHardTripletsMiner(2, 2)", NHardTripletsMiner(2, 2)),
        ("unbalanced9/all", "AllTripletsMiner()", AllTripletsMiner()),
    ]:
        cases.append(miner_alone(name, py, m, x, lab))

    # --- a label with a single instance
    x, s = seeded_features((7, 4), SEED + 140)
    lab = [0, 0, 1, 1, 1, 2, 0]  # label 2 has one instance (index 5)
    single_note = "label 2 has a single instance (index 5)"
    for name, py, m, method in [
        ("single_instance/hard.sample", "HardTripletsMiner()", HardTripletsMiner(), "sample"),
        ("single_instance/all.sample", "AllTripletsMiner()", AllTripletsMiner(), "sample"),
        ("single_instance/nhard.sample", "NHardTripletsMiner(2, 2)", NHardTripletsMiner(2, 2), "sample"),
        ("single_instance/hard._sample", "HardTripletsMiner()", HardTripletsMiner(), "_sample"),
        ("single_instance/all._sample", "AllTripletsMiner()", AllTripletsMiner(), "_sample"),
        ("single_instance/nhard._sample", "NHardTripletsMiner(2, 2)", NHardTripletsMiner(2, 2), "_sample"),
    ]:
        cases.append(miner_alone(name, py, m, x, lab, method=method, note=single_note))

    # --- no triplet at all: every label unique / one label only
    x, s = seeded_features((5, 3), SEED + 160)
    for lab, tag in [([0, 1, 2, 3, 4], "all_labels_unique"), ([4, 4, 4, 4, 4], "single_label")]:
        for name, py, m, method in [
            ("hard.sample", "HardTripletsMiner()", HardTripletsMiner(), "sample"),
            ("hard._sample", "HardTripletsMiner()", HardTripletsMiner(), "_sample"),
            ("all._sample", "AllTripletsMiner()", AllTripletsMiner(), "_sample"),
            ("nhard._sample", "NHardTripletsMiner(1, 1)", NHardTripletsMiner(1, 1), "_sample"),
        ]:
            cases.append(miner_alone(f"no_triplets_{tag}/{name}", py, m, x, lab, method=method))

    # --- duplicated vectors (zero distances): HardTripletsMiner can return the anchor itself as positive
    base, s = seeded_features((3, 4), SEED + 180)
    xd = torch.stack([base[0], base[0], base[1], base[1], base[2], base[2] + 0.5])
    labd = [0, 0, 1, 1, 2, 2]
    dup_note = (
        "rows 0,1 identical (label 0) and rows 2,3 identical (label 1): all positive distances are 0; "
        "HardTripletsMiner's argmax over the row (self included, dist 0) returns the first index -> anchor 0 gets "
        "positive 0 (itself) while anchor 1 gets 0; NHard excludes the diagonal"
    )
    for name, py, m in [
        ("duplicates/hard", "HardTripletsMiner()", HardTripletsMiner()),
        ("duplicates/nhard_1_1", "NHardTripletsMiner(1, 1)", NHardTripletsMiner(1, 1)),
    ]:
        cases.append(miner_alone(name, py, m, xd, labd, note=dup_note))
    return cases


def hard_cluster_cases() -> List[Dict[str, Any]]:
    cases = []
    for name, shape, seed, labels in [
        ("hc_4x3", (12, 6), SEED + 200, balanced_labels(4, 3)),
        ("hc_3x4_shuffled", (12, 5), SEED + 220, balanced_labels(3, 4, shuffle_seed=3)),
        ("hc_unbalanced", (7, 4), SEED + 240, [0, 0, 0, 1, 1, 2, 2]),
        ("hc_single_label", (4, 4), SEED + 260, [1, 1, 1, 1]),
        ("hc_one_instance_each", (4, 4), SEED + 280, [0, 1, 2, 3]),
    ]:
        x, s = seeded_features(shape, seed)
        case: Dict[str, Any] = {"name": name, "python": "HardClusterMiner()", "labels": labels}
        put(case, "features", x)
        try:
            a, p, n = HardClusterMiner().sample(x, labels)
        except Exception as e:  # noqa
            case["error"] = err(e)
            cases.append(case)
            continue
        put(case, "anchors_mean_vectors", a)
        put(case, "positives", p)
        put(case, "negatives_mean_vectors", n)
        case.update(hard_cluster_ids(x, labels))
        cases.append(case)
    return cases


# ----------------------------------------------------------------------------- ArcFace


def label_smoothing_cases() -> List[Dict[str, Any]]:
    cases = []
    y = torch.tensor([0, 2, 4, 1, 3])
    cats = torch.tensor([0, 0, 1, 1, 1])
    for eps in [0.0, 0.1, 0.3]:
        for use_cat in [False, True]:
            out = label_smoothing(y, 5, eps, cats if use_cat else None)
            case = {
                "name": f"eps={eps}/categories={use_cat}",
                "python": f"label_smoothing(y, num_classes=5, epsilon={eps}, categories="
                + ("torch.tensor([0, 0, 1, 1, 1]))" if use_cat else "None)"),
                "y": y.tolist(),
                "num_classes": 5,
                "epsilon": eps,
                "categories": cats.tolist() if use_cat else None,
            }
            put(case, "smoothed", out)
            cases.append(case)
    return cases


def set_param(p: torch.nn.Parameter, value: torch.Tensor) -> None:
    with torch.no_grad():
        p.copy_(value)


def arcface_cases() -> List[Dict[str, Any]]:
    cases = []
    n_cls, d = 5, 8
    W = randn((n_cls, d), SEED + 300)
    x = randn((10, d), SEED + 301)
    y = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    l2c = {0: "animal", 1: "animal", 2: "vehicle", 3: "vehicle", 4: "vehicle"}
    l2c_b = {0: 10, 1: 3, 2: 10, 3: 7, 4: 3}
    # a batch where the target cosine is below th = -cos(m): features anti-aligned with their class weight
    x_anti = -W[torch.tensor(y)] + 0.05 * randn((10, d), SEED + 302)
    # features exactly equal to a class weight row (cos == 1 up to rounding)
    x_eq = torch.cat([W[[0, 1, 2]].clone(), x[3:6]])
    y_eq = [0, 1, 3, 1, 2, 2]
    specs = [
        ("m0.5_s64_eps0", dict(m=0.5, s=64, smoothing_epsilon=0), x, y, ""),
        ("m0.5_s64_eps0.1", dict(m=0.5, s=64, smoothing_epsilon=0.1), x, y, ""),
        ("m0.5_s64_eps0.1_l2c", dict(m=0.5, s=64, smoothing_epsilon=0.1, label2category=l2c), x, y, ""),
        ("m0.5_s64_eps0_l2c_ignored", dict(m=0.5, s=64, smoothing_epsilon=0, label2category=l2c), x, y,
         "epsilon 0 -> `if self.smoothing_epsilon` is False -> hard labels, label2category unused"),
        ("m0.3_s30_eps0", dict(m=0.3, s=30, smoothing_epsilon=0), x, y, ""),
        ("m0.3_s30_eps0.2_l2c_int_categories", dict(m=0.3, s=30, smoothing_epsilon=0.2, label2category=l2c_b),
         x, y, "categories {10,3,7} remapped by sorted order to 3->0, 7->1, 10->2"),
        ("m0.5_s64_eps0_sum", dict(m=0.5, s=64, smoothing_epsilon=0, reduction="sum"), x, y, ""),
        ("m0.5_s64_eps0.1_none", dict(m=0.5, s=64, smoothing_epsilon=0.1, reduction="none"), x, y,
         "reduction none: loss_values per sample, grads of their sum"),
        ("m0.5_s64_eps0_below_th", dict(m=0.5, s=64, smoothing_epsilon=0), x_anti, y,
         "target cos < th=-cos(m): OML uses cos - mm (mm = sin(m)*m) instead of cos(theta+m)"),
        ("m0.5_s16_eps0_cos_eq_1", dict(m=0.5, s=16, smoothing_epsilon=0), x_eq, y_eq,
         "rows 0..2 equal weight rows 0..2 (row 2's target is 3, so there class 2 is a non-target). Wherever "
         "1-cos^2 rounds to exactly 0, sqrt's backward divides by 0 and the gradient of that feature row and "
         "weight row becomes NaN (see `observed`); where it rounds to a tiny positive value the gradient is "
         "finite. Which entries round to exactly 1 is float-rounding dependent: do not require bit-equal NaN "
         "placement, only the loss value and the finite rows"),
    ]
    for name, kw, xx, yy, note in specs:
        kw = dict(kw)
        crit = ArcFaceLoss(in_features=d, num_classes=n_cls, **kw)
        set_param(crit.weight, W)
        py = "ArcFaceLoss(in_features=8, num_classes=5, " + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + ")"
        xf = xx.clone().requires_grad_(True)
        yt = torch.tensor(yy)
        loss = crit(xf, yt)
        (loss.sum() if kw.get("reduction") == "none" else loss).backward()
        case: Dict[str, Any] = {"name": name, "python": py, "note": note, "labels": yy}
        case["params"] = {
            k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()}) for k, v in kw.items()
        }
        case["label2category_tensor"] = None if crit.label2category is None else crit.label2category.tolist()
        put(case, "weight", W)
        put(case, "features", xf)
        if kw.get("reduction") == "none":
            case["loss_values"] = [num(v) for v in loss]
        else:
            case["loss"] = num(loss)
        put(case, "grad_features", xf.grad)
        put(case, "grad_weight", crit.weight.grad)
        with torch.no_grad():
            cos = crit.fc(xf)
            put(case, "cos", cos)
            if crit.smoothing_epsilon:
                put(case, "targets", crit.smooth_labels(yt))
        case["logs"] = logs_json(crit.last_logs)
        case["logs_types"] = logs_types(crit.last_logs)
        if name.endswith("cos_eq_1"):
            with torch.no_grad():
                c = crit.fc(xx)
            case["observed"] = {
                "entries_with_abs_cos_ge_1": [[int(i), int(j)] for i, j in torch.nonzero(c.abs() >= 1).tolist()],
                "entries_with_one_minus_cos2_eq_0": [
                    [int(i), int(j)] for i, j in torch.nonzero((1.0 - c.pow(2)) == 0).tolist()
                ],
                "feature_rows_with_nan_grad": torch.nonzero(torch.isnan(xf.grad).any(1)).flatten().tolist(),
                "weight_rows_with_nan_grad": torch.nonzero(torch.isnan(crit.weight.grad).any(1)).flatten().tolist(),
            }
        case["cos_m_f64"] = float(crit.cos_m)
        case["sin_m_f64"] = float(crit.sin_m)
        case["th_f64"] = float(crit.th)
        case["mm_f64"] = float(crit.mm)
        cases.append(case)
    return cases


def arcface_mlp_cases() -> List[Dict[str, Any]]:
    cases = []
    d, n_cls = 8, 5
    x = randn((10, d), SEED + 400)
    y = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    for name, mlp_features, kw in [
        ("mlp_6_4_m0.5_s64_eps0", [6, 4], dict(m=0.5, s=64, smoothing_epsilon=0)),
        ("mlp_6_4_m0.4_s32_eps0.1_l2c", [6, 4], dict(m=0.4, s=32, smoothing_epsilon=0.1,
                                                      label2category={0: 0, 1: 0, 2: 1, 3: 1, 4: 1})),
        ("mlp_5_m0.5_s64_eps0", [5], dict(m=0.5, s=64, smoothing_epsilon=0)),
    ]:
        crit = ArcFaceLossWithMLP(in_features=d, num_classes=n_cls, mlp_features=mlp_features, **kw)
        case: Dict[str, Any] = {
            "name": name,
            "python": f"ArcFaceLossWithMLP(in_features=8, num_classes=5, mlp_features={mlp_features}, "
            + ", ".join(f"{k}={v!r}" for k, v in kw.items())
            + ")",
            "labels": y,
            "mlp_repr": repr(crit.mlp).replace("\n", " "),
        }
        params: Dict[str, Any] = {}
        for i, (k, p) in enumerate(crit.named_parameters()):
            set_param(p, 0.5 * randn(tuple(p.shape), SEED + 410 + i))
        for k, v in crit.state_dict().items():
            put(params, k, v)
        case["state_dict"] = params
        xf = x.clone().requires_grad_(True)
        loss = crit(xf, torch.tensor(y))
        loss.backward()
        put(case, "features", xf)
        case["loss"] = num(loss)
        put(case, "grad_features", xf.grad)
        grads: Dict[str, Any] = {}
        for k, p in crit.named_parameters():
            put(grads, k, p.grad)
        case["grad_params"] = grads
        with torch.no_grad():
            put(case, "mlp_output", crit.mlp(x))
        case["logs"] = logs_json(crit.last_logs)
        cases.append(case)
    return cases


# ----------------------------------------------------------------------------- SurrogatePrecision


def surrogate_precision_cases() -> List[Dict[str, Any]]:
    cases = []
    x12, _ = seeded_features((12, 6), SEED + 500)
    lab12 = balanced_labels(4, 3)
    x9, _ = seeded_features((9, 4), SEED + 520)
    lab9 = [0, 0, 0, 0, 0, 1, 1, 2, 2]
    specs = [
        ("k3_default_t", 3, 1.0, 0.01, "mean", x12, lab12),
        ("k5_default_t", 5, 1.0, 0.01, "mean", x12, lab12),
        ("k4_t1_0.5_t2_0.1", 4, 0.5, 0.1, "mean", x12, lab12),
        ("k3_t1_1_t2_0.5_sum", 3, 1.0, 0.5, "sum", x12, lab12),
        ("k3_t1_1_t2_0.5_none", 3, 1.0, 0.5, "none", x12, lab12),
        ("k3_default_t_unbalanced", 3, 1.0, 0.01, "mean", x9, lab9),
        ("k2_t1_0.2_t2_0.05_unbalanced", 2, 0.2, 0.05, "mean", x9, lab9),
    ]
    for name, k, t1, t2, red, x, lab in specs:
        crit = SurrogatePrecision(k=k, temperature1=t1, temperature2=t2, reduction=red)
        xf = x.clone().requires_grad_(True)
        loss = crit(xf, torch.tensor(lab))
        (loss.sum() if red == "none" else loss).backward()
        case: Dict[str, Any] = {
            "name": name,
            "python": f"SurrogatePrecision(k={k}, temperature1={t1}, temperature2={t2}, reduction={red!r})",
            "k": k,
            "k_internal": crit.k,
            "temperature1": t1,
            "temperature2": t2,
            "reduction": red,
            "labels": lab,
        }
        put(case, "features", xf)
        if red == "none":
            case["loss_values"] = [num(v) for v in loss]
        else:
            case["loss"] = num(loss)
        put(case, "grad_features", xf.grad)
        cases.append(case)
    return cases


# ----------------------------------------------------------------------------- memory miners


def miner_with_bank() -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    bs, n_steps = 8, 5
    label_pool_rng = random.Random(SEED)
    runs = []
    for run_name, n_bank, npos, nneg, margin in [
        ("bank2_nhard_1_1_margin0.2", 2, 1, 1, 0.2),
        ("bank2_nhard_2_3_soft", 2, 2, 3, None),
        ("bank1_nhard_range_1-2_2-3_margin0.3", 1, (1, 2), (2, 3), 0.3),
    ]:
        miner = MinerWithBank(bank_size_in_batches=n_bank, miner=NHardTripletsMiner(npos, nneg), need_logs=True)
        crit = TripletLossWithMiner(margin=margin, miner=miner, reduction="mean", need_logs=True)
        calls = record_sample(miner.miner)
        run: Dict[str, Any] = {
            "name": run_name,
            "python": f"TripletLossWithMiner(margin={margin!r}, miner=MinerWithBank(bank_size_in_batches={n_bank}, "
            f"miner=NHardTripletsMiner({npos!r}, {nneg!r}), need_logs=True), reduction='mean', need_logs=True)",
            "batch_size": bs,
            "steps": [],
        }
        for step in range(n_steps):
            pool = label_pool_rng.sample(range(6), 4)
            labels = [lb for lb in pool for _ in range(2)]
            x, fseed = seeded_features((bs, 5), SEED + 600 + 37 * step + 1000 * len(runs))
            xf = x.clone().requires_grad_(True)
            st: Dict[str, Any] = {"step": step, "labels": labels, "features_seed": fseed}
            was_accumulated = miner.is_accumulated
            bank_before_f = None if miner.bank_features is None else miner.bank_features.clone()
            bank_before_l = None if miner.bank_labels is None else miner.bank_labels.clone()
            put(st, "features", xf)
            loss = crit(xf, torch.tensor(labels))
            loss.backward()
            st["used_bank"] = bool(was_accumulated)
            if was_accumulated:
                put(st, "bank_features_before", bank_before_f)
                st["bank_labels_before"] = bank_before_l.tolist()
                st["miner_rows"] = "rows 0..bs-1 = current batch, rows bs.. = bank (in bank slot order)"
            ids = calls[-1]
            st["triplets"] = tri_dict(ids)
            fm = torch.cat([x, bank_before_f]) if was_accumulated else x
            st.update(tri_dists(fm, ids))
            srt = torch.cdist(fm.double(), fm.double())[:bs].sort(dim=1).values
            st["min_anchor_row_distance_gap"] = float((srt[:, 1:] - srt[:, :-1]).min())
            st["loss"] = num(loss)
            put(st, "grad_features", xf.grad)
            st["logs"] = logs_json(crit.last_logs)
            st["ptr_after"] = miner.ptr
            st["is_accumulated_after"] = miner.is_accumulated
            st["bank_labels_after"] = miner.bank_labels.tolist() if was_accumulated or miner.is_accumulated else None
            run["steps"].append(st)
        runs.append(run)
    out["runs"] = runs
    out["note"] = (
        "Deterministic (no RNG). The bank is torch.empty until filled; it is only read once is_accumulated "
        "(set inside the update when ptr + bs >= bank_size), i.e. from step bank_size_in_batches on. "
        "The bank read at a step holds the previous batches (the current batch is written after mining)."
    )
    return out


def triplet_miner_with_memory() -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    bs = 6
    labels_per_step = [[0, 0, 1, 1, 2, 2], [3, 3, 0, 0, 4, 4], [1, 1, 2, 2, 5, 5], [0, 0, 3, 3, 4, 4]]
    runs = []
    for run_name, n_bank, k in [("bank2_k1", 2, 1), ("bank2_k3", 2, 3), ("bank3_k2", 3, 2)]:
        torch.manual_seed(SEED)
        random.seed(SEED)
        np.random.seed(SEED % 2**32)
        miner = TripletMinerWithMemory(bank_size_in_batches=n_bank, tri_expand_k=k)
        crit = TripletLossWithMiner(margin=0.2, miner=miner, reduction="mean", need_logs=True)
        run: Dict[str, Any] = {
            "name": run_name,
            "python": f"TripletLossWithMiner(margin=0.2, miner=TripletMinerWithMemory(bank_size_in_batches={n_bank}, "
            f"tri_expand_k={k}), reduction='mean', need_logs=True)",
            "torch_manual_seed": SEED,
            "python_random_seed": SEED,
            "steps": [],
        }
        # record counts per part by wrapping take_tri_by_mask (called for parts 1, 2, 3 in that order)
        part_counts: List[int] = []
        orig_take = TripletMinerWithMemory.take_tri_by_mask

        def counting_take(ii_a, ii_p, ii_n, mask, _orig=orig_take, _acc=part_counts):
            r = _orig(ii_a, ii_p, ii_n, mask)
            _acc.append(len(r[0]))
            return r

        for step, labels in enumerate(labels_per_step):
            x, fseed = seeded_features((bs, 4), SEED + 700 + 11 * step)
            xf = x.clone().requires_grad_(True)
            part_counts.clear()
            with mock.patch.object(TripletMinerWithMemory, "take_tri_by_mask", staticmethod(counting_take)):
                if miner.bank_features is None:
                    # allocate to show the initial bank (labels -1..-bs, one-hot features) before the first update
                    miner._TripletMinerWithMemory__allocate_if_needed(features=x, labels=torch.tensor(labels))
                    put(run, "bank_features_initial", miner.bank_features)
                    run["bank_labels_initial"] = miner.bank_labels.tolist()
                loss = crit(xf, torch.tensor(labels))
            loss.backward()
            st: Dict[str, Any] = {"step": step, "labels": labels, "features_seed": fseed}
            put(st, "features", xf)
            st["n_part1_batch_triplets"] = part_counts[0]
            st["n_part2_bank_anchor_pos"] = part_counts[1]
            st["n_part3_bank_negative"] = part_counts[2]
            st["loss"] = num(loss)
            st["logs"] = logs_json(crit.last_logs)
            st["ptr_after"] = miner.ptr
            st["bank_labels_after"] = miner.bank_labels.tolist()
            put(st, "bank_features_after", miner.bank_features)
            if k == 1:
                # only part 1 exists: the loss is the mean over ALL in-batch triplets (order random, set fixed)
                np.random.seed(0)
                ref = TripletLossWithMiner(margin=0.2, miner=AllTripletsMiner(), reduction="mean")(
                    x.clone(), torch.tensor(labels)
                )
                st["loss_equals_all_triplets_loss"] = num(ref)
                put(st, "grad_features", xf.grad)
            run["steps"].append(st)
        runs.append(run)
    out["runs"] = runs
    out["deterministic_fields"] = [
        "bank_features_initial",
        "bank_labels_initial",
        "bank_labels_after",
        "bank_features_after",
        "ptr_after",
        "n_part1_batch_triplets",
        "n_part2_bank_anchor_pos while the bank still holds only the negative placeholder labels "
        "(= int(n_part1 * (k - 1) / 2))",
        "for k == 1: loss, grad_features, loss_equals_all_triplets_loss (equal up to float summation order), "
        "logs orig_active_tri / pos_dist_orig / neg_dist_orig / active_tri / pos_dist / neg_dist",
    ]
    out["random_fields"] = [
        "for k > 1: loss, logs, n_part3_bank_negative and (once real labels are in the bank) n_part2; they come "
        "from python random.choice, torch.randperm and torch.randint and are NOT reproducible without "
        "replicating CPython's Mersenne Twister and torch's CPU generator call-by-call"
    ]
    # infinite loop with a bank of 1 batch and tri_expand_k > 1 (placeholder labels are all unique)
    def _alarm(*_):
        raise TimeoutError("did not return within 2 s")

    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(2)
    try:
        m = TripletMinerWithMemory(bank_size_in_batches=1, tri_expand_k=2)
        m.sample(randn((6, 4), SEED + 790), [0, 0, 1, 1, 2, 2])
        res = "returned"
    except TimeoutError as e:
        res = err(e)
    finally:
        signal.alarm(0)
    out["bank1_k2_first_call"] = {
        "python": "TripletMinerWithMemory(bank_size_in_batches=1, tri_expand_k=2).sample(features, [0,0,1,1,2,2])",
        "result": res,
        "why": "get_pos_pairs(lbl2idx_bank, n>0) loops `while len(pairs) < n` over random labels; with one bank "
        "batch every placeholder label -1..-bs is unique so no pair is ever added",
    }
    # batch without any positive pair: n_batch_tri == 0 -> is_original_tri[-0:] = True marks everything original
    torch.manual_seed(SEED)
    random.seed(SEED)
    degenerate: Dict[str, Any] = {}
    for tag, labels in [("no_positive_pair", [0, 1, 2, 3]), ("single_label", [5, 5, 5, 5])]:
        for k in (1, 3):
            torch.manual_seed(SEED)
            random.seed(SEED)
            miner = TripletMinerWithMemory(bank_size_in_batches=2, tri_expand_k=k)
            crit = TripletLossWithMiner(margin=0.2, miner=miner, need_logs=True)
            entry: Dict[str, Any] = {
                "python": f"TripletLossWithMiner(margin=0.2, miner=TripletMinerWithMemory(bank_size_in_batches=2, "
                f"tri_expand_k={k}), need_logs=True)(features, torch.tensor({labels}))"
            }
            try:
                xf = randn((4, 3), SEED + 791).requires_grad_(True)
                loss = crit(xf, torch.tensor(labels))
                entry["loss"] = num(loss)
                entry["loss_is_nan"] = bool(torch.isnan(loss))
                entry["logs"] = logs_json(crit.last_logs)
            except Exception as e:  # noqa
                entry["error"] = err(e)
            degenerate[f"{tag}/k{k}"] = entry
    degenerate["note"] = (
        "no positive pair in the batch: part 3 calls randint(0, 0, size=(0,)), which torch rejects even for an "
        "empty size, for every k. A single-label batch has pairs but no negative: 0 triplets, the loss is the "
        "mean of an empty tensor = NaN (null), logs are NaN too"
    )
    out["degenerate_batches"] = degenerate
    return out


# ----------------------------------------------------------------------------- main


def main() -> None:
    torch.manual_seed(SEED)
    np.random.seed(SEED % 2**32)
    random.seed(SEED)
    data: Dict[str, Any] = {
        "generator": "tests/golden/make_loss_fixtures.py",
        "versions": versions(),
        "seed": SEED,
        "about": "Outputs of Python OML 4.0 losses and miners on small seeded inputs (CPU, float32, 1 torch "
        "thread). Float tensors: base64 of little-endian float32, C order, shape beside. See "
        "tests/golden/loss_semantics.md.",
        "inputs_python": "randn(shape, seed) = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)); "
        "miner/loss batches are re-drawn with seed+1 until no two distances in a row are within 1e-3",
        "triplet_loss_cases": triplet_loss_cases(),
        "triplet_plain_cases": triplet_plain_cases(),
        "triplet_with_miner_cases": triplet_with_miner_cases(),
        "miner_cases": miner_cases(),
        "hard_cluster_cases": hard_cluster_cases(),
        "label_smoothing_cases": label_smoothing_cases(),
        "arcface_cases": arcface_cases(),
        "arcface_mlp_cases": arcface_mlp_cases(),
        "surrogate_precision_cases": surrogate_precision_cases(),
        "miner_with_bank": miner_with_bank(),
        "triplet_miner_with_memory": triplet_miner_with_memory(),
    }
    text = json.dumps(data, indent=1, allow_nan=False)
    # put lists of plain numbers / null / booleans on one line
    text = re.sub(
        r"\[\s*((?:-?[0-9.eE+-]+|null|true|false)(?:,\s*(?:-?[0-9.eE+-]+|null|true|false))*)\s*\]",
        lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]",
        text,
    )
    OUT_PATH.write_text(text + "\n")
    print(f"wrote {OUT_PATH} ({len(text) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
