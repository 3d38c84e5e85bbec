#!/usr/bin/env python3
"""Reference throughput of OML 4.0's image loading path (decode + resize + normalise).

Writes N deterministic 500x375 JPEGs into a directory given on the command line
(skipping files that already exist), then iterates a torch DataLoader over
OML's own ``ImageBaseDataset`` with OML's own ``get_normalisation_resize_torch(im_size=224)``
transform (Pillow decode -> convert("RGB") -> torchvision Resize((224, 224), bilinear,
antialias) -> ToTensor -> Normalize(ImageNet mean/std)).

Loader: batch_size=32, num_workers=2, shuffle=False (defaults as in OML's
validation loader). One warm-up epoch, then the median of 3 timed epochs.

Usage:
    python benches/python_loader.py /tmp/oml_jpegs [--n 512] [--epochs 3] [--workers 2]
                                    [--batch-size 32] [--threads 2] [--persistent-workers]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 500, 375


def synth_image(idx: int) -> np.ndarray:
    """Smooth colour field plus blocky shapes and mild noise: compresses like a photo-ish JPEG."""
    rng = np.random.default_rng(1000 + idx)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    fx, fy, phase = rng.uniform(0.005, 0.05, size=3)
    img = np.empty((HEIGHT, WIDTH, 3), dtype=np.float32)
    for c in range(3):
        a, b = rng.uniform(0.2, 1.0, size=2)
        img[..., c] = 127.5 + 100.0 * np.sin(fx * a * xx + fy * b * yy + phase * (c + 1) * 10.0)
    for _ in range(6):
        x0, y0 = rng.integers(0, WIDTH - 40), rng.integers(0, HEIGHT - 40)
        w, h = rng.integers(20, 160), rng.integers(20, 120)
        img[y0 : y0 + h, x0 : x0 + w, :] = rng.uniform(0, 255, size=3)
    img += rng.normal(0.0, 8.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_jpegs(out_dir: Path, n: int) -> list:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = out_dir / f"img_{i:05d}.jpg"
        if not p.exists():
            Image.fromarray(synth_image(i)).save(p, format="JPEG", quality=90)
        paths.append(p)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in the main process")
    parser.add_argument("--im-size", type=int, default=224)
    parser.add_argument("--persistent-workers", action="store_true")
    args = parser.parse_args()

    import torch
    from torch.utils.data import DataLoader

    import oml
    from oml.datasets.images import ImageBaseDataset
    from oml.transforms.images.torchvision import get_normalisation_resize_torch

    torch.set_num_threads(args.threads)

    paths = write_jpegs(args.image_dir, args.n)
    transform = get_normalisation_resize_torch(im_size=args.im_size)
    dataset = ImageBaseDataset(paths=paths, transform=transform)  # f_imread -> imread_pillow (torchvision Compose)

    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        num_workers=args.workers,
        shuffle=False,
        persistent_workers=args.persistent_workers and args.workers > 0,
    )

    def one_epoch() -> float:
        t0 = time.perf_counter()
        n_seen = 0
        checksum = 0.0
        for batch in loader:
            x = batch[dataset.input_tensors_key]
            n_seen += x.shape[0]
            checksum += float(x[:, :, 0, 0].sum())  # touch the data
        dt = time.perf_counter() - t0
        assert n_seen == len(dataset)
        return dt

    warmup_s = one_epoch()
    times = [one_epoch() for _ in range(args.epochs)]
    med = statistics.median(times)

    shape = tuple(dataset[0][dataset.input_tensors_key].shape)
    result = {
        "images": len(dataset),
        "image_size_src": [WIDTH, HEIGHT],
        "tensor_shape": list(shape),
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "persistent_workers": bool(args.persistent_workers),
        "torch_threads_main": torch.get_num_threads(),
        "warmup_epoch_s": round(warmup_s, 4),
        "epoch_s": [round(t, 4) for t in times],
        "median_epoch_s": round(med, 4),
        "images_per_s": round(len(dataset) / med, 1),
        "cpu_count": os.cpu_count(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pillow": Image.__version__,
            "open-metric-learning": getattr(oml, "__version__", "unknown"),
        },
    }
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
