#!/usr/bin/env python3
"""Images per second of Python OML 4.0's extractors on CPU in inference, the counterpart of
``cargo run --example bench_backbones -- quick``: randomly initialised ViT-S/16, ViT-S/14 (OML's
``ViTExtractor``) and ResNet-18 / 50 (``ResnetExtractor``), a batch of 32 random 224 px images,
``torch.no_grad()``, the median of 3 timed batches after one warm-up batch.

    /work/venv/bin/python benches/python_backbones.py --threads 2

Prints one JSON object per arch.
"""
import argparse
import json
import statistics
import time

import torch
from oml.models import ResnetExtractor, ViTExtractor


def build(arch: str) -> torch.nn.Module:
    if arch.startswith("vit"):
        return ViTExtractor(weights=None, arch=arch, normalise_features=False)
    return ResnetExtractor(weights=None, arch=arch, gem_p=None, remove_fc=True, normalise_features=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--archs", default="vits16,vits14,resnet18,resnet50")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(32, 3, 224, 224)
    for arch in args.archs.split(","):
        net = build(arch).eval()
        times = []
        with torch.no_grad():
            for i in range(4):
                t0 = time.perf_counter()
                net(x)
                if i > 0:
                    times.append(time.perf_counter() - t0)
        rate = 32 / statistics.median(times)
        print(json.dumps({"bench": "forward_224_b32", "arch": arch, "images_per_s": round(rate, 1)}))


if __name__ == "__main__":
    main()
