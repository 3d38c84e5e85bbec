#!/usr/bin/env python3
"""Seconds per training step of Python OML 4.0 on CPU, the counterpart of ``cargo run --example
prof_train -- SIDE ARCH``: a randomly initialised ``ViTExtractor`` (no weights), a batch of 32 random
images (8 labels x 4), ``TripletLossWithMiner(margin=0.1, miner=HardTripletsMiner())``, ``AdamW(lr=1e-5,
weight_decay=0.01)``; forward, loss, backward and the optimiser step timed separately.

    /work/venv/bin/python benches/python_train_step.py --side 224 --arch vits16 --threads 2

Prints one line per step and, last, a JSON object with the median of each part over the steps after the
first (warm-up).
"""
import argparse
import json
import statistics
import time

import torch
from oml.losses import TripletLossWithMiner
from oml.miners import HardTripletsMiner
from oml.models import ViTExtractor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--arch", default="vits16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = ViTExtractor(weights=None, arch=args.arch, normalise_features=False)
    net.train()
    loss_fn = TripletLossWithMiner(margin=0.1, miner=HardTripletsMiner())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5, weight_decay=0.01)
    x = torch.randn(32, 3, args.side, args.side)
    labels = torch.arange(32) // 4
    parts = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        emb = net(x)
        t1 = time.perf_counter()
        loss = loss_fn(emb, labels)
        loss.item()
        t2 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        ms = [1e3 * (b - a) for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, t4))]
        parts.append(ms)
        print(f"step {i}: forward {ms[0]:.0f} ms, loss {ms[1]:.0f} ms, backward {ms[2]:.0f} ms, optimiser {ms[3]:.0f} ms")
    warm = parts[1:] or parts
    med = {k: statistics.median(p[j] for p in warm) for j, k in enumerate(["forward", "loss", "backward", "optimiser"])}
    med["step"] = sum(med.values())
    print(json.dumps({"arch": args.arch, "side": args.side, "threads": args.threads, "median_ms": med}))


if __name__ == "__main__":
    main()
