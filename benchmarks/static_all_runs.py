"""Would a static schedule chosen on *every* training run transfer to held-out prompts?

`fit` refines the best static schedule on the store's calibration runs only (8 of 14 on the
toys), and 8 runs misorder close masks (`benchmarks/split_bias.py`). This script refines the
evenly spaced "taylor" mask at half the steps on all the store's runs (calibration + holdout:
the most training data a fit could use), and on the calibration runs alone, then scores each
on the headroom probe's held-out prompts (PSNR of decoded frames against full compute) beside
the probe's best mask, a score-driven point shaped like the all-runs mask
(`calibration.shapes.mask_shaped_point`, its level bisected to half the steps on the replay of
the calibration runs) and the shipped `balanced` point; beside each, the same PSNR on the
store's own runs (their prompts and seeds; calibration and holdout apart) and the RMS latent
errors of real re-runs that `fit` scores them by, under the shipped policy's predictors.

    OMP_NUM_THREADS=1 python benchmarks/static_all_runs.py --model toy-wan --db runs/cache/toy-wan.duckdb \
        [--evals 80] [--probe-mask 0,2,4,7,10,13,15,17,20,22,24,25,27,28,29] [--policy P]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from calibration.bench_report import psnr
from calibration.fit import _Objectives
from calibration.fitdata import load_fit_data
from calibration.models import load_model
from calibration.objectives import RerunObjective
from calibration.search import SearchSpace
from calibration.shapes import bisect, mask_shaped_point
from calibration.static_refine import refine_static
from calibration.zoo.data import heldout_prompts
from headroom_probe import _Runner, mask_point
from policies import OperatingPoint, Policy, evenly_spaced
from policies.operating import FORECASTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy-wan")
    parser.add_argument("--db", required=True, help="the model's calibration store")
    parser.add_argument("--evals", type=int, default=80, help="evaluations each refinement may spend")
    parser.add_argument("--prompts", type=int, default=8, help="the first P held-out prompts (the probe's)")
    parser.add_argument("--policy", default=None, help="the policy whose predictors and `balanced` point to use "
                        "(default: the shipped policies/<model>.json)")
    parser.add_argument("--probe-mask", default="0,2,4,7,10,13,15,17,20,22,24,25,27,28,29",
                        help="a mask to score beside them (default: the headroom probe's best on toy-wan)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_fit_data(args.db, args.model)
    policy = Policy.load(args.policy or f"policies/{args.model}.json")
    predictors = {m: policy.predictors.get(m, policy.predictor) for m in FORECASTS}
    n = data.num_steps
    objectives = _Objectives("rerun", data, policy.sensitivity, args.model, False, 0)
    calib, holdout = objectives.for_split("calib"), objectives.for_split("holdout")
    every = RerunObjective(calib.pipe, policy.sensitivity, calib.runs + holdout.runs, model_name=args.model)
    evenly = OperatingPoint("evenly", schedule=evenly_spaced(0.5, n), forecast="taylor")
    probe = mask_point(tuple(int(s) for s in args.probe_mask.split(",")), n, "taylor")
    on_all = refine_static(every, predictors, evenly, n, args.evals).point
    on_calib = refine_static(calib, predictors, evenly, n, args.evals).point
    replay = _Objectives("replay", data, policy.sensitivity, args.model, False, 0).for_split("calib")
    balanced = policy.operating_point("balanced")
    space = SearchSpace.from_scores(np.asarray(balanced.eps.values if balanced.eps else [1e-3, 1.0]), 12, n,
                                    forecasts=("none", "linear", "taylor"))
    space = SearchSpace(space.knots, space.log_lo - 6, space.log_hi + 6, n, space.max_k, space.forecasts,
                        space.skip_costs)

    def nfe_of(point: OperatingPoint) -> float:
        return replay.evaluate(predictors, point).nfe_fraction

    level = bisect(lambda lv: mask_shaped_point(on_all, space, lv, "shaped"), space, nfe_of, 0.5, evals=12)
    shaped = mask_shaped_point(on_all, space, level, "shaped")
    loaded = load_model(args.model)
    loaded.pipe.set_progress_bar_config(disable=True)
    kwargs = loaded.call_kwargs(num_inference_steps=n)
    kwargs["num_inference_steps"] = n
    run = _Runner(loaded, policy, heldout_prompts()[: args.prompts], kwargs, 0)
    reference, _ = run.frames(None)
    store_runs = _StoreRuns(loaded, policy, calib.runs + holdout.runs, kwargs)
    store_reference = store_runs.frames(None)
    print(f"{args.model}: {len(calib.runs)} calibration + {len(holdout.runs)} holdout runs; "
          f"PSNR on {args.prompts} held-out prompts at {n} steps")
    rows = [("evenly spaced", evenly), ("probe mask", probe), ("refined on all runs", on_all),
            ("refined on calibration runs", on_calib), ("score shaped like all-runs", shaped),
            (f"shipped {balanced.name!r}", balanced)]
    for label, point in rows:
        frames, compute = run.frames(point)
        value = float(np.mean([psnr(f, r) for f, r in zip(frames, reference)]))
        where = "" if not point.static else f" computes {sorted(point.schedule.steps(n))}"
        errors = "  ".join(f"{name} {obj.evaluate(predictors, point).error:.4f}"
                           for name, obj in (("calib", calib), ("holdout", holdout)))
        own = np.array([psnr(f, r) for f, r in zip(store_runs.frames(point), store_reference)])
        print(f"  {label:30s} {value:6.2f} dB  compute {np.mean(compute):.3f}  on the store's runs: PSNR calib "
              f"{own[:len(calib.runs)].mean():.2f} holdout {own[len(calib.runs):].mean():.2f}, RMS error {errors}"
              f"{where}")


class _StoreRuns:
    """The store's runs (each its own prompt and seed) in one batched call, decoded."""

    def __init__(self, loaded, policy: Policy, runs: list, kwargs: dict) -> None:
        self.runner = _Runner(loaded, policy, [r.prompt for r in runs], kwargs, 0)
        self.seeds = [int(r.seed) for r in runs]

    def frames(self, point: OperatingPoint | None) -> list[np.ndarray]:
        generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        return self.runner.frames(point, generator=generators)[0]


if __name__ == "__main__":
    main()
