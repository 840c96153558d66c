"""Does the stored sensitivity score rank the measured caching errors? (Spearman ρ)

    PYTHONPATH=. python benchmarks/sensitivity_correlation.py --model toy-wan --db /tmp/toy-wan.duckdb

Collects into --db first when runs are missing (collect resumes, so a second call only reads).
For every (reference step i, lag k) in `cache_errors` the score is the paper's
S = J_x(t_i)·‖x_{i+k} − x_i‖ + J_t(t_i)·|t_{i+k} − t_i| with J from the trajectory (or
reference) estimator at the reference step i; it is compared with the measured residual-reuse
error (the error SenCache makes) and the plain output-reuse error, by Spearman ρ, per split and
per lag; plus how large output reuse's error is against residual reuse's (median ratio), and at
lag 1 the peers' signals (TeaCache's modulated-input change, the first-block residual change,
MagCache's |1 − ratio|) against the same error.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy.stats import spearmanr


def scored_errors(store, estimator: str) -> pd.DataFrame:
    """cache_errors joined with the run's split, the J at the reference step, and the score S."""
    errors = store.cache_errors()
    sens = store.sensitivities(estimator=estimator)[["run_id", "step", "J_x", "J_t"]]
    runs = store.runs()[["run_id", "split"]]
    frame = errors.merge(sens, on=["run_id", "step"], how="inner").merge(runs, on="run_id")
    frame["score"] = frame["J_x"] * frame["dx"] + frame["J_t"] * frame["dt"]
    return frame.dropna(subset=["score", "residual_error", "output_error"])


def _rho(a: pd.Series, b: pd.Series) -> float:
    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def report(frame: pd.DataFrame) -> list[str]:
    lines = [f"{'rows':>22}  {'n':>5}  {'ρ(S, residual err)':>18}  {'ρ(S, output err)':>16}  "
             f"{'ρ(Δx, residual err)':>19}  {'output/residual err':>19}"]
    groups = [("all", frame)] + [(f"split={s}", g) for s, g in frame.groupby("split")]
    groups += [(f"lag={k}", g) for k, g in frame.groupby("lag")]
    for name, g in groups:
        ratio = float(np.median(g["output_error"] / g["residual_error"]))
        lines.append(f"{name:>22}  {len(g):>5}  {_rho(g['score'], g['residual_error']):>18.3f}  "
                     f"{_rho(g['score'], g['output_error']):>16.3f}  {_rho(g['dx'], g['residual_error']):>19.3f}  "
                     f"{ratio:>19.2f}")
    return lines


def peer_report(store, frame: pd.DataFrame) -> list[str]:
    """Lag 1 only: the peers' signals of step i+1 (change from step i) against the same error."""
    steps = store.steps()[["run_id", "step", "teacache_signal", "first_block_change", "mag_ratio"]].copy()
    steps["step"] -= 1  # the signal at i+1 describes the change since i: align it with reference step i
    lag1 = frame[frame["lag"] == 1].merge(steps, on=["run_id", "step"], how="inner")
    lag1["mag_deviation"] = (1.0 - lag1["mag_ratio"]).abs()
    lines = ["lag 1, Spearman ρ with the residual-reuse error (same rows):"]
    for name in ("score", "teacache_signal", "first_block_change", "mag_deviation"):
        ok = lag1[[name, "residual_error"]].dropna()
        lines.append(f"  {name:>20}: {_rho(ok[name], ok['residual_error']):.3f}  (n={len(ok)})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-wan")
    parser.add_argument("--db", required=True)
    parser.add_argument("--prompts", type=int, default=12, help="how many of the zoo's default prompts")
    parser.add_argument("--zoo", default=None, help="zoo name whose prompts to use when --model is a folder")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--k-max", type=int, default=4)
    parser.add_argument("--estimator", default="trajectory")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    args = parser.parse_args()

    import torch

    from calibration.collect import collect, default_prompts
    from store import CalibrationStore

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = default_prompts(args.zoo or args.model, count=args.prompts)
    collect(args.model, prompts, seeds=args.seeds, steps=args.steps, db=args.db, k_max=args.k_max,
            estimator=args.estimator, no_latents=True, progress=False)
    with CalibrationStore(args.db, read_only=True) as store:
        frame = scored_errors(store, args.estimator)
        n_runs = len(store.runs())
        peers = peer_report(store, frame)
    print(f"{args.model}: {n_runs} runs x {args.steps} steps, estimator {args.estimator}, lags 1..{args.k_max}; "
          "S = J_x(t_i)·Δx + J_t(t_i)·Δt")
    print("\n".join(report(frame)))
    print("\n".join(peers))


if __name__ == "__main__":
    main()
