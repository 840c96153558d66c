"""Where replay and re-runs part: single skips, runs of skips and separated skips, by reuse mode.

`benchmarks/replay_vs_rerun.py` ranks whole candidates; this one takes them apart. On the
store's calibration runs it scores small static masks both ways — every step computed but

* one skip at step s (``L=1``), two and three consecutive skips from s (``L=2``, ``L=3``): how
  one skip, and skips of one reference, compound;
* three skips two steps apart from s (``alt3``): skips of different references;

for s early, mid-way and late, for plain reuse and the module-level forecast, and prints
replay ÷ re-run for each. With the store's propagation gain measured by a real plain-reuse skip
(`collect --propagation`, the default "cache" gain), ``none L=1`` is 1 by construction at the
measured positions (between them G is interpolated); the other cells show what replay's error
model still misses. toy-wan, 30 steps: none L=1 1.00–1.05; taylor L=1 0.43–0.76 (G is measured
with plain reuse, and a forecast's error propagates further); alt3 0.64–1.09.

    OMP_NUM_THREADS=1 python benchmarks/replay_masks.py --model toy-wan --db runs/cache/toy-wan.duckdb
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.headroom_probe import mask_point
from calibration.fit import _Objectives
from calibration.fitdata import load_fit_data
from calibration.modefit import fit_modes
from policies.operating import FORECASTS

PATTERNS = {"L=1": (1, 1), "L=2": (2, 1), "L=3": (3, 1), "alt3": (3, 2)}  # (skips, stride)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="toy-wan")
    parser.add_argument("--db", type=Path, required=True, help="the model's calibration store (read only)")
    parser.add_argument("--modes", default="none,taylor", help="reuse modes to take apart (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_fit_data(args.db, args.model)
    table = data.sensitivity_table()
    fits = fit_modes(data.mode_pairs(table), FORECASTS)
    predictors = {m: fits[m].predictor() for m in fits}
    replay = _Objectives("replay", data, table, args.model).for_split("calib")
    rerun = _Objectives("rerun", data, table, args.model).for_split("calib")
    n = int(data.num_steps)
    starts = (max(1, n // 7), n // 2 - 1, n - 6)
    print(f"{args.model}: replay / re-run of small static masks on the calibration runs ({n} steps)")
    print(f"{'mode':<7} {'from step':>9} " + " ".join(f"{p:>7}" for p in PATTERNS))
    for mode in args.modes.split(","):
        for start in starts:
            cells = []
            for count, stride in PATTERNS.values():
                skipped = set(range(start, start + count * stride, stride))
                point = mask_point(tuple(s for s in range(n) if s not in skipped), n, mode)
                ratio = replay.evaluate(predictors, point).error / max(rerun.evaluate(predictors, point).error, 1e-12)
                cells.append(f"{ratio:>7.2f}")
            print(f"{mode:<7} {start:>9} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
