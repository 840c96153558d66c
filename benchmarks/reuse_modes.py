"""What a skipped step reuses, at the same compute mask: PSNR of decoded frames against full compute.

    OMP_NUM_THREADS=1 python benchmarks/reuse_modes.py --model toy-wan --prompts 2

For each mask every method skips exactly the same steps, so only the reuse differs:

* masks ``taylorseer/2`` and ``taylorseer/3``: diffusers TaylorSeer's own schedule at cache
  interval 2 and 3 (its warm-up steps 0–2, then one step in N: 16 and 12 of 30 steps);
* masks ``even/0.5`` and ``even/0.4``: evenly spaced steps (the bench's `uniform`), where
  TaylorSeer cannot follow (its schedule is an interval);
* masks ``seer2-last`` (TaylorSeer's interval-2 mask without its last computed step: 15 of 30)
  and ``warmup3+even`` (steps 0–2, then evenly spaced up to 15 of 30): how much of TaylorSeer's
  lead at about half compute is its mask.

Methods: SenCache's reuse modes ``plain`` (forecast "none"), ``linear`` (residual, timestep
units), ``taylor/t`` and ``taylor/step`` (order 1, in timestep or step units), ``taylor2/...``
(order 2), and diffusers' ``taylorseer`` (order 1, step units, on its own masks only). Prompts
are the toy's held-out prompts (never trained on), seed 0.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

import sencache
from calibration.baselines._common import evenly_spaced
from calibration.baselines.taylorseer import apply_taylorseer
from calibration.bench_report import psnr
from calibration.models import load_model
from calibration.zoo.data import heldout_prompts

from benchmarks.taylor_cost import mask_policy, taylorseer_steps

MODES = {"plain": ("none", 1, "step"), "linear": ("linear", 1, "step"), "taylor/t": ("taylor", 1, "timestep"),
         "taylor/step": ("taylor", 1, "step"), "taylor2/t": ("taylor", 2, "timestep"),
         "taylor2/step": ("taylor", 2, "step")}


def frames(loaded, prompt: str, steps: int) -> np.ndarray:
    with torch.no_grad():
        out = loaded.pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), output_type="np",
                          **loaded.call_kwargs(num_inference_steps=steps))
    return np.asarray(out.frames[0], dtype=np.float32)


def run(model: str, steps: int, n_prompts: int) -> None:
    torch.set_num_threads(1)
    loaded = load_model(model)
    prompts = heldout_prompts()[:n_prompts]
    masks = {f"taylorseer/{k}": (taylorseer_steps(steps, k), k) for k in (2, 3)}
    masks.update({f"even/{f:g}": (evenly_spaced(steps, f), None) for f in (0.5, 0.4)})
    seer = taylorseer_steps(steps, 2)
    masks["seer2-last"] = (seer - {max(seer)}, None)
    half = steps // 2
    masks["warmup3+even"] = ({0, 1, 2} | {int(round(v)) for v in np.linspace(3, steps - 1, half - 3)}, None)
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    for prompt in prompts:
        reference = frames(loaded, prompt, steps)
        for label, (computed, interval) in masks.items():
            for mode, (forecast, order, units) in MODES.items():
                policy = mask_policy(loaded, computed, steps, forecast)
                sencache.apply(loaded.pipe, policy, taylor_order=order, taylor_units=units)
                scores[(label, mode)].append(psnr(frames(loaded, prompt, steps), reference))
                sencache.remove(loaded.pipe)
            if interval is not None:
                handle = apply_taylorseer(loaded.pipe, interval)
                scores[(label, "taylorseer")].append(psnr(frames(loaded, prompt, steps), reference))
                handle.remove()
    methods = list(MODES) + ["taylorseer"]
    print(f"model {model}, {steps} steps, {len(prompts)} held-out prompts, seed 0: mean PSNR (dB) of decoded "
          "frames against full compute")
    print(f"{'mask':<15} {'computed':>9} " + " ".join(f"{m:>12}" for m in methods))
    for label, (computed, _) in masks.items():
        cells = [f"{np.mean(scores[(label, m)]):>12.2f}" if (label, m) in scores else f"{'-':>12}" for m in methods]
        print(f"{label:<15} {len(computed):>4}/{steps:<4} " + " ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy-wan")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=2, help="how many held-out prompts (default: %(default)s)")
    args = parser.parse_args()
    run(args.model, args.steps, args.prompts)


if __name__ == "__main__":
    main()
