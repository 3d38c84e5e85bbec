#!/usr/bin/env python3
"""Generate golden fixtures for pytorch-metric-learning (PML) 2.9.0 losses and miners, for the Rust port.

Run (needs a venv with ``pytorch-metric-learning==2.9.0``, torch (CPU is fine), numpy):

    /work/venv/bin/python tests/golden/make_pml_fixtures.py

It writes ``tests/golden/losses_pml.json`` next to this script (about 0.3 MB) in a few seconds, on one torch
thread. Every number in that file is produced by PML itself; this script only builds seeded float32 inputs,
calls PML's classes exactly as written in each case's ``python`` string (it ``eval``s that string), records
what PML returns and serialises it. Two runs give byte-identical output. The semantics behind the numbers
are written up in ``tests/golden/pml_semantics.md``.

What is in the JSON (top level)
-------------------------------
* ``pml_version``, ``torch_version``; also ``generator``, ``seed``, ``torch_num_threads``, ``about``.
* ``loss_cases``: a PML loss called as ``loss_fn(embeddings, labels)`` or, when ``miner`` is not null,
  ``loss_fn(embeddings, labels, miner(embeddings, labels))``. Keys, in order:
  ``name`` (unique), ``batch`` (which input batch, see below), ``loss`` (class name), ``params`` (constructor
  kwargs exactly as passed; distances/reducers are never passed, so PML's defaults are used), ``python`` (the
  constructor call), ``miner`` (null or ``{"miner", "params", "python"}``), ``embeddings_f32_b64`` /
  ``embeddings_shape``, ``labels``, ``value`` (the loss, float32 as a JSON number; null if NaN/inf or on
  error), ``grad_embeddings_f32_b64`` / ``grad_embeddings_shape`` (d value / d embeddings by autograd; zeros
  when the value carries no graph), ``param_name``, for the losses with a learnable tensor also
  ``param_f32_b64`` / ``param_shape`` / ``grad_param_f32_b64`` / ``grad_param_shape``, then (only for loss+miner
  cases) ``mined_indices`` (what the miner returned, PML's order; 3 lists for triplet miners, 4 for pair
  miners), and ``error`` (null, or ``"<ExceptionType>: <message>"``; then value and gradients are null).
* ``miner_cases``: a PML miner alone, ``miner(embeddings, labels)``. Keys: ``name``, ``batch``, ``miner``,
  ``params``, ``python``, ``distance`` (the miner's default distance object, as text), embeddings, ``labels``,
  ``indices`` (3 lists (anchor, positive, negative) for triplet miners, 4 lists (a1, p, a2, n) for pair
  miners, in PML's returned order), then for triplet miners ``ap_dist`` / ``an_dist`` and for pair miners
  ``pos_dist`` / ``neg_dist``: the miner's own distance matrix (``miner.distance(embeddings)``) at each
  returned pair, float32 as JSON numbers, so tie-robust comparisons are possible. For
  ``MultiSimilarityMiner`` the "distance" is ``CosineSimilarity`` (a similarity: larger = closer); for all
  other miners here it is ``LpDistance(normalize_embeddings=True, p=2)``. Last, ``error``.

Learnable parameters (PML's own layout; checked in the sources and asserted below)
------------------------------------------------------------------------------------
* ``ProxyAnchorLoss.proxies``: ``[num_classes, embedding_size]`` (row c = proxy of class c).
  Set to ``randn([C, D], seed) * sqrt(2 / C)`` (the std of PML's default kaiming_normal_(mode="fan_out")).
* ``CosFaceLoss.W``: ``[embedding_size, num_classes]`` (column c = class c). Set to ``randn([D, C], seed)``
  (std 1, as PML's default ``normal_``).
* ``SubCenterArcFaceLoss.W``: ``[embedding_size, num_classes * sub_centers]``; column ``c * sub_centers + k``
  is sub-center k of class c. Set to ``randn([D, C*K], seed)``.
The parameter is overwritten (``param.data.copy_``) after construction and before the call, so PML's random
init does not matter. The stored gradient is ``param.grad`` after ``value.backward()``.

Input batches (shared by all losses / miners; ``embeddings_shape`` [B, 6], float32)
---------------------------------------------------------------------------------
``randn(shape, seed) = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))``. Each batch is
re-drawn with seed+1 until, on the L2-normalised rows (float64), no off-diagonal distance is within 1e-4 of
a threshold used here (0.1, 0.2, 0.3, 0.6, 0.8, 1.0, 1.1, 1.4), no two distances in a row are within 1e-4
of each other or of a difference of +-0.2, and no two cosine similarities in a row differ by 0.1 or 0.5
+-1e-4. So no comparison that PML makes is a near-tie, except the exact ties built in on purpose:
* ``random``: 12 rows, 4 labels x 3, shuffled.
* ``ties``: 12 rows built from 9 distinct rows; rows 0/4 are equal with the same label, rows 1/10 and 3/7 are
  equal with different labels (exact distance-0 pairs, exact equal distances in every row).
* ``one_label``: 8 rows, all label 1.
* ``singletons``: 10 rows, labels 0 and 1 have 3 rows, labels 2, 3, 4, 5 one row each.
* ``absent_classes``: 10 rows, labels in {1, 4, 6}, used with num_classes=9 (classification losses only).
* ``two_rows``: 2 rows with labels 0 and 1 and normalised distance < 0.8 (pair losses only).
* ``single_semihard_triplet``: 3 rows, labels [0, 0, 1], drawn until TripletMarginMiner(margin=0.2,
  type_of_triplets="semihard") finds exactly one triplet.
* ``far_from_target`` (SubCenterArcFaceLoss only): 8 rows, labels [0, 0, 1, 1, 2, 2, 3, 3], W with the
  sub-centers of each class within 0.05 of each other, rows 0, 2, 4, 6 = -(first sub-center of their class)
  + 0.1 noise, so their target angle is beyond pi - margin (ArcFace's ``cos(theta) - m sin(m)`` branch).
* ``tied_subcenters`` cases use the ``random`` / ``ties`` batches with W columns ``c*3 + 1`` set equal to
  ``c*3`` (a tie in the max over sub-centers: the gradient goes to the first one only).
Classification losses use num_classes=7 and embedding_size=6 (9 for ``absent_classes``), except the
out-of-range error cases.
"""

import base64
import json
import math
import random
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import pytorch_metric_learning
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

torch.set_num_threads(1)

SEED = 20250605
OUT_PATH = Path(__file__).resolve().parent / "losses_pml.json"
DIM = 6
NUM_CLASSES = 7
GAP = 1e-4
DIST_THRESHOLDS = (0.1, 0.2, 0.3, 0.6, 0.8, 1.0, 1.1, 1.4)
DIST_DIFFS = (0.0, 0.2, -0.2)
SIM_DIFFS = (0.1, -0.1, 0.5, -0.5)

LOSS_NAMES = [
    "ContrastiveLoss",
    "MultiSimilarityLoss",
    "ProxyAnchorLoss",
    "SupConLoss",
    "NTXentLoss",
    "CosFaceLoss",
    "SubCenterArcFaceLoss",
]
MINER_NAMES = ["BatchHardMiner", "BatchEasyHardMiner", "TripletMarginMiner", "MultiSimilarityMiner"]
TRIPLET_MINERS = {"BatchHardMiner", "TripletMarginMiner"}
CLASSIFICATION = {"ProxyAnchorLoss", "CosFaceLoss", "SubCenterArcFaceLoss"}

NAMESPACE: Dict[str, Any] = {n: getattr(pml_losses, n) for n in LOSS_NAMES}
NAMESPACE.update({n: getattr(pml_miners, n) for n in MINER_NAMES})

STRATEGY_CONST = {"hard": "HARD", "semihard": "SEMIHARD", "easy": "EASY", "all": "ALL"}

# ----------------------------------------------------------------------------- helpers


def b64(t: torch.Tensor) -> str:
    arr = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
    return base64.b64encode(arr.tobytes()).decode("ascii")


def put(d: Dict[str, Any], name: str, t: Optional[torch.Tensor], shape: Optional[Sequence[int]] = None) -> None:
    """Stores a float tensor as ``name_f32_b64`` + ``name_shape`` (both null when ``t`` is None)."""
    if t is None:
        d[f"{name}_f32_b64"] = None
        d[f"{name}_shape"] = list(shape) if shape is not None else None
        return
    d[f"{name}_f32_b64"] = b64(t)
    d[f"{name}_shape"] = list(t.shape)


def num(x: Any) -> Optional[float]:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().item()
    x = float(np.float32(x))
    return None if math.isnan(x) or math.isinf(x) else x


def err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def randn(shape: Sequence[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def ints(t: Any) -> List[int]:
    return [int(v) for v in t]


def py_value(cls: str, key: str, v: Any) -> str:
    if key in ("pos_strategy", "neg_strategy"):
        return f"{cls}.{STRATEGY_CONST[v]}"
    if isinstance(v, list):
        return "(" + ", ".join(repr(x) for x in v) + ")"
    return repr(v)


def call_str(cls: str, params: Dict[str, Any]) -> str:
    return f"{cls}(" + ", ".join(f"{k}={py_value(cls, k, v)}" for k, v in params.items()) + ")"


def build(python: str) -> Any:
    return eval(python, dict(NAMESPACE))  # noqa: S307 - our own strings only


def describe_distance(dist: Any) -> str:
    return f"{type(dist).__name__}(normalize_embeddings={dist.normalize_embeddings}, p={dist.p}, power={dist.power})"


# ----------------------------------------------------------------------------- batches


def is_safe(x: torch.Tensor) -> bool:
    """No near-ties (see the module docstring); exact ties between duplicated rows are allowed."""
    n = torch.nn.functional.normalize(x.double(), dim=1)
    d = torch.cdist(n, n)
    s = n @ n.T
    b = x.shape[0]
    off = ~torch.eye(b, dtype=torch.bool)
    dv = d[off]
    for c in DIST_THRESHOLDS:
        if bool(((dv - c).abs() < GAP).any()):
            return False
    pair_off = ~torch.eye(b - 1, dtype=torch.bool)
    for i in range(b):
        idx = [j for j in range(b) if j != i]
        di, si = d[i, idx], s[i, idx]
        dd = di[:, None] - di[None, :]
        sd = si[:, None] - si[None, :]
        exact = dd == 0
        for c in DIST_DIFFS:
            bad = ((dd - c).abs() < GAP) & pair_off
            if c == 0.0:
                bad &= ~exact
            if bool(bad.any()):
                return False
        for c in SIM_DIFFS:
            if bool((((sd - c).abs() < GAP) & pair_off).any()):
                return False
    return True


def draw(make: Callable[[int], torch.Tensor], seed: int, extra: Optional[Callable[[torch.Tensor], bool]] = None):
    while True:
        x = make(seed)
        if is_safe(x) and (extra is None or extra(x)):
            return x, seed
        seed += 1


TIE_SRC = [0, 5, 1, 2, 0, 3, 4, 2, 6, 7, 5, 8]
TIE_LABELS = [0, 2, 0, 1, 0, 1, 2, 2, 0, 1, 1, 2]
SINGLETON_LABELS = [0, 1, 0, 2, 3, 1, 0, 4, 1, 5]
ABSENT_LABELS = [4, 1, 6, 1, 4, 6, 4, 1, 6, 6]
ABSENT_NUM_CLASSES = 9


def one_semihard_triplet(x: torch.Tensor) -> bool:
    miner = pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
    a, _, _ = miner(x, torch.tensor([0, 0, 1]))
    return len(a) == 1


def close_pair(x: torch.Tensor) -> bool:
    n = torch.nn.functional.normalize(x.double(), dim=1)
    return float((n[0] - n[1]).norm()) < 0.8


def make_batches() -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}

    def add(name: str, x: torch.Tensor, seed: int, labels: List[int], note: str) -> None:
        out[name] = {"x": x, "seed": seed, "labels": labels, "note": note}

    rnd_labels = [lb for lb in range(4) for _ in range(3)]
    random.Random(SEED).shuffle(rnd_labels)
    x, s = draw(lambda sd: randn((12, DIM), sd), SEED + 100)
    add("random", x, s, rnd_labels, "randn((12, 6), seed); 4 labels x 3, shuffled")
    x, s = draw(lambda sd: randn((9, DIM), sd)[TIE_SRC], SEED + 200)
    add("ties", x, s, TIE_LABELS, f"randn((9, 6), seed)[{TIE_SRC}]")
    x, s = draw(lambda sd: randn((8, DIM), sd), SEED + 300)
    add("one_label", x, s, [1] * 8, "randn((8, 6), seed); all label 1")
    x, s = draw(lambda sd: randn((10, DIM), sd), SEED + 400)
    add("singletons", x, s, SINGLETON_LABELS, "randn((10, 6), seed); labels 2..5 have one row")
    x, s = draw(lambda sd: randn((10, DIM), sd), SEED + 500)
    add("absent_classes", x, s, ABSENT_LABELS, "randn((10, 6), seed); labels in {1, 4, 6}, num_classes 9")
    x, s = draw(lambda sd: randn((2, DIM), sd), SEED + 600, close_pair)
    add("two_rows", x, s, [0, 1], "randn((2, 6), seed); labels [0, 1]; normalised distance < 0.8")
    x, s = draw(lambda sd: randn((3, DIM), sd), SEED + 700, one_semihard_triplet)
    add("single_semihard_triplet", x, s, [0, 0, 1], "randn((3, 6), seed); exactly one semihard triplet")
    return out


# ----------------------------------------------------------------------------- loss cases

LOSS_SETTINGS: Dict[str, List[Tuple[str, Dict[str, Any]]]] = {
    "ContrastiveLoss": [("default", {}), ("pos0.1_neg0.8", {"pos_margin": 0.1, "neg_margin": 0.8})],
    "MultiSimilarityLoss": [("default", {}), ("a1_b20_base0.3", {"alpha": 1, "beta": 20, "base": 0.3})],
    "ProxyAnchorLoss": [("default", {}), ("m0.2_a16", {"margin": 0.2, "alpha": 16})],
    "SupConLoss": [("default", {}), ("t0.5", {"temperature": 0.5})],
    "NTXentLoss": [("default", {}), ("t0.2", {"temperature": 0.2})],
    "CosFaceLoss": [("default", {}), ("m0.2_s16", {"margin": 0.2, "scale": 16})],
    "SubCenterArcFaceLoss": [("default", {}), ("k2_m20_s30", {"sub_centers": 2, "margin": 20, "scale": 30})],
}
PAIR_LOSS_BATCHES = ["random", "ties", "one_label", "singletons", "two_rows"]
CLASS_LOSS_BATCHES = ["random", "ties", "one_label", "singletons", "absent_classes"]


def param_tensor(loss_name: str, params: Dict[str, Any], seed: int) -> Tuple[str, torch.Tensor]:
    c, d = params["num_classes"], params["embedding_size"]
    if loss_name == "ProxyAnchorLoss":
        return "proxies", randn((c, d), seed) * np.float32(math.sqrt(2.0 / c))
    k = params.get("sub_centers", 3) if loss_name == "SubCenterArcFaceLoss" else 1
    return "W", randn((d, c * k), seed)


def run_loss(
    name: str,
    batch_name: str,
    batch: Dict[str, Any],
    loss_name: str,
    params: Dict[str, Any],
    param_seed: int,
    miner: Optional[Tuple[str, Dict[str, Any]]] = None,
    labels: Optional[List[int]] = None,
    param_edit: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> Dict[str, Any]:
    labels = batch["labels"] if labels is None else labels
    python = call_str(loss_name, params)
    case: Dict[str, Any] = {"name": name, "batch": batch_name, "loss": loss_name, "params": params, "python": python}
    miner_python = None
    if miner is None:
        case["miner"] = None
    else:
        miner_python = call_str(miner[0], miner[1])
        case["miner"] = {"miner": miner[0], "params": miner[1], "python": miner_python}
    x0: torch.Tensor = batch["x"]
    put(case, "embeddings", x0)
    case["labels"] = list(labels)
    case["value"] = None
    put(case, "grad_embeddings", None, x0.shape)
    case["param_name"] = None
    has_param = loss_name in CLASSIFICATION
    param0 = None
    if has_param:
        pname, param0 = param_tensor(loss_name, params, param_seed)
        if param_edit is not None:
            param0 = param_edit(param0)
        case["param_name"] = pname
        put(case, "param", param0)
        put(case, "grad_param", None, param0.shape)
    mined: Optional[List[List[int]]] = None
    try:
        torch.manual_seed(SEED)  # PML's own init is overwritten below; this just pins it
        loss_fn = build(python)
        if has_param:
            p = getattr(loss_fn, case["param_name"])
            assert list(p.shape) == list(param0.shape), (p.shape, param0.shape)
            with torch.no_grad():
                p.data.copy_(param0)
        x = x0.clone().requires_grad_(True)
        lab = torch.tensor(labels, dtype=torch.long)
        if miner_python is not None:
            miner_fn = build(miner_python)
            indices_tuple = miner_fn(x, lab)
            mined = [ints(t) for t in indices_tuple]
            value = loss_fn(x, lab, indices_tuple)
        else:
            value = loss_fn(x, lab)
        assert isinstance(value, torch.Tensor) and value.ndim == 0 and value.dtype == torch.float32
        if value.requires_grad:
            value.backward()
        case["value"] = num(value)
        put(case, "grad_embeddings", x.grad if x.grad is not None else torch.zeros_like(x))
        if has_param:
            p = getattr(loss_fn, case["param_name"])
            put(case, "grad_param", p.grad if p.grad is not None else torch.zeros_like(p))
        error = None
    except Exception as e:  # noqa: BLE001
        error = err(e)
    if miner is not None:
        case["mined_indices"] = mined
    case["error"] = error
    return case


def loss_cases(batches: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    cases: List[Dict[str, Any]] = []
    pseed = SEED + 10_000
    for loss_name in LOSS_NAMES:
        cls = loss_name in CLASSIFICATION
        for tag, extra in LOSS_SETTINGS[loss_name]:
            for bname in CLASS_LOSS_BATCHES if cls else PAIR_LOSS_BATCHES:
                params: Dict[str, Any] = {}
                if cls:
                    nc = ABSENT_NUM_CLASSES if bname == "absent_classes" else NUM_CLASSES
                    params = {"num_classes": nc, "embedding_size": DIM}
                params.update(extra)
                pseed += 1
                cases.append(run_loss(f"{loss_name}/{tag}/{bname}", bname, batches[bname], loss_name, params, pseed))

    # ---- loss + miner
    combos = [
        ("MultiSimilarityLoss", {}, "MultiSimilarityMiner", {"epsilon": 0.1}),
        ("ContrastiveLoss", {}, "BatchHardMiner", {}),
        ("ContrastiveLoss", {}, "TripletMarginMiner", {"margin": 0.2, "type_of_triplets": "semihard"}),
        ("SupConLoss", {}, "MultiSimilarityMiner", {}),
        ("NTXentLoss", {}, "BatchEasyHardMiner", {}),
    ]
    for loss_name, lp, miner_name, mp in combos:
        mtag = call_str(miner_name, mp).replace(" ", "")
        bnames = ["random", "ties", "one_label", "singletons"]
        if miner_name == "TripletMarginMiner":
            bnames.append("single_semihard_triplet")
        for bname in bnames:
            cases.append(
                run_loss(
                    f"{loss_name}+{mtag}/{bname}", bname, batches[bname], loss_name, lp, 0, miner=(miner_name, mp)
                )
            )
    # BatchHardMiner on 3 rows gives 2 triplets (anchors 0 and 1), so the loss is not forced to 0
    cases.append(
        run_loss(
            "ContrastiveLoss+BatchHardMiner()/single_semihard_triplet",
            "single_semihard_triplet",
            batches["single_semihard_triplet"],
            "ContrastiveLoss",
            {},
            0,
            miner=("BatchHardMiner", {}),
        )
    )

    # ---- SubCenterArcFace with two identical sub-centers per class (tie in the max over sub-centers)
    def dup_centers(w: torch.Tensor) -> torch.Tensor:
        w = w.clone()
        w[:, 1::3] = w[:, 0::3]
        return w

    for bname in ["random", "ties"]:
        pseed += 1
        cases.append(
            run_loss(
                f"SubCenterArcFaceLoss/default/tied_subcenters/{bname}",
                bname,
                batches[bname],
                "SubCenterArcFaceLoss",
                {"num_classes": NUM_CLASSES, "embedding_size": DIM},
                pseed,
                param_edit=dup_centers,
            )
        )

    # ---- SubCenterArcFace where some targets are beyond pi - margin (the "cos(theta) - m sin(m)" branch):
    # the sub-centers of a class are close together and rows 0, 2, 4, 6 point away from their class
    for tag, extra in LOSS_SETTINGS["SubCenterArcFaceLoss"]:
        params = {"num_classes": NUM_CLASSES, "embedding_size": DIM}
        params.update(extra)
        k = params.get("sub_centers", 3)
        pseed += 1
        _, w = param_tensor("SubCenterArcFaceLoss", params, pseed)
        for c in range(NUM_CLASSES):
            w[:, c * k : (c + 1) * k] = w[:, c * k : c * k + 1] + np.float32(0.05) * randn((DIM, k), pseed + 100 + c)
        far_labels = [0, 0, 1, 1, 2, 2, 3, 3]
        xf = randn((8, DIM), pseed + 200)
        for i in range(0, 8, 2):
            xf[i] = -w[:, far_labels[i] * k] + np.float32(0.1) * randn((DIM,), pseed + 300 + i)
        far = {"x": xf, "seed": pseed + 200, "labels": far_labels, "note": "see make_pml_fixtures.py"}
        cases.append(
            run_loss(
                f"SubCenterArcFaceLoss/{tag}/far_from_target",
                "far_from_target",
                far,
                "SubCenterArcFaceLoss",
                params,
                pseed,
                param_edit=lambda _w, w=w: w.clone(),
            )
        )

    # ---- errors: label >= num_classes
    bad_labels = list(batches["random"]["labels"])
    bad_labels[5] = NUM_CLASSES
    for loss_name in ["ProxyAnchorLoss", "CosFaceLoss", "SubCenterArcFaceLoss"]:
        pseed += 1
        cases.append(
            run_loss(
                f"{loss_name}/default/label_out_of_range",
                "random",
                batches["random"],
                loss_name,
                {"num_classes": NUM_CLASSES, "embedding_size": DIM},
                pseed,
                labels=bad_labels,
            )
        )
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names))
    return cases


# ----------------------------------------------------------------------------- miner cases

MINER_SETTINGS: List[Tuple[str, str, Dict[str, Any]]] = [
    ("BatchHardMiner", "default", {}),
    ("BatchEasyHardMiner", "default", {}),
    ("BatchEasyHardMiner", "hard_hard", {"pos_strategy": "hard", "neg_strategy": "hard"}),
    ("BatchEasyHardMiner", "all_all", {"pos_strategy": "all", "neg_strategy": "all"}),
    ("BatchEasyHardMiner", "semihard_hard", {"pos_strategy": "semihard", "neg_strategy": "hard"}),
    ("BatchEasyHardMiner", "easy_easy", {"pos_strategy": "easy", "neg_strategy": "easy"}),
    ("BatchEasyHardMiner", "all_hard", {"pos_strategy": "all", "neg_strategy": "hard"}),
    ("BatchEasyHardMiner", "hard_all", {"pos_strategy": "hard", "neg_strategy": "all"}),
    ("BatchEasyHardMiner", "ranges", {"allowed_pos_range": [0.3, 1.1], "allowed_neg_range": [0.6, 1.4]}),
    (
        "BatchEasyHardMiner",
        "hard_hard_ranges",
        {"pos_strategy": "hard", "neg_strategy": "hard", "allowed_pos_range": [0.3, 1.1], "allowed_neg_range": [0.6, 1.4]},
    ),
    ("TripletMarginMiner", "m0.2_all", {"margin": 0.2, "type_of_triplets": "all"}),
    ("TripletMarginMiner", "m0.2_hard", {"margin": 0.2, "type_of_triplets": "hard"}),
    ("TripletMarginMiner", "m0.2_semihard", {"margin": 0.2, "type_of_triplets": "semihard"}),
    ("TripletMarginMiner", "m0.2_easy", {"margin": 0.2, "type_of_triplets": "easy"}),
    ("MultiSimilarityMiner", "eps0.1", {"epsilon": 0.1}),
    ("MultiSimilarityMiner", "eps0.5", {"epsilon": 0.5}),
]
MINER_BATCHES = ["random", "ties", "one_label", "singletons"]
MINER_ERRORS: List[Tuple[str, str, Dict[str, Any]]] = [
    ("BatchEasyHardMiner", "semihard_semihard", {"pos_strategy": "semihard", "neg_strategy": "semihard"}),
    ("BatchEasyHardMiner", "all_semihard", {"pos_strategy": "all", "neg_strategy": "semihard"}),
]


def run_miner(name: str, bname: str, batch: Dict[str, Any], miner_name: str, params: Dict[str, Any]) -> Dict[str, Any]:
    python = call_str(miner_name, params)
    case: Dict[str, Any] = {"name": name, "batch": bname, "miner": miner_name, "params": params, "python": python}
    case["distance"] = None
    x: torch.Tensor = batch["x"]
    put(case, "embeddings", x)
    case["labels"] = list(batch["labels"])
    case["indices"] = None
    triplet = miner_name in TRIPLET_MINERS
    k1, k2 = ("ap_dist", "an_dist") if triplet else ("pos_dist", "neg_dist")
    case[k1] = None
    case[k2] = None
    try:
        miner = build(python)
        case["distance"] = describe_distance(miner.distance)
        out = miner(x.clone(), torch.tensor(batch["labels"], dtype=torch.long))
        assert len(out) == (3 if triplet else 4)
        with torch.no_grad():
            mat = miner.distance(x.clone())
        idx = [ints(t) for t in out]
        case["indices"] = idx
        if triplet:
            a, p, n = idx
            case[k1] = [num(mat[i, j]) for i, j in zip(a, p)]
            case[k2] = [num(mat[i, j]) for i, j in zip(a, n)]
        else:
            a1, p, a2, n = idx
            case[k1] = [num(mat[i, j]) for i, j in zip(a1, p)]
            case[k2] = [num(mat[i, j]) for i, j in zip(a2, n)]
        error = None
    except Exception as e:  # noqa: BLE001
        error = err(e)
    case["error"] = error
    return case


def miner_cases(batches: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    cases = []
    for miner_name, tag, params in MINER_SETTINGS:
        for bname in MINER_BATCHES:
            cases.append(run_miner(f"{miner_name}/{tag}/{bname}", bname, batches[bname], miner_name, params))
    cases.append(
        run_miner(
            "TripletMarginMiner/m0.2_semihard/single_semihard_triplet",
            "single_semihard_triplet",
            batches["single_semihard_triplet"],
            "TripletMarginMiner",
            {"margin": 0.2, "type_of_triplets": "semihard"},
        )
    )
    for miner_name, tag, params in MINER_ERRORS:
        cases.append(run_miner(f"{miner_name}/{tag}/random", "random", batches["random"], miner_name, params))
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names))
    return cases


# ----------------------------------------------------------------------------- main


def main() -> None:
    torch.manual_seed(SEED)
    np.random.seed(SEED % 2**32)
    random.seed(SEED)
    batches = make_batches()
    data: Dict[str, Any] = {
        "pml_version": pytorch_metric_learning.__version__,
        "torch_version": torch.__version__,
        "generator": "tests/golden/make_pml_fixtures.py",
        "seed": SEED,
        "torch_num_threads": torch.get_num_threads(),
        "about": "Outputs of pytorch-metric-learning losses and miners on small seeded float32 inputs (CPU, one "
        "torch thread). Float tensors: base64 of little-endian float32, C order, shape beside. Batch seeds: "
        + ", ".join(f"{k}={v['seed']} ({v['note']})" for k, v in batches.items())
        + ". See tests/golden/pml_semantics.md.",
        "loss_cases": loss_cases(batches),
        "miner_cases": miner_cases(batches),
    }
    text = json.dumps(data, indent=1, allow_nan=False)
    # put lists of plain numbers / null / booleans on one line
    text = re.sub(
        r"\[\s*((?:-?[0-9.eE+-]+|null|true|false)(?:,\s*(?:-?[0-9.eE+-]+|null|true|false))*)\s*\]",
        lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]",
        text,
    )
    OUT_PATH.write_text(text + "\n")
    n_loss, n_miner = len(data["loss_cases"]), len(data["miner_cases"])
    print(f"wrote {OUT_PATH} ({len(text) / 1024:.0f} KiB, {n_loss} loss cases, {n_miner} miner cases)")


if __name__ == "__main__":
    main()
