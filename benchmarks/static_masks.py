"""How far does the fit's static refinement get, and do the calibration prompts pick masks well?

Per toy: moves evenly spaced skipping's computed steps one at a time while the error on the
store's calibration runs falls (`calibration.static_refine`, the fit's own refinement, re-runs
of the model), then scores the refined mask and any `--mask` given on the calibration and on
the holdout runs of the same store. A mask that wins on the calibration runs and loses on the
holdout runs says the calibration prompts are too few to choose between masks that close.

    OMP_NUM_THREADS=1 python benchmarks/static_masks.py --model toy-wan --db runs/cache/toy-wan.duckdb \\
        --forecast taylor --target 0.5 --mask 0,2,4,7,10,13,15,17,20,22,24,25,27,28,29
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from calibration.fit import _Objectives, uniform_point
from calibration.fitdata import load_fit_data
from calibration.static_refine import mask_schedule, refine_static
from policies import OperatingPoint, Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--db", required=True, help="the model's calibration store (read only)")
    parser.add_argument("--forecast", default="taylor", choices=("none", "linear", "taylor"))
    parser.add_argument("--target", type=float, default=0.5, help="fraction of the steps computed")
    parser.add_argument("--evals", type=int, default=160, help="refinement budget (the fit's default is 40)")
    parser.add_argument("--mask", action="append", default=[], help="computed steps, comma-separated (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_fit_data(args.db)
    n = data.num_steps
    objectives = _Objectives("rerun", data, data.sensitivity_table(), args.model)
    calib, holdout = objectives.for_split("calib"), objectives.for_split("holdout")
    predictors = {m: Predictor() for m in ("none", "linear", "taylor")}  # static points: no score is read
    start = replace(uniform_point(args.target, n, "evenly spaced"), forecast=args.forecast)
    found = refine_static(calib, predictors, start, n, args.evals)
    rows = [("evenly spaced", start), (f"refined ({found.moves} moves, {found.evaluations} evaluations)", found.point)]
    rows += [(f"--mask {m}", OperatingPoint("mask", schedule=mask_schedule({int(x) for x in m.split(",")}, n),
                                            forecast=args.forecast)) for m in args.mask]
    print(f"{args.model}: static masks at {args.target:g} of {n} steps, forecast {args.forecast}; RMS error of the "
          f"final latents against full compute ({len(calib.runs)} calibration runs, {len(holdout.runs)} holdout runs)")
    print("| mask | computes | calibration error | holdout error |")
    print("|---|---|---|---|")
    for label, point in rows:
        steps = sorted(point.schedule.steps(n))
        print(f"| {label} | {','.join(map(str, steps))} | {calib.evaluate(predictors, point).error:.4f} | "
              f"{holdout.evaluate(predictors, point).error:.4f} |")


if __name__ == "__main__":
    main()
