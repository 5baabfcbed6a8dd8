"""Benchmark: train the small U-Net of chapter 2 from scratch on CPU, then measure its held-out Dice.

    python benchmarks/bench_ch02_unet.py                 # 30 s of training (the course's target)
    python benchmarks/bench_ch02_unet.py --budget 60     # another time budget
    python benchmarks/bench_ch02_unet.py --steps 300     # a fixed number of steps instead
    python benchmarks/bench_ch02_unet.py --threads 2     # train on two CPU threads (default: one)

Target: mean foreground Dice >= 0.90 on ``course_utils.data.held_out_set()`` after at most 30 s of training on
a 2-core machine. Timings depend on the machine and on what else runs on it, so the report prints the load
average, the thread count and the CPU time next to the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from course_utils import data
from course_utils.solutions import ch02_model_blocks as ch02

TARGET_DICE = 0.90
TARGET_SECONDS = 30.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=TARGET_SECONDS, help="seconds of training (default 30)")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps instead of a time budget")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for training (default 1, see train_unet)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    torch.manual_seed(args.seed)
    model = ch02.small_unet()
    cpu_start = time.process_time()
    history = ch02.train_unet(
        model,
        steps=args.steps,
        time_budget_s=None if args.steps else args.budget,
        seed=args.seed,
        num_threads=args.threads,
        progress=not args.json,
    )
    cpu_seconds = time.process_time() - cpu_start
    images, masks = data.held_out_set()
    model.eval()
    dice = ch02.dice_per_class(ch02.predict(model, images), masks, data.NUM_CLASSES)
    model.train()
    dice_train_mode = ch02.mean_foreground_dice(model, images, masks)
    report = {
        "mean_foreground_dice_eval": round(dice[1:].mean().item(), 4),
        "dice_per_class_eval": {name: round(v, 4) for name, v in zip(data.CLASS_NAMES, dice.tolist(), strict=True)},
        "mean_foreground_dice_train_mode": round(dice_train_mode, 4),
        "training_seconds": round(history["seconds"], 2),
        "training_cpu_seconds": round(cpu_seconds, 2),
        "steps": history["steps"],
        "final_loss": round(sum(history["loss"][-20:]) / max(1, len(history["loss"][-20:])), 4),
        "training_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    report["target_met"] = report["mean_foreground_dice_eval"] >= TARGET_DICE and (
        report["training_seconds"] <= TARGET_SECONDS + 1.0
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:34} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
