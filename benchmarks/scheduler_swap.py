"""What a scheduler swap does to a fitted policy: toy-wan's Euler-fitted policy under UniPC.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/scheduler_swap.py [--points balanced,fast] [--seeds 3]

`policies/toy-wan.json` was fitted under flow-match Euler (the toy's own scheduler). Wan's
pipelines default to UniPC multistep (flow prediction, flow sigmas, the same shift). For each
scheduler and each operating point: PSNR (dB) of the decoded frames against *that scheduler's
own* full-compute output of the same prompt and seed (mean and minimum over samples), and the
fraction of steps computed. SenCache warns once when the schedulers differ; this measures how
much the warning is worth. Quality numbers only: nothing here is timed.
"""

from __future__ import annotations

import argparse
import logging
import warnings

import numpy as np
import torch

import sencache
from calibration.models import load_model
from policies import Policy

PROMPTS = [
    "a red circle moving left on a blue background",
    "a yellow triangle moving up on a black background",
    "a green square moving right on a white background",
]


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return np.minimum(10.0 * np.log10(1.0 / np.maximum(mse, 1e-12)), 120.0)


def frames(loaded, seeds: list[int]) -> np.ndarray:
    kwargs = loaded.call_kwargs()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(seeds))]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    with torch.no_grad():
        out = loaded.pipe(prompt=prompts, generator=gens, output_type="np", **kwargs)
    return np.asarray(out.frames, dtype=np.float32)


def unipc_like(euler) -> object:
    """Wan's default solver, with the toy's own shift."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   flow_shift=float(euler.config.shift), num_train_timesteps=euler.config.num_train_timesteps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="policies/toy-wan.json")
    ap.add_argument("--points", default=None, help="operating points, comma-separated (default: all)")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("sencache").setLevel(logging.WARNING)
    policy = Policy.load(args.policy)
    points = args.points.split(",") if args.points else [p.name for p in policy.operating_points]
    loaded = load_model("toy-wan")
    euler = loaded.pipe.scheduler
    seeds = list(range(args.seeds))
    rows = []
    for label, scheduler in (("euler (fitted)", euler), ("unipc", unipc_like(euler))):
        loaded.pipe.scheduler = scheduler
        reference = frames(loaded, seeds)
        for point in points:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                handle = sencache.apply(loaded.pipe, policy, operating_point=point)
                out = frames(loaded, seeds)
            warned = any("fitted under" in str(w.message) for w in caught)
            nfe = float(np.mean(handle.report().nfe_fraction))
            sencache.remove(loaded.pipe)
            q = psnr(out, reference)
            rows.append((label, type(scheduler).__name__, point, nfe, float(q.mean()), float(q.min()), warned))
    loaded.pipe.scheduler = euler
    steps = loaded.call_kwargs()["num_inference_steps"]
    print(f"toy-wan, {steps} steps, {len(seeds)} samples; PSNR (dB) vs the same scheduler's full compute")
    print(f"{'scheduler':<16}{'point':<10}{'computed':>9}{'PSNR mean':>11}{'PSNR min':>10}  warned")
    for label, _, point, nfe, mean, low, warned in rows:
        print(f"{label:<16}{point:<10}{nfe:>9.3f}{mean:>11.2f}{low:>10.2f}  {'yes' if warned else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
