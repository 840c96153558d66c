"""A fitted policy's operating points run with each reuse mode, beside TaylorSeer at matched compute.

    OMP_NUM_THREADS=1 python benchmarks/policy_taylor.py --model toy-wan --prompts 2

The points keep the decisions they were fitted with (fitted for forecast "linear"); only the
reuse changes (`name@forecast`, as the bench's knob). PSNR of decoded frames against full
compute and the measured fraction of steps computed, on held-out prompts, seed 0.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from benchmarks.reuse_modes import frames
from calibration.baselines.sencache_policy import apply_sencache
from calibration.baselines.taylorseer import apply_taylorseer
from calibration.bench_report import psnr
from calibration.models import load_model
from calibration.zoo.data import heldout_prompts
from policies import Policy


def run(model: str, policy_path: str, steps: int, n_prompts: int) -> None:
    torch.set_num_threads(1)
    loaded = load_model(model)
    policy = Policy.load(policy_path)
    knobs = [f"{name}@{forecast}" for name in policy.operating_point_names for forecast in ("none", "linear", "taylor")]
    psnrs: dict[str, list[float]] = defaultdict(list)
    nfe: dict[str, list[float]] = defaultdict(list)
    for prompt in heldout_prompts()[:n_prompts]:
        reference = frames(loaded, prompt, steps)
        for knob in knobs:
            handle = apply_sencache(loaded.pipe, knob, policy)
            psnrs[knob].append(psnr(frames(loaded, prompt, steps), reference))
            nfe[knob].append(float(handle.computed_mask().mean()))
            handle.remove()
        for interval in (2, 3):
            handle = apply_taylorseer(loaded.pipe, interval)
            psnrs[f"taylorseer/{interval}"].append(psnr(frames(loaded, prompt, steps), reference))
            nfe[f"taylorseer/{interval}"].append(len({i for i in range(steps) if i < 3 or (i - 4) % interval == 0}) / steps)
            handle.remove()
    print(f"model {model}, policy {policy_path}, {steps} steps, {n_prompts} held-out prompts, seed 0")
    print(f"{'knob':<22} {'computed':>9} {'PSNR dB':>8}")
    for knob in list(psnrs):
        print(f"{knob:<22} {np.mean(nfe[knob]):>9.3f} {np.mean(psnrs[knob]):>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy-wan")
    parser.add_argument("--policy", default=None, help="default: policies/<model>.json")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=2)
    args = parser.parse_args()
    run(args.model, args.policy or f"policies/{args.model}.json", args.steps, args.prompts)


if __name__ == "__main__":
    main()
