#!/usr/bin/env python3
"""Reads the TensorBoard event files a run wrote with TensorBoard's own reader and checks them
against the run's history: every step's loss and learning rate, every validation metric.

    python .ci/check_tensorboard.py RUN_DIR

RUN_DIR is a fit's logs_dir (it holds metrics.jsonl and tb/).
"""

import json
import math
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main():
    run = Path(sys.argv[1])
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if r["kind"] == "step"]
    vals = [r for r in records if r["kind"] == "validation"]
    if not steps:
        sys.exit("the run has no steps")
    problems = []
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr")):
        if tag not in tags:
            problems.append(f"{tag} missing; tags: {tags}")
            continue
        got = {e.step: e.value for e in acc.Scalars(tag)}
        for r in steps:
            want = r[key]
            if r["step"] not in got or not math.isclose(got[r["step"]], want, rel_tol=1e-6, abs_tol=1e-12):
                problems.append(f"{tag} at step {r['step']}: {got.get(r['step'])} != {want}")
                break
    for r in vals:
        for name, want in r["metrics"].items():
            tag = f"valid/{name}"
            got = {e.step: e.value for e in acc.Scalars(tag)} if tag in tags else {}
            if want is not None and not math.isclose(got.get(r["step"], math.nan), want, rel_tol=1e-6):
                problems.append(f"{tag} at step {r['step']}: {got.get(r['step'])} != {want}")
    if problems:
        sys.exit("TensorBoard events disagree with metrics.jsonl:\n  " + "\n  ".join(problems[:10]))
    n_valid = sum(len(r["metrics"]) for r in vals)
    print(f"TensorBoard reads {len(tags)} scalar tags: {len(steps)} steps of loss and lr, "
          f"{len(vals)} validations ({n_valid} values), all equal to metrics.jsonl")


if __name__ == "__main__":
    main()
