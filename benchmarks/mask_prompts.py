"""Do static masks rank the same on different prompts? PSNR of decoded frames, per prompt set.

The fit chooses masks on 8 calibration prompts and the bench judges them on 4 held-out prompts.
This script scores a few masks of one reuse mode — `--mask` (computed steps), and with
`--taylorseer N` TaylorSeer's own pattern (steps 0–3, then every N-th, as diffusers'
`TaylorSeerCacheConfig(cache_interval=N, disable_cache_before_step=3)` refreshes; a static
schedule always computes the last step, so it is run as a score-driven point whose ε passes every
score, with a 4-step warm-up and K = N − 1) — on several prompt sets × `--seeds`: the bench's 4
held-out prompts, the zoo's 6 other held-out prompts, and the calibration prompts of
`benchmarks/toy-calib-prompts.txt`. Each sample's PSNR is against full compute of the same prompt
and seed; the table gives the mean over the set's samples.

    OMP_NUM_THREADS=2 python benchmarks/mask_prompts.py --model toy-wan --forecast taylor --taylorseer 3 \\
        --mask 0,1,4,6,9,12,14,18,22,25,27,29 --mask 0,2,5,8,11,14,17,20,23,25,27,29

toy-wan, 12 of 30 steps, "taylor" (this command):

    | mask                          | bench's 4 × 2 | other 6 held-out × 2 | calibration 14 × 2 |
    | 0,1,4,6,…,27,29 (shipped fast) | 36.42         | 38.06                | 38.62              |
    | 0,2,5,8,…,25,27,29             | 41.43         | 40.18                | 40.40              |
    | TaylorSeer's, interval 3       | 39.25         | 33.87                | 33.35              |
    | 0,2,4,6,8,11,15,19,22,…,29     | 39.67         | 35.97                | 37.13              |

(the last: the search's static schedule the fit's refinement started `fast` from; moving its
steps on the 8 calibration runs gained 2.1 and 1.5 dB on the two larger sets and lost 3.3 on
the bench's 4)

(the bench's 4 × 2 column equals `bench`'s own PSNR for these points: TaylorSeer's pattern with
SenCache's forecast 39.25 dB, diffusers' TaylorSeer 38.46). Which mask wins depends on the prompts
as much as on the mask: 4 prompts cannot rank them.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from calibration.bench_report import psnr
from calibration.models import load_model
from calibration.static_refine import mask_schedule
from calibration.zoo.data import heldout_prompts
from policies import EpsSchedule, OperatingPoint, Policy

#: how many held-out prompts the bench uses by default (`calibration.bench`)
BENCH_PROMPTS = 4


def prompt_sets() -> dict[str, list[str]]:
    calib = Path(__file__).with_name("toy-calib-prompts.txt").read_text().split("\n")
    return {"bench's 4": heldout_prompts()[:BENCH_PROMPTS], "other 6 held-out": heldout_prompts()[BENCH_PROMPTS:],
            "calibration 14": [p for p in calib if p.strip()]}


def taylorseer_point(interval: int, forecast: str, num_steps: int) -> OperatingPoint:
    """TaylorSeer's refresh pattern: 4 steps, then every `interval`-th; the steps after the last refresh skip."""
    return OperatingPoint(f"TaylorSeer's, interval {interval}", EpsSchedule((0.0, 1.0), (1e30, 1e30)),
                          max_skips=interval - 1, warmup_steps=4 / num_steps, final_steps=0, forecast=forecast)


@torch.no_grad()
def frames(pipe, prompts: list[str], seeds: list[int], call: dict) -> np.ndarray:
    """Decoded frames [samples, ...] of every prompt × seed, one batched call per seed."""
    out = []
    for seed in seeds:
        generators = [torch.Generator().manual_seed(seed) for _ in prompts]
        out.append(np.asarray(pipe(prompt=prompts, generator=generators, output_type="np", **call).frames, np.float64))
    return np.concatenate(out)


def main() -> None:
    import sencache

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="toy-wan")
    parser.add_argument("--policy", type=Path, help="whose table and predictors the TaylorSeer point reads "
                                                    "(default: policies/<model>.json)")
    parser.add_argument("--forecast", default="taylor", choices=("none", "linear", "taylor"))
    parser.add_argument("--mask", action="append", default=[], help="computed steps, comma-separated (repeatable)")
    parser.add_argument("--taylorseer", type=int, help="also TaylorSeer's pattern with this cache interval")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    loaded = load_model(args.model)
    pipe = loaded.pipe
    pipe.set_progress_bar_config(disable=True)
    call = loaded.call_kwargs()
    n = int(call.get("num_inference_steps", 30))
    base = Policy.load(args.policy or Path(__file__).parents[1] / "policies" / f"{args.model}.json")
    points = [OperatingPoint(m, schedule=mask_schedule({int(x) for x in m.split(",")}, n), forecast=args.forecast)
              for m in args.mask]
    if args.taylorseer:
        points.append(taylorseer_point(args.taylorseer, args.forecast, n))
    sets = prompt_sets()
    seeds = list(range(args.seeds))
    full = {name: frames(pipe, prompts, seeds, call) for name, prompts in sets.items()}
    print(f"{args.model}, {n} steps, forecast {args.forecast}: mean PSNR (dB) of decoded frames against full compute")
    print("| mask | computes | " + " | ".join(f"{name} × {args.seeds}" for name in sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    for point in points:
        handle = sencache.apply(pipe, replace(base, operating_points=(point,), default_operating_point=point.name))
        try:
            cells = []
            for name, prompts in sets.items():
                got = frames(pipe, prompts, seeds, call)
                cells.append(f"{np.mean([psnr(a, b) for a, b in zip(got, full[name])]):.2f}")  # the bench's PSNR
            computes = sorted(set(handle.report().nfe_per_sample.tolist()))  # the last call's samples
        finally:
            sencache.remove(pipe)
        print(f"| {point.name} | {'/'.join(map(str, computes))} of {n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
