#!/usr/bin/env python3
"""Fine-tune DINOv2 ViT-S/14 on the glyph dataset with Python OML 4.0, mirroring the Rust ``oml demo``.

Usage (the full 300 s comparison run):

    /work/venv/bin/python benches/python_finetune_glyphs.py \\
        --csv /tmp/demo5/glyphs/df.csv \\
        --weights /work/shared/weights/vits14_dinov2_imgfocus.safetensors \\
        --budget 300 --threads 2

What it mirrors (``oml/src/demo.rs``, ``run``, with pretrained weights):

* data: the OML CSV written by our glyph generator (``label,path,split,is_query,is_gallery,category``), paths relative
  to the CSV's folder (``--dataset-root``, default: that folder). Train = ``split == train`` rows
  (``ImageLabeledDataset``); validation = ``split == validation`` rows (``ImageQueryGalleryLabeledDataset``;
  queries are serif faces, gallery sans/mono faces, some rows gallery-only). 64x64 grey PNGs, read as RGB (OML's
  PIL reader does ``convert("RGB")``).
* backbone: ``ViTExtractor(weights=None, arch="vits14", normalise_features=False)`` + our safetensors DINOv2 weights
  (``mask_token`` added as zeros, strict load) -- the demo's ``ModelSpec::new("vits14")`` + ``models::load``.
* input 56 px (``(image_size / 14) * 14`` with the demo's default 56). Validation transform
  ``get_normalisation_resize_torch(56)`` = the demo's ``"norm_resize_torch"`` preset (bilinear resize to 56x56,
  ImageNet mean/std); train transform ``get_augs_torch(56)`` = the demo's ``"augs_torch"`` preset (resize, random
  horizontal flip, ``ColorJitter()`` with default arguments, which is the identity, normalisation).
* sampler ``BalanceSampler(train labels, n_labels=8, n_instances=4)`` (batch 32); loss
  ``TripletLossWithMiner(margin=0.1, miner=HardTripletsMiner(), need_logs=True)``; ``AdamW(lr=2e-5,
  weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)``; ``Schedule::Constant { warmup_steps: 20 }`` = linear warm-up
  ``lr * (step + 1) / 20`` for the first 20 steps, constant after.
* budget: train until ``--budget`` seconds of wall time have passed in the training loop (checked before each step;
  ``max_seconds``), over epochs of the sampler (at most 1000 epochs, the demo's ``max_epochs``). Seeds: torch 0,
  numpy 0, random 0 (``--seed``). ``--max-steps N`` also stops after N steps. No validation during training (``valid_every_epochs: 0``).
* evaluation before and after: embed all validation rows (``eval()``, no grad, batch 64, validation transform), then
  ``RetrievalResults.from_embeddings(emb, val, n_items=8)`` (the demo's ``SearchConfig { top_n: 8 }``) and
  ``calc_retrieval_metrics_rr(rr, cmc_top_k=(1, 5), precision_top_k=(5,), map_top_k=(5,))``.

Not mirrored: raw-pixel zero-shot metrics, the HTML report, training logs/plots. Data loading is in the main process
(``num_workers=0``). The last stdout line is one JSON object with the before/after metrics and the throughput.

``--val-labels N`` (debug only; default: all) keeps the first N validation labels so a smoke run is quick.

``--recipe demo`` (the current ``oml demo`` pretrained path) instead trains with the torchvision counterparts of
our ``augs_glyphs`` preset (``RandomAffine(12 deg, translate 0.08, scale 0.8-1.1, shear 15, white fill)``, a
stroke-weight step (PIL's 3x3 min or max filter with probability 0.7), ``GaussianBlur`` (sigma 0.3-1.2, p 0.6),
Gaussian noise (std 20/255, p 0.6), then the resize) and validates with the model's transform as the demo scales
it (``get_normalisation_resize_hypvit(im_size=56, crop_size=56)``); ``--recipe old`` (default) is the recipe above.
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from oml.datasets import ImageLabeledDataset, ImageQueryGalleryLabeledDataset
from oml.losses import TripletLossWithMiner
from oml.metrics import calc_retrieval_metrics_rr
from oml.miners import HardTripletsMiner
from oml.models import ViTExtractor
from oml.retrieval import RetrievalResults
from oml.samplers import BalanceSampler
from oml.transforms.images.torchvision import (
    get_augs_torch,
    get_normalisation_resize_hypvit,
    get_normalisation_resize_torch,
)

N_LABELS, N_INSTANCES = 8, 4
LR, WEIGHT_DECAY, WARMUP_STEPS = 2e-5, 0.01, 20
MARGIN = 0.1
EVAL_BATCH = 64
TOP_N = 8
MAX_EPOCHS = 1000


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--csv", type=Path, default=Path("/tmp/demo5/glyphs/df.csv"))
    p.add_argument("--dataset-root", type=Path, default=None, help="default: the CSV's folder")
    p.add_argument(
        "--weights", type=Path, default=Path("/work/shared/weights/vits14_dinov2_imgfocus.safetensors")
    )
    p.add_argument("--budget", type=float, default=300.0, help="training wall-time budget, seconds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="torch, numpy and random seeds (the sampler's draws)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (besides --budget)")
    p.add_argument("--image-size", type=int, default=56)
    p.add_argument("--val-labels", type=int, default=None, help="debug: keep only the first N validation labels")
    p.add_argument("--recipe", choices=["old", "demo"], default="old")
    return p.parse_args()


def glyph_augs(size: int):
    """torchvision counterparts of oml's ``augs_glyphs`` (see the module docstring)."""
    import torchvision.transforms as T
    from PIL import ImageFilter

    def stroke(img):
        if random.random() >= 0.7:
            return img
        return img.filter(ImageFilter.MinFilter(3) if random.random() < 0.5 else ImageFilter.MaxFilter(3))

    def noise(x):
        if random.random() >= 0.6:
            return x
        return (x + torch.randn(1, *x.shape[1:]) * (20.0 / 255.0)).clamp(0.0, 1.0)

    return T.Compose(
        [
            T.RandomAffine(
                degrees=12,
                translate=(0.08, 0.08),
                scale=(0.8, 1.1),
                shear=(-15, 15),
                interpolation=T.InterpolationMode.BILINEAR,
                fill=255,
            ),
            T.Lambda(stroke),
            T.RandomApply([T.GaussianBlur(kernel_size=7, sigma=(0.3, 1.2))], p=0.6),
            T.ToTensor(),
            T.Lambda(noise),
            T.Resize((size, size), antialias=True),
            T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )


def as_bool(col: pd.Series) -> pd.Series:
    return col.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))


def load_frames(csv: Path, val_labels):
    df = pd.read_csv(csv)
    df_train = df[df["split"] == "train"].reset_index(drop=True)
    df_val = df[df["split"] == "validation"].reset_index(drop=True)
    df_val["is_query"] = as_bool(df_val["is_query"])
    df_val["is_gallery"] = as_bool(df_val["is_gallery"])
    if val_labels is not None:
        keep = list(dict.fromkeys(df_val["label"].tolist()))[:val_labels]
        df_val = df_val[df_val["label"].isin(keep)].reset_index(drop=True)
    # ``category`` is informative only: drop it so that OML reports the overall metrics alone.
    df_train = df_train.drop(columns=["is_query", "is_gallery", "category"], errors="ignore")
    df_val = df_val.drop(columns=["category"], errors="ignore")
    return df_train, df_val


def build_model(weights: Path) -> ViTExtractor:
    extractor = ViTExtractor(weights=None, arch="vits14", normalise_features=False)
    state = load_file(str(weights))
    state["mask_token"] = torch.zeros(1, 384)
    extractor.model.load_state_dict(state, strict=True)
    return extractor


@torch.no_grad()
def embed(model: torch.nn.Module, dataset) -> torch.Tensor:
    model.eval()
    loader = DataLoader(dataset, batch_size=EVAL_BATCH, shuffle=False, num_workers=0)
    out = [model(batch[dataset.input_tensors_key]) for batch in loader]
    return torch.cat(out).float()


def evaluate(model, dataset):
    t0 = time.perf_counter()
    emb = embed(model, dataset)
    rr = RetrievalResults.from_embeddings(emb, dataset, n_items=TOP_N)
    m = calc_retrieval_metrics_rr(rr, cmc_top_k=(1, 5), precision_top_k=(5,), map_top_k=(5,), verbose=False)
    m = m.get("OVERALL", m)  # flat dict when no query categories are given
    return {
        "cmc1": float(m["cmc"][1]),
        "cmc5": float(m["cmc"][5]),
        "map5": float(m["map"][5]),
        "precision5": float(m["precision"][5]),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)

    root = args.dataset_root or args.csv.resolve().parent
    df_train, df_val = load_frames(args.csv, args.val_labels)
    size = max(args.image_size // 14, 1) * 14

    if args.recipe == "demo":
        train_tf = glyph_augs(size)
        val_tf = get_normalisation_resize_hypvit(im_size=size, crop_size=size)
    else:
        train_tf = get_augs_torch(im_size=size)
        val_tf = get_normalisation_resize_torch(im_size=size)
    train = ImageLabeledDataset(df_train, dataset_root=root, transform=train_tf)
    val = ImageQueryGalleryLabeledDataset(df_val, dataset_root=root, transform=val_tf)
    n_q, n_g = int(df_val["is_query"].sum()), int(df_val["is_gallery"].sum())
    print(
        f"train: {len(train)} images, {df_train['label'].nunique()} labels; validation: {len(val)} images, "
        f"{df_val['label'].nunique()} labels ({n_q} queries, {n_g} gallery); {size} px; {args.threads} threads",
        flush=True,
    )

    model = build_model(args.weights)
    before = evaluate(model, val)
    print(f"before: cmc@1 {before['cmc1']:.4f}  map@5 {before['map5']:.4f}  ({before['seconds']:.1f} s)", flush=True)

    sampler = BalanceSampler(train.get_labels().tolist(), n_labels=N_LABELS, n_instances=N_INSTANCES)
    loader = DataLoader(train, batch_sampler=sampler, num_workers=0)
    criterion = TripletLossWithMiner(margin=MARGIN, miner=HardTripletsMiner(), need_logs=True)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.999), eps=1e-8
    )

    model.train()
    step, n_images, last_loss = 0, 0, float("nan")
    t0 = time.perf_counter()
    done = False
    for epoch in range(MAX_EPOCHS):
        for batch in loader:
            if time.perf_counter() - t0 >= args.budget or (args.max_steps is not None and step >= args.max_steps):
                done = True
                break
            lr = LR * (step + 1) / WARMUP_STEPS if step < WARMUP_STEPS else LR
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = batch[train.input_tensors_key], batch[train.labels_key]
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            n_images += len(y)
            last_loss = float(loss.item())
            if step % 25 == 0:
                el = time.perf_counter() - t0
                print(f"epoch {epoch} step {step}: loss {last_loss:.4f}  lr {lr:.2e}  {el:.0f} s", flush=True)
        if done:
            break
    train_seconds = time.perf_counter() - t0

    after = evaluate(model, val)
    print(f"after:  cmc@1 {after['cmc1']:.4f}  map@5 {after['map5']:.4f}  ({after['seconds']:.1f} s)", flush=True)
    print(
        f"{step} steps in {train_seconds:.1f} s: {step / train_seconds:.3f} steps/s, "
        f"{n_images / train_seconds:.1f} images/s; last loss {last_loss:.4f}",
        flush=True,
    )
    print(
        json.dumps(
            {
                "before_cmc1": before["cmc1"],
                "after_cmc1": after["cmc1"],
                "before_map5": before["map5"],
                "after_map5": after["map5"],
                "steps": step,
                "train_seconds": round(train_seconds, 3),
                "steps_per_s": round(step / train_seconds, 4) if train_seconds > 0 else None,
                "images_per_s": round(n_images / train_seconds, 2) if train_seconds > 0 else None,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
