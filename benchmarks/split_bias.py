"""Is a reuse mode's error on the calibration runs a fair guide to its error on the holdout runs?

`fit` chooses each operating point among its candidates (the search's points, evenly spaced
skipping in every reuse mode, the refined static schedule) by their error on the store's
calibration runs, and judges only the chosen point against its static twin on the holdout runs.
That is sound when the calibration runs rank the modes as other prompts do. This re-runs evenly
spaced skipping at 0.7, 0.5 and 0.4 of the compute in every reuse mode — masks no fit selected,
so no winner's curse — and the given policies' points, on the store's calibration and holdout
runs, and prints each one's RMS error on both and their ratio.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/split_bias.py --model toy-cogvideox \\
        --db runs/cache/toy-cogvideox.duckdb [--policy policies/toy-cogvideox.json ...]

Measured on the README's stores (8 calibration, 6 holdout runs), holdout ÷ calibration error:

    | toy           | evenly spaced 0.7: none / linear / taylor | 0.5               | 0.4               | shipped quality / balanced / fast |
    | toy-cogvideox | 1.01 / 1.00 / 1.02                        | 1.18 / 1.68 / 1.66 | 1.15 / 1.22 / 1.19 | 1.13 / 0.89 / 1.15                |
    | toy-wan       | 1.04 / 1.57 / 1.67                        | 0.81 / 0.89 / 0.84 | 0.77 / 0.64 / 0.60 | 0.72 / 0.75 / 1.52                |
    | toy-ltx       | 1.09 / 1.69 / 1.53                        | 1.17 / 1.29 / 1.35 | 1.13 / 1.21 / 1.18 | 1.48 / 1.09 / 0.99                |

The ratio moves with the mask more than with the mode (on toy-cogvideox evenly spaced at 0.5
is 1.7× worse on the holdout in both forecast modes, its shipped `balanced` 0.89×): between two
candidates 8 runs can err by a factor of 1.5–2, several dB, and a choice made on them can turn
on it. A re-run fit of toy-cogvideox's store with 200 trials (`fit --trials 200 --seed 0 --knots
12 --objective rerun`) shipped static "linear" masks whose calibration errors 0.0065 / 0.0142 /
0.0229 became 0.0082 / 0.0252 / 0.0361 on the holdout (`--policy` of it), and benched 52.52 /
42.45 / 40.68 dB at 0.7 / 0.5 / 0.4 (bench's 4 held-out prompts × 2 seeds) against the shipped
policy's 53.16 / 46.20 / 39.99, whose `balanced` ("taylor", K = 2) errs 0.0199 on the
calibration runs and 0.0178 on the holdout.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from calibration.fit import TARGETS, _Objectives, uniform_point
from calibration.fitdata import load_fit_data
from policies import Policy, Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="toy-cogvideox")
    parser.add_argument("--db", type=Path, required=True, help="the store (copied first; never written)")
    parser.add_argument("--policy", type=Path, action="append", default=[], help="a policy whose points to add")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="split-bias-"))
    shutil.copy(args.db, work / "read.duckdb")
    data = load_fit_data(work / "read.duckdb", args.model)
    table = data.sensitivity_table()
    objectives = _Objectives("rerun", data, table, args.model)
    calib, holdout = objectives.for_split("calib"), objectives.for_split("holdout")
    if holdout is None:
        raise SystemExit(f"{args.db} has no holdout runs; collect with --holdout-fraction above 0")
    predictor = Predictor(1.0, 1.0, 0.0)  # a static point never reads it
    rows = []
    for name, target in TARGETS.items():
        for mode in ("none", "linear", "taylor"):
            point = replace(uniform_point(target, data.num_steps, name), forecast=mode)
            rows.append((f"evenly spaced {target}", mode, "—", point, predictor))
    for path in args.policy:
        policy = Policy.load(path)
        predictors = dict(policy.predictors) if policy.predictors else policy.predictor
        for point in policy.operating_points:
            if point.name != "paper":
                rows.append((f"{path.name} {point.name}", point.forecast, point.max_skips if not point.static else "—",
                             point, predictors))
    print(f"\n## {args.model}: RMS error on the calibration ({len(data.run_ids('calib'))}) and holdout "
          f"({len(data.run_ids('holdout'))}) runs\n")
    print("| point | forecast | K | NFE | calibration | holdout | holdout ÷ calibration |")
    print("|---|---|---|---|---|---|---|")
    for label, mode, k, point, predictors in rows:
        c, h = calib.evaluate(predictors, point), holdout.evaluate(predictors, point)
        print(f"| {label} | {mode} | {k} | {c.nfe_fraction:.3f} | {c.error:.4f} | {h.error:.4f} | {h.error / c.error:.2f} |")


if __name__ == "__main__":
    main()
