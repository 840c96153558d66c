"""Does replay tell a measured mask from its one-step neighbours as re-runs do?

A replay fit's static refinement starts at the fit's evenly spaced candidates (the store re-ran
them on every run: the *anchors*, `calibration.mask_runs.anchor_masks`) and moves one computed
step at a time while replay's error falls. At the anchor replay takes the measured error; at a
neighbour it takes its own estimate. When the estimate is biased (on toy-cogvideox "linear" at
0.5 it replayed the re-run fit's refined mask at 1.2× its re-run) every neighbour looks worse
than the anchor and the walk never leaves it; replay now scales a neighbour's estimate by its
anchor's measured ÷ estimated error (`fit --replay-local-moves`). This re-runs one-step
neighbours of every anchor on the store's calibration runs and prints, per mode, how often
replay orders neighbour and anchor as the re-run does (on the mean error over runs, as the fit
decides), with the neighbour's estimate as it is, and with it scaled by the anchor's measured ÷ estimated error on the same run
("local": the comparison is then made estimate against estimate), and the RMS of log(replay ÷
re-run) over the runs.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/neighbor_masks.py --model toy-cogvideox \
        --db runs/cache/toy-cogvideox.duckdb --per-anchor 4 --moves 2
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/neighbor_masks.py --model toy-cogvideox \
        --db runs/dense/toy-cogvideox.duckdb --around 0,2,4,6,8,10,12,15,17,19,21,23,25,27,29 --mode linear

The second form takes one mask (here evenly spaced at 0.5 in toy-cogvideox) and every one-step
neighbour of it: replay orders 23 of the 26 against it as re-runs do on a store with the gain
at 8 positions (it puts all 26 above the mask, re-runs put three below, one of them 14 % below:
the re-run fit's `balanced`), and 25 of 26 on a store with the gain at every step
(`collect --propagation 30`).

Measured (stores with the gain at 8 positions, 8 calibration runs, 4 neighbours per anchor and per number of
moves, 9 anchors: 12 neighbours per mode and row), RMS log(replay ÷ re-run) estimate → local,
and how often the order against the anchor is right, estimate → local:

    | toy           | moves | none                      | linear                    | taylor                    |
    | toy-wan       | 1     | 0.28 → 0.15, 0.25 → 0.42  | 0.68 → 0.09, 0.25 → 0.33  | 0.50 → 0.08, 0.42 → 0.33  |
    | toy-wan       | 2     | 0.27 → 0.08, 0.75 → 0.83  | 0.58 → 0.28, 0.58 → 0.58  | 0.57 → 0.37, 0.67 → 0.58  |
    | toy-cogvideox | 1     | 0.21 → 0.10, 0.67 → 0.75  | 0.35 → 0.11, 0.67 → 0.58  | 0.27 → 0.13, 0.67 → 0.83  |
    | toy-cogvideox | 2     | 0.23 → 0.07, 0.75 → 0.92  | 0.37 → 0.31, 0.42 → 0.33  | 0.38 → 0.37, 0.75 → 0.83  |
    | toy-ltx       | 1     | 0.45 → 0.24, 0.33 → 0.42  | 0.61 → 0.06, 0.83 → 0.83  | 0.62 → 0.02, 0.75 → 0.83  |
    | toy-ltx       | 2     | 0.50 → 0.06, 0.25 → 0.42  | 0.65 → 0.44, 0.75 → 0.75  | 0.64 → 0.48, 0.92 → 0.67  |

The scaling brings the level of a neighbour's error close (RMS 0.02–0.24 at one move): what a
comparison with *another* kind of candidate needs. Which of two neighbours is better is a
difference of a few per cent, and replay orders a neighbour against its anchor right on 0.33–0.92
of them either way on these stores, whose gains were measured at 8 positions: a neighbour's
skips fall between them, and the interpolated gain is what misorders it. With the gain measured
at every step (`collect --propagation 30`) replay orders 25 of the 26 one-step neighbours of
toy-cogvideox's evenly spaced 0.5 "linear" mask as re-runs do (23 of 26 before), and the scaling
is what lets a replay fit's refinement act on that order (docs/design.md, "Fit and export").

The store is copied first; the one given is never written.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.replay_vs_rerun import CandidateBench
from calibration.mask_runs import parse_mask
from policies import OperatingPoint, StaticSchedule


def neighbours(computed: frozenset[int], num_steps: int) -> list[frozenset[int]]:
    """The masks one interior computed step moved by one position (first and last stay)."""
    out = []
    for i in sorted(computed):
        if i in (0, num_steps - 1):
            continue
        for j in (i - 1, i + 1):
            if 0 < j < num_steps - 1 and j not in computed:
                out.append(frozenset(computed - {i} | {j}))
    return out


def static_point(computed: frozenset[int], num_steps: int, mode: str) -> OperatingPoint:
    positions = tuple(i / (num_steps - 1) for i in sorted(computed))
    return OperatingPoint("neighbour", schedule=StaticSchedule(positions), forecast=mode)


def every_neighbour(bench: CandidateBench, mask: frozenset[int], mode: str) -> None:
    """Print replay's and the re-run's error of each one-step neighbour of `mask` relative to the
    mask's own (replay without any measured error on either side), and how many orders agree."""
    n = bench.data.num_steps
    raw = copy.copy(bench.replay)
    raw.measured = {}

    def both(m: frozenset[int]) -> tuple[float, float]:
        point = static_point(m, n, mode)
        return raw.evaluate(bench.predictors, point).error, bench.rerun.evaluate(bench.predictors, point).error

    replay0, rerun0 = both(mask)
    print(f"\n## {bench.data.model_name}: every one-step neighbour of {sorted(mask)} ({mode}), ÷ the mask's own error\n")
    print("| steps changed | replay | re-run | same order |")
    print("|---|---|---|---|")
    agree = 0
    near = neighbours(mask, n)
    for m in tqdm(near, desc="neighbours"):
        replay, rerun = both(m)
        same = (replay < replay0) == (rerun < rerun0)
        agree += same
        print(f"| {sorted(mask ^ m)} | {replay / replay0:.3f} | {rerun / rerun0:.3f} | {'yes' if same else 'no'} |")
    print(f"\nreplay orders {agree} of {len(near)} neighbours against the mask as the re-runs do")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="toy-cogvideox")
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--per-anchor", type=int, default=6, help="neighbours drawn per anchor (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--moves", type=int, default=1, choices=(1, 2), help="steps moved: 1, or 1 and 2")
    parser.add_argument("--around", default=None, metavar="STEPS",
                        help="instead: every one-step neighbour of this mask (computed steps, comma-separated)")
    parser.add_argument("--mode", default="linear", help="the reuse mode of --around (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = CandidateBench.open(args.model, args.db, Path(tempfile.mkdtemp(prefix="neighbour-masks-")))
    if args.around:
        every_neighbour(bench, parse_mask(args.around), args.mode)
        return
    n = bench.data.num_steps
    raw = copy.copy(bench.replay)
    raw.measured = {}
    ids = bench.data.run_ids("calib")
    masks = bench.data.mask_errors[bench.data.mask_errors["run_id"].isin(ids)]
    per_key = masks.groupby(["mode", "mask"])["run_id"].nunique()
    anchors = [(m, k) for (m, k), runs in per_key.items() if runs == len(ids)]
    rng = np.random.default_rng(args.seed)
    rows = []
    for mode, key in tqdm(anchors, desc="anchors"):
        anchor = parse_mask(key)
        measured = masks[(masks["mode"] == mode) & (masks["mask"] == key)].set_index("run_id")["error"]
        measured = np.array([measured[r] for r in ids])
        estimated_anchor = np.array(raw.evaluate(bench.predictors, static_point(anchor, n, mode)).per_run_error)
        near = [(1, m) for m in neighbours(anchor, n)]
        if args.moves > 1:
            two = {m2 for m in neighbours(anchor, n) for m2 in neighbours(m, n)} - {m for _, m in near} - {anchor}
            near += [(2, m) for m in sorted(two, key=sorted)]
        by_moves = {k: [m for d, m in near if d == k] for k in range(1, args.moves + 1)}
        picked = [(k, ms[int(i)]) for k, ms in by_moves.items()
                  for i in rng.choice(len(ms), size=min(args.per_anchor, len(ms)), replace=False)]
        for moves, mask in picked:
            point = static_point(mask, n, mode)
            rerun = np.array(bench.rerun.evaluate(bench.predictors, point).per_run_error)
            estimate = np.array(raw.evaluate(bench.predictors, point).per_run_error)
            local = estimate * measured / estimated_anchor
            rows.append({"mode": mode, "moves": moves, "fraction": len(anchor) / n, "rerun": rerun, "estimate": estimate,
                         "local": local, "anchor": measured})
    print(f"\n## {args.model}: one-step neighbours of the store's anchors, {len(ids)} calibration runs\n")
    print("| mode | moves | neighbours | re-run better than anchor | order right: estimate | local | RMS log(pred/re-run): estimate | local |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, moves in sorted({(r["mode"], r["moves"]) for r in rows}):
        sel = [r for r in rows if r["mode"] == mode and r["moves"] == moves]
        truth = np.array([r["rerun"].mean() < r["anchor"].mean() for r in sel])
        right = {how: np.mean([(r[how].mean() < r["anchor"].mean()) == t for r, t in zip(sel, truth)])
                 for how in ("estimate", "local")}
        rms = {how: float(np.sqrt(np.mean(np.concatenate([np.log(r[how] / r["rerun"]) ** 2 for r in sel]))))
               for how in ("estimate", "local")}
        print(f"| {mode} | {moves} | {len(sel)} | {truth.sum()} | {right['estimate']:.2f} | {right['local']:.2f} | "
              f"{rms['estimate']:.3f} | {rms['local']:.3f} |")


if __name__ == "__main__":
    main()
