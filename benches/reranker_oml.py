#!/usr/bin/env python3
"""Python OML 4.0's pairwise re-ranker, trained on the glyphs data with our first-stage model.

The Python side of the side-by-side benchmark for ``oml train-postprocessor``: the same CSV, the same
first-stage weights and the same settings as the Rust run, put through Python OML's own classes, so the
two re-rankers can be reported next to each other.

What it does
------------
1. Reads an OML-format CSV (``label, path, split, is_query, is_gallery, category``; paths relative to the
   CSV's folder) with OML's ``get_retrieval_images_datasets``, as OML's ``train_postprocessor`` pipeline
   does (train labels remapped by OML, validation rows as a query/gallery dataset). Images are read with
   OML's Pillow reader (converted to RGB) and go through ``Resize((32, 32))`` (bilinear, antialias),
   ``ToTensor`` and ImageNet ``Normalize``; the re-ranker's training images get the same, no augmentation.
2. First stage: a torchvision BasicBlock ResNet with layers ``[1, 1, 1, 1]`` and widths 32/64/128/256 (the
   ``glyph_resnet10`` of the Rust demo), its weights read from a safetensors file with torchvision's key
   names, inside OML's ``ResnetExtractor(arch="resnet18", gem_p=None, remove_fc=True,
   normalise_features=True)`` -> 256-d unit embeddings. It embeds the train and validation rows once
   (``oml.inference.inference``, eval mode).
3. "before": ``RetrievalResults.from_embeddings(emb_val, val_dataset, n_items=5)`` and
   ``calc_retrieval_metrics_rr`` (cmc@1, cmc@5, precision@5, map@5).
4. Re-ranker: ``ConcatSiamese(ResnetExtractor(same weights, normalise_features=False), mlp_hidden_dims=[64],
   use_tta=False)``, trained exactly as OML's ``PairwiseModule.training_step``: batches of
   ``BalanceSampler(train labels, n_labels=16, n_instances=4)`` (seed 0 through OML's
   ``set_global_seed``); the batch's first-stage embeddings (the dataset's ``extra_data``, as
   ``train_postprocessor`` sets them) go to ``PairsMiner(hard_mining=True)``; the loss is
   ``BCEWithLogitsLoss`` of ``model(x1, x2)`` against "the labels differ"; ``AdamW(lr=3e-4)`` with torch's
   other defaults; ``model.train()``; 30 epochs (one epoch = one pass of the sampler, 200 train labels //
   16 = 12 batches). Lightning is not used: the loop below is what the Trainer runs for that module
   (no scheduler, no gradient clipping, fp32, one device).
5. "after": ``PairwiseReranker(top_n=5, model, num_workers=0, batch_size=256).process(rr_before,
   val_dataset)`` (model in eval mode) and the same metrics.

How to run it
-------------
From the repository root, with the venv that has open-metric-learning 4.0, torch, torchvision, safetensors
and pandas (CPU is enough: about 45 s on 2 idle threads, 32 s of it training; with another job on the same
cores it took 11 minutes, so time it on a quiet machine)::

    /work/venv/bin/python benches/reranker_oml.py [CSV] [WEIGHTS] [OUT_JSON] \\
        [--epochs 30] [--threads 2] [--n-items 5] [--top-n 5]

CSV defaults to ``/tmp/tmp.8PEu61FuoM/glyphs/df.csv`` and WEIGHTS to
``/tmp/tmp.8PEu61FuoM/run/last.safetensors`` (what ``oml demo`` wrote); OUT_JSON to
``runs/reranker_oml.json``.

What it prints
--------------
The dataset sizes, the first stage's metrics, the loss every 60 steps (``step N epoch E loss L``), the
re-ranked metrics, and a last line::

    OML: cmc@1 X -> Y, cmc@5 X -> Y, map@5 X -> Y (N steps, T s)

where T is the training time in seconds. The JSON holds ``before`` / ``after`` metrics, ``steps``,
``epochs``, ``train_seconds``, ``total_seconds``, the settings, the losses and the versions (torch, OML,
torchvision, python).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.models import resnet as tv_resnet

import oml
from oml.const import EMBEDDINGS_KEY, MEAN, STD
from oml.datasets.images import (
    ImageLabeledDataset,
    ImageQueryGalleryLabeledDataset,
    get_retrieval_images_datasets,
)
from oml.inference import inference
from oml.metrics.embeddings import calc_retrieval_metrics_rr
from oml.miners.pairs import PairsMiner
from oml.models.meta.siamese import ConcatSiamese
from oml.models.resnet.extractor import ResnetExtractor
from oml.retrieval.postprocessors.pairwise import PairwiseReranker
from oml.retrieval.retrieval_results import RetrievalResults
from oml.samplers.balance import BalanceSampler
from oml.utils.misc import set_global_seed

DEFAULT_CSV = "/tmp/tmp.8PEu61FuoM/glyphs/df.csv"
DEFAULT_WEIGHTS = "/tmp/tmp.8PEu61FuoM/run/last.safetensors"
DEFAULT_OUT = "runs/reranker_oml.json"

# the settings of the Rust run (oml/configs/glyphs_postprocessor.yaml and the demo's first stage)
SEED = 0
IMAGE_SIZE = 32
WIDTHS = (32, 64, 128, 256)
LAYERS = [1, 1, 1, 1]
N_LABELS = 16
N_INSTANCES = 4
LR = 3e-4
MLP_HIDDEN = [64]
BATCH_SIZE_INFERENCE = 256
LOG_EVERY = 60
CMC_K = (1, 5)
PRECISION_K = (5,)
MAP_K = (5,)


class GlyphResNet(tv_resnet.ResNet):
    """torchvision's ResNet with its own stage widths; same blocks, ``_make_layer`` and ``forward``.

    torchvision's ``ResNet.__init__`` fixes the widths at 64/128/256/512; this constructor takes its
    steps with ``widths`` instead, so the module names (and state-dict keys) are torchvision's:
    ``conv1, bn1, layerS.B.{conv1,bn1,conv2,bn2}, layerS.0.downsample.{0,1}``. There is no classifier:
    ``fc`` is an identity, so ``forward`` ends with the global average pool and the flatten.
    """

    def __init__(self, block, layers: List[int], widths=WIDTHS) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()


def load_backbone(weights: Path) -> GlyphResNet:
    net = GlyphResNet(tv_resnet.BasicBlock, LAYERS)
    state = load_file(str(weights))
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected, f"unexpected keys in {weights}: {unexpected}"
    # The file has no BatchNorm counters (they only matter with momentum=None, which is not used).
    # Recent torch fills an absent num_batches_tracked itself and does not report it as missing;
    # older versions list it: either way nothing else may be missing.
    not_counters = [k for k in missing if not k.endswith(".num_batches_tracked")]
    assert not not_counters, f"missing keys in {weights}: {not_counters}"
    loaded = net.state_dict()
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    return net


def make_extractor(weights: Path, normalise: bool) -> ResnetExtractor:
    extractor = ResnetExtractor(
        weights=None, arch="resnet18", gem_p=None, remove_fc=True, normalise_features=normalise
    )
    extractor.model = load_backbone(weights)
    assert extractor.feat_dim == WIDTHS[-1], extractor.feat_dim
    return extractor


def metrics(rr: RetrievalResults) -> Dict[str, float]:
    m = calc_retrieval_metrics_rr(
        rr, cmc_top_k=CMC_K, precision_top_k=PRECISION_K, map_top_k=MAP_K, reduce=True, verbose=False
    )
    out = {}
    for name, by_k in m.items():
        for k, v in by_k.items():
            out[f"{name}@{k}"] = float(v)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="?", default=DEFAULT_CSV)
    parser.add_argument("weights", nargs="?", default=DEFAULT_WEIGHTS)
    parser.add_argument("out", nargs="?", default=DEFAULT_OUT)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-items", type=int, default=5, help="first-stage results per query")
    parser.add_argument("--top-n", type=int, default=5, help="results re-ranked per query")
    args = parser.parse_args()

    # two known, harmless warnings from OML's own code: autocast on a CPU-only torch, and the hard miner's
    # torch.tensor(labels) on a tensor
    warnings.filterwarnings("ignore", message="CUDA is not available or torch_xla is imported")
    warnings.filterwarnings("ignore", message="To copy construct from a tensor")

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    set_global_seed(SEED)

    csv = Path(args.csv).resolve()
    weights = Path(args.weights)
    transform = T.Compose(
        [
            T.Resize((IMAGE_SIZE, IMAGE_SIZE), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.ToTensor(),
            T.Normalize(mean=MEAN, std=STD),
        ]
    )

    # ---- data, as train_postprocessor's get_loaders_with_embeddings
    train_extraction, val_dataset = get_retrieval_images_datasets(
        dataset_root=csv.parent,
        dataframe_name=csv.name,
        transforms_train=transform,
        transforms_val=transform,
        verbose=False,
    )
    n_train, n_val = len(train_extraction), len(val_dataset)
    n_q, n_g = len(val_dataset.get_query_ids()), len(val_dataset.get_gallery_ids())
    print(f"data: {n_train} train rows ({len(set(train_extraction.get_labels()))} labels), {n_val} validation "
          f"rows ({n_q} queries, {n_g} gallery)", flush=True)

    # ---- first stage
    first = make_extractor(weights, normalise=True)
    first.eval()
    with torch.no_grad():
        probe = first(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert probe.shape == (2, WIDTHS[-1]), probe.shape

    t0 = time.perf_counter()
    kw = dict(model=first, num_workers=0, batch_size=BATCH_SIZE_INFERENCE, verbose=False)
    emb_train = inference(dataset=train_extraction, **kw)
    emb_val = inference(dataset=val_dataset, **kw)
    embed_s = time.perf_counter() - t0
    print(f"first stage: embedded {n_train} + {n_val} images in {embed_s:.1f} s -> {tuple(emb_val.shape[1:])}",
          flush=True)

    rr_before = RetrievalResults.from_embeddings(emb_val, val_dataset, n_items=args.n_items)
    before = metrics(rr_before)
    print("before: " + ", ".join(f"{k} {v:.4f}" for k, v in before.items()), flush=True)

    train_dataset = ImageLabeledDataset(
        df=train_extraction.df,
        dataset_root=csv.parent,
        transform=transform,
        extra_data={EMBEDDINGS_KEY: emb_train},
    )
    sampler = BalanceSampler(train_dataset.get_labels().tolist(), n_labels=N_LABELS, n_instances=N_INSTANCES)
    loader_train = DataLoader(batch_sampler=sampler, dataset=train_dataset, num_workers=0)
    images_key, labels_key = train_dataset.input_tensors_key, train_dataset.labels_key

    # ---- re-ranker, as PairwiseModule.training_step under Lightning's automatic optimisation
    model = ConcatSiamese(extractor=make_extractor(weights, normalise=False), mlp_hidden_dims=MLP_HIDDEN,
                          use_tta=False)
    criterion = nn.BCEWithLogitsLoss()
    miner = PairsMiner(hard_mining=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)

    losses: List[float] = []
    pairs_per_step: List[int] = []
    step = 0
    model.train()
    t_train = time.perf_counter()
    for epoch in range(args.epochs):
        for batch in loader_train:
            ids1, ids2, is_negative = miner.sample(features=batch[EMBEDDINGS_KEY], labels=batch[labels_key])
            x1 = batch[images_key][ids1]
            x2 = batch[images_key][ids2]
            target = is_negative.float()
            predictions = model(x1=x1, x2=x2)
            loss = criterion(predictions, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.item()))
            pairs_per_step.append(len(ids1))
            if step % LOG_EVERY == 0:
                print(f"step {step} epoch {epoch} loss {losses[-1]:.4f} "
                      f"({time.perf_counter() - t_train:.1f} s)", flush=True)
    train_s = time.perf_counter() - t_train

    # ---- after
    model.eval()
    t0 = time.perf_counter()
    reranker = PairwiseReranker(top_n=args.top_n, pairwise_model=model, num_workers=0,
                                batch_size=BATCH_SIZE_INFERENCE)
    rr_after = reranker.process(rr_before, val_dataset)
    rerank_s = time.perf_counter() - t0
    after = metrics(rr_after)
    print("after:  " + ", ".join(f"{k} {v:.4f}" for k, v in after.items()) + f" (re-ranking {rerank_s:.1f} s)",
          flush=True)
    total_s = time.perf_counter() - t_start

    report = {
        "before": before,
        "after": after,
        "steps": step,
        "epochs": args.epochs,
        "batches_per_epoch": len(sampler),
        "train_seconds": train_s,
        "embed_seconds": embed_s,
        "rerank_seconds": rerank_s,
        "total_seconds": total_s,
        "losses": losses,
        "pairs_per_step": pairs_per_step,
        "settings": {
            "csv": str(csv),
            "weights": str(weights),
            "seed": SEED,
            "image_size": IMAGE_SIZE,
            "first_stage": f"torchvision BasicBlock ResNet layers {LAYERS} widths {list(WIDTHS)} in "
                           "ResnetExtractor(arch='resnet18', gem_p=None, remove_fc=True)",
            "sampler": {"name": "balance", "n_labels": N_LABELS, "n_instances": N_INSTANCES},
            "optimizer": {"name": "adamw", "lr": LR, "torch_defaults": "betas (0.9, 0.999), eps 1e-8, "
                                                                        "weight_decay 0.01"},
            "mlp_hidden_dims": MLP_HIDDEN,
            "hard_pairs_mining": True,
            "use_tta": False,
            "n_items": args.n_items,
            "top_n": args.top_n,
            "threads": torch.get_num_threads(),
        },
        "versions": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "oml": oml.__version__,
            "numpy": np.__version__,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))

    def pair(k: str) -> str:
        return f"{k} {before[k]:.4f} -> {after[k]:.4f}"

    print(f"OML: {pair('cmc@1')}, {pair('cmc@5')}, {pair('map@5')} ({step} steps, {train_s:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
