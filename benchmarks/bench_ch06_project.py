"""Benchmark: chapter 6's segmenter with the pretrained encoder against the same model from scratch.

    python benchmarks/bench_ch06_project.py            # seeds 0, 1 and 2 (about 6 training runs of 150 steps)
    python benchmarks/bench_ch06_project.py --seeds 0 1
    python benchmarks/bench_ch06_project.py --json

For every seed it trains both models with the notebook's settings (``ref.PROJECT_RUN`` and ``ref.SCRATCH_RUN``),
measures the held-out Dice every 10 steps, and reports the first step at which each reaches ``DICE_THRESHOLD``.
Target: on every seed, the pretrained encoder reaches it in fewer steps (a model that never reaches it within the
run counts as ``steps + 1``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from course_utils.solutions import ch06_project_segmentation as ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threshold", type=float, default=ref.DICE_THRESHOLD)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    frequencies = ref.training_frequencies()
    budget = int(ref.PROJECT_RUN["steps"])
    runs = []
    start = time.perf_counter()
    for seed in args.seeds:
        for kind, build, settings in [
            ("pretrained", lambda s: ref.pretrained_segmenter(s, frequencies), ref.PROJECT_RUN),
            ("scratch", lambda s: ref.scratch_segmenter(s, frequencies), ref.SCRATCH_RUN),
        ]:
            history = ref.train_segmenter(build(seed), **settings, seed=seed)
            reached = ref.steps_to_reach(history, args.threshold)
            runs.append(
                {
                    "kind": kind,
                    "seed": seed,
                    "steps_to_threshold": reached,
                    "final_dice": round(history["dice"][-1], 4),
                    "dice": [round(d, 3) for d in history["dice"]],
                }
            )
    by = {(r["kind"], r["seed"]): r["steps_to_threshold"] or budget + 1 for r in runs}
    report = {
        "threshold": args.threshold,
        "steps": budget,
        "seeds": args.seeds,
        "pretrained_steps": [by["pretrained", s] for s in args.seeds],
        "scratch_steps": [by["scratch", s] for s in args.seeds],
        "target_met": all(by["pretrained", s] < by["scratch", s] for s in args.seeds),
        "runs": runs,
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            if key != "runs":
                print(f"{key:18} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
