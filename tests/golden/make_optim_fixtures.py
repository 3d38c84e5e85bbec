"""Golden fixtures for oml's optimisers and learning-rate schedules: torch's SGD (momentum,
Nesterov, weight decay), Adam (L2) and AdamW over four steps of fixed gradients, and the learning
rate and momentum torch's schedulers give at every step.

    venv/bin/python tests/golden/make_optim_fixtures.py  # writes tests/golden/optim_torch.json
"""
import json
from pathlib import Path

import torch

torch.manual_seed(0)
P0 = torch.randn(2, 3)
GRADS = [torch.randn(2, 3) for _ in range(4)]


def run(make):
    p = torch.nn.Parameter(P0.clone())
    opt = make([p])
    out = []
    for g in GRADS:
        p.grad = g.clone()
        opt.step()
        out.append(p.detach().flatten().tolist())
    return out


optimisers = {
    "sgd_momentum": ({"name": "sgd", "lr": 0.1, "momentum": 0.9},
                     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    "sgd_nesterov_wd": ({"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
                        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adam_l2": ({"name": "adam", "lr": 0.01, "weight_decay": 0.1},
                lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1)),
    "adamw": ({"name": "adamw", "lr": 0.01, "weight_decay": 0.1, "betas": [0.9, 0.99], "eps": 1e-6},
              lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-6)),
}


def schedule(make, total, base=1.0, momentum=None):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base, momentum=0.9) if momentum else torch.optim.SGD([p], lr=base)
    sched = make(opt)
    lrs, moms = [], []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    return {"lr": lrs, "momentum": moms if momentum else None}


TOTAL = 20
schedules = {
    "one_cycle": ({"name": "one_cycle", "pct_start": 0.3},
                  schedule(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=TOTAL, pct_start=0.3),
                           TOTAL, momentum=True)),
    "one_cycle_quarter": ({"name": "one_cycle", "pct_start": 0.25, "base_momentum": 0.8, "max_momentum": 0.9},
                          schedule(lambda o: torch.optim.lr_scheduler.OneCycleLR(
                              o, max_lr=1.0, total_steps=TOTAL, pct_start=0.25, base_momentum=0.8, max_momentum=0.9),
                              TOTAL, momentum=True)),
    "step": ({"name": "step", "step_size": 3, "gamma": 0.5},
             schedule(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5), TOTAL)),
    "multi_step": ({"name": "multi_step", "milestones": [4, 7], "gamma": 0.1},
                   schedule(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[4, 7], gamma=0.1), TOTAL)),
    "cosine": ({"name": "cosine", "min_lr_ratio": 0.1},
               schedule(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=TOTAL, eta_min=0.1), TOTAL)),
}

fixture = {
    "torch": torch.__version__,
    "p0": P0.flatten().tolist(),
    "grads": [g.flatten().tolist() for g in GRADS],
    "optimisers": {k: {"config": c, "params": run(m)} for k, (c, m) in optimisers.items()},
    "total_steps": TOTAL,
    "schedules": {k: {"config": c, **v} for k, (c, v) in schedules.items()},
}
out = Path(__file__).with_name("optim_torch.json")
out.write_text(json.dumps(fixture, indent=1))
print("wrote", out)
