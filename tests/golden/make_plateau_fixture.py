#!/usr/bin/env python3
"""torch's ReduceLROnPlateau (mode "max", relative threshold) on fixed metric sequences, for the
Rust port's `PlateauState` (tests/train.rs). Run:

    /work/venv/bin/python tests/golden/make_plateau_fixture.py

It writes tests/golden/plateau_torch.json: per case the scheduler's settings, the base learning rate,
the metric passed to each `step`, and the learning rate after each step.
"""

import json
from pathlib import Path

import torch

CASES = [
    # A metric that rises, stalls, rises again by less than the threshold, then stalls.
    dict(factor=0.5, patience=2, threshold=1e-4, cooldown=0, min_lr=0.0,
         metrics=[0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.30001, 0.35, 0.35, 0.35, 0.35, 0.35, 0.35, 0.35]),
    # Cooldown and a floor.
    dict(factor=0.1, patience=1, threshold=1e-4, cooldown=2, min_lr=0.002,
         metrics=[0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.6, 0.6, 0.6, 0.6, 0.6]),
    # torch's defaults, with a larger threshold.
    dict(factor=0.1, patience=10, threshold=0.05, cooldown=0, min_lr=0.0,
         metrics=[0.5] + [0.52] * 12 + [0.6] * 12),
]

BASE_LR = 0.1


def main():
    out = []
    for c in CASES:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=BASE_LR)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=c["factor"], patience=c["patience"],
            threshold=c["threshold"], threshold_mode="rel", cooldown=c["cooldown"],
            min_lr=c["min_lr"])
        lrs = []
        for m in c["metrics"]:
            sched.step(m)
            lrs.append(opt.param_groups[0]["lr"])
        out.append({**c, "base_lr": BASE_LR, "lrs": lrs})
    path = Path(__file__).with_name("plateau_torch.json")
    path.write_text(json.dumps({"torch_version": torch.__version__, "cases": out}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
