"""Where replay and re-runs part: single skips, runs of skips and separated skips, by reuse mode.

`benchmarks/replay_vs_rerun.py` ranks whole candidates; this one takes them apart. On the
store's calibration runs it scores small static masks both ways — every step computed but

* one skip at step s (``L=1``), two and three consecutive skips from s (``L=2``, ``L=3``): how
  one skip, and skips of one reference, compound;
* three skips two steps apart from s (``alt3``): skips of different references, and a forecast's
  second point two steps back;
* skips at s, s + 1 and s + 3 (``h=3``): the last one forecasts from s + 2 and s − 1, three
  steps apart, where the store measured the forecast from two neighbours;

for s early, mid-way and late, for plain reuse and the module-level forecast, and prints
replay ÷ re-run for each. With the store's propagation gain measured by a real plain-reuse skip
(`collect --propagation`, the default "cache" gain), ``none L=1`` is 1 by construction at the
measured positions (between them G is interpolated); the other cells show what replay's error
model still misses. toy-wan, 30 steps: none L=1 1.00–1.05; taylor L=1 0.43–0.76 (G is measured
with plain reuse, and a forecast's error propagates further); alt3 0.64–1.09. toy-cogvideox,
30 steps, this store generation (a gain per mode):

    mode    from step     L=1     L=2     L=3    alt3     h=3
    none            4    1.73    1.54    1.32    0.96    1.28
    none           14    1.00    1.18    1.15    0.63    0.95
    none           24    1.00    1.06    1.07    0.67    0.80
    linear          4    1.24    1.13    0.92    1.18    1.08
    linear         14    1.00    1.00    0.98    1.00    0.97
    linear         24    1.00    1.07    1.06    1.13    1.18
    taylor          4    1.38    1.29    1.08    1.23    1.23
    taylor         14    1.00    1.01    0.99    1.14    1.05
    taylor         24    1.00    1.16    1.20    1.18    1.20

A forecast whose second point lies h steps back (``h=3``, ``alt3``) replays within 0.97–1.23 of
its re-run from the store's r − 1 measurement as it is; widening it by the curvature term
(docs/design.md, "Fit and export") overshot to 1.11–1.73, so replay does not.

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

#: the skipped steps' offsets from the start step
PATTERNS = {"L=1": (0,), "L=2": (0, 1), "L=3": (0, 1, 2), "alt3": (0, 2, 4), "h=3": (0, 1, 3)}


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
            for offsets in PATTERNS.values():
                skipped = {start + o for o in offsets}
                point = mask_point(tuple(s for s in range(n) if s not in skipped), n, mode)
                ratio = replay.evaluate(predictors, point).error / max(rerun.evaluate(predictors, point).error, 1e-12)
                cells.append(f"{ratio:>7.2f}")
            print(f"{mode:<7} {start:>9} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
