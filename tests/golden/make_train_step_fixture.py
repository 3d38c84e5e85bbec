#!/usr/bin/env python3
"""Golden fixture for ``tests/real_data.rs::four_adamw_steps_on_dinov2_match_python_oml``.

Python OML 4.0 fine-tunes the shared DINOv2 ViT-S/14 (``shared/weights/vits14_dinov2_imgfocus.safetensors``)
for four steps on one fixed batch: 32 inputs of 3 x 56 x 56 given by a formula (so that Rust rebuilds them
without a file), labels ``i // 4``, ``TripletLossWithMiner(margin=0.1, miner=HardTripletsMiner())`` and
``AdamW(lr, weight_decay=0.01)`` on every parameter, in train mode. It records, before each step, the loss, the
share of active triplets and the mean embedding norm. Two learning rates: 2e-5 (the demo's) and 1e-4.

    /work/venv/bin/python tests/golden/make_train_step_fixture.py [WEIGHTS] > tests/golden/train_step_dinov2.json

Input element ``i`` (flat, row-major over ``[32, 3, 56, 56]``), computed in float64 then cast to float32:
``sin(0.001 i) + cos(0.0007 i + floor(i / (3 * 56 * 56)))``.
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from oml.losses import TripletLossWithMiner
from oml.miners import HardTripletsMiner
from oml.models import ViTExtractor

WEIGHTS = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/shared/weights/vits14_dinov2_imgfocus.safetensors")


def model() -> ViTExtractor:
    extractor = ViTExtractor(weights=None, arch="vits14", normalise_features=False)
    state = load_file(str(WEIGHTS))
    state["mask_token"] = torch.zeros(1, 384)
    extractor.model.load_state_dict(state, strict=True)
    return extractor


def run(lr: float) -> dict:
    net = model()
    per = 3 * 56 * 56
    idx = torch.arange(32 * per, dtype=torch.float64)
    x = (torch.sin(idx * 0.001) + torch.cos(idx * 0.0007 + torch.div(idx, per, rounding_mode="floor"))).float()
    x = x.reshape(32, 3, 56, 56)
    labels = torch.arange(32) // 4
    crit = TripletLossWithMiner(margin=0.1, miner=HardTripletsMiner(), need_logs=True)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    net.train()
    out = {"lr": lr, "loss": [], "active_tri": [], "mean_norm": []}
    for _ in range(4):
        emb = net(x)
        loss = crit(emb, labels)
        out["loss"].append(loss.item())
        out["active_tri"].append(float(crit.last_logs["active_tri"]))
        out["mean_norm"].append(emb.norm(dim=1).mean().item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return out


def main() -> None:
    torch.set_num_threads(2)
    print(json.dumps({"oml_version": "4.0", "runs": [run(2e-5), run(1e-4)]}, indent=1))


if __name__ == "__main__":
    main()
