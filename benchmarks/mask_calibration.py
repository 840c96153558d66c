"""How well does replay's calibrated compounding fit the store's own whole-mask re-runs?

`collect --propagation` re-runs 12 static masks per run (`calibration.mask_runs`) and `fit`
calibrates, per reuse mode, a run-length exponent β and a norm q across runs of skips on the
calibration runs' masks (`calibration.replay.fit_corrections`). This prints, per mode, the
median replay ÷ re-run of those masks by mean run length and by compute fraction, uncalibrated
("segments": β = 0, q = 2) and calibrated, and the RMS of the log ratio — the scatter that is
left for a fit to trip on. On toy-cogvideox (the README's store): medians 0.58–1.00 → 0.82–1.19
by run length, RMS of the log ratio 0.46–0.55 → 0.27–0.39.

    OMP_NUM_THREADS=1 python benchmarks/mask_calibration.py --model toy-cogvideox --db runs/cache/toy-cogvideox.duckdb

The store is copied first; the one given is never written.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from calibration.fit import _Objectives
from calibration.fitdata import load_fit_data
from calibration.mask_runs import parse_mask
from calibration.replay import SegmentCorrection, compound_runs


def ratios(model: str, db: Path) -> tuple[pd.DataFrame, dict[str, SegmentCorrection]]:
    """Per calibration-run mask: its mode, mean run length, compute fraction, and log(replay ÷
    re-run) uncalibrated and calibrated; and the corrections themselves."""
    work = Path(tempfile.mkdtemp(prefix="mask-calibration-"))
    shutil.copy(db, work / "read.duckdb")
    data = load_fit_data(work / "read.duckdb", model)
    objectives = _Objectives("replay", data, data.sensitivity_table(), model)
    ids = data.run_ids("calib")
    replay = objectives._replay(ids, {})
    corrections = objectives.corrections()
    masks = data.mask_errors[data.mask_errors["run_id"].isin(ids)]
    rows = []
    for run_id, mode, key, error in zip(masks["run_id"], masks["mode"], masks["mask"], masks["error"]):
        computed = parse_mask(key)
        parts = replay.mask_segments(run_id, mode, computed)
        if parts is None or not error > 0:
            continue
        sums, lengths = parts
        rows.append({"mode": mode, "run_length": float(lengths.mean()) if len(lengths) else 0.0,
                     "fraction": len(computed) / data.num_steps,
                     "uncalibrated": np.log(compound_runs(sums, lengths, SegmentCorrection()) / error),
                     "calibrated": np.log(compound_runs(sums, lengths, corrections.get(mode, SegmentCorrection()))
                                          / error)})
    return pd.DataFrame(rows), corrections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="toy-cogvideox")
    parser.add_argument("--db", type=Path, required=True, help="the model's calibration store (read only)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    df, corrections = ratios(args.model, args.db)
    if df.empty:
        raise SystemExit(f"{args.db}: no whole-mask re-runs on its calibration runs; collect with --mask-runs")
    for mode, c in sorted(corrections.items()):
        print(f"{mode}: run-length exponent {c.length_exponent:.2f}, norm {c.norm:.2f}, {c.masks} masks")
    median = lambda x: f"{np.exp(np.median(x)):.2f} ({len(x)})"  # noqa: E731
    for column, bins, label in (("run_length", [0, 1.5, 2.5, 99], "mean run length"),
                                ("fraction", [0, 0.45, 0.6, 1.0], "compute fraction")):
        print(f"\nmedian replay / re-run by {label} (masks): uncalibrated, calibrated")
        grouped = df.assign(bin=pd.cut(df[column], bins)).groupby(["mode", "bin"], observed=True)
        print(grouped[["uncalibrated", "calibrated"]].agg(median).to_string())
    print("\nRMS of log(replay / re-run):")
    print(df.groupby("mode")[["uncalibrated", "calibrated"]].agg(lambda x: f"{np.sqrt((x**2).mean()):.2f}").to_string())


if __name__ == "__main__":
    main()
