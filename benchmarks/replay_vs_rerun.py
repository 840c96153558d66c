"""Does replay rank candidate operating points as re-runs do? And what does a replay fit cost?

Per toy: draws `--candidates` points of the kind the fit's smooth search considers (score-driven
shapes with their level bisected to a drawn target compute, and static schedules; every reuse
mode the store measured, K, zones), scores each by replay (`calibration.replay`, under each
compounding rule) and by re-run on the store's calibration runs, and prints Spearman ρ between
replay and re-run errors, their ratio by where the skipped steps lie and by the mean length of
the runs of skipped steps (per reuse mode: on toy-cogvideox, 40 candidates, a forecast's ratio
falls from 1.04–1.09 at runs of about one skip to 0.59–0.77 past 2.5), and, with `--regret`, the
PSNR at 0.5 and 0.4 of compute on held-out prompts (4 × 2 seeds, the bench's; `--bench-prompts`
for others) of a policy fitted with `--objective replay` against the re-run-fitted one given by
`--rerun-policy`, and then each operating point of both policies scored by replay and by re-run on
the store's holdout runs: which kinds of point replay misjudges (on toy-cogvideox it puts the
re-run fit's K = 1 and K = 2 "taylor" points and its static "linear" one 1.4–1.75× too high, and
its own K = 3 and K = 4 points 0.7–1.0×, so it prefers long runs of skips).

    OMP_NUM_THREADS=1 python benchmarks/replay_vs_rerun.py --model toy-wan --db runs/toy-wan.duckdb \
        [--candidates 30] [--regret [--rerun-policy policies/toy-wan.json] [--fit-args="--residual-change"]
        [--bench-prompts FILE]]

The store is copied before the replay fit; the one given is never written.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from calibration.fit import _Objectives
from calibration.fitdata import load_fit_data
from calibration.modefit import fit_modes
from calibration.replay import COMPOUNDING, ReplayObjective
from calibration.search import SearchSpace
from calibration.shapes import KINDS, NFE_RANGE, SHAPE_RANGES, bisect_level, shape_point, static_from_shape
from policies.operating import FORECASTS

FRACTIONS = (0.5, 0.4)


@dataclass(frozen=True)
class CandidateBench:
    """A store copied and loaded, its per-mode predictors, the smooth search's space, and the
    replay and re-run objectives on its calibration runs: what every candidate is scored with."""

    data: Any
    table: Any
    predictors: dict
    space: SearchSpace
    replay: ReplayObjective
    rerun: Any

    @classmethod
    def open(cls, model: str, db: Path, work: Path) -> CandidateBench:
        """Copy `db` into `work` (the store given is never written) and set everything up."""
        copy = work / "read.duckdb"
        shutil.copy(db, copy)
        data = load_fit_data(copy, model)
        table = data.sensitivity_table()
        fits = fit_modes(data.mode_pairs(table), FORECASTS)
        predictors = {m: fits[m].predictor() for m in fits}
        predictors.update({m: predictors["none"] for m in FORECASTS if m not in predictors})
        calib = data.pairs(table)
        calib = calib[calib["split"] == "calib"]
        scores = predictors["none"].a * calib["u"] + predictors["none"].b * calib["v"] + predictors["none"].c
        measured = tuple(m for m in FORECASTS if m == "none" or m in set(data.reuse_errors["mode"].astype(str)))
        space = SearchSpace.from_scores(scores.to_numpy(np.float64), 12, data.num_steps, forecasts=measured)
        return cls(data, table, predictors, space, _Objectives("replay", data, table, model).for_split("calib"),
                   _Objectives("rerun", data, table, model).for_split("calib"))

    def draw(self, rng: np.random.Generator) -> tuple[str, Any]:
        """One candidate, (kind, point): a static schedule, or a score-driven shape whose level is
        bisected on replay to its drawn target compute."""
        params = draw_params(rng, self.space)
        if params["kind"] == "static":
            return "static", static_from_shape(params, self.space, params["target"])
        nfe_of = lambda p: self.replay.evaluate(self.predictors, p).nfe_fraction  # noqa: E731
        return params["kind"], shape_point(params, self.space, bisect_level(params, self.space, nfe_of,
                                                                            params["target"], 8))


def draw_params(rng: np.random.Generator, space: SearchSpace) -> dict:
    """One candidate's parameters, drawn over the smooth search's ranges (`calibration.shapes`)."""
    return {"kind": str(rng.choice(list(KINDS))), "target": float(rng.uniform(*NFE_RANGE)),
            **{name: float(rng.uniform(*SHAPE_RANGES[name])) for name in ("tilt", "bump", "bump_at")},
            "max_skips": int(rng.integers(1, space.max_k + 1)), "warmup": int(rng.integers(0, space.max_warmup + 1)),
            "final": int(rng.integers(0, space.max_final + 1)), "forecast": str(rng.choice(list(space.forecasts)))}


def skip_position(point, num_steps: int) -> float:
    """Where a static point's skips lie on average (p in [0, 1]); NaN for a score-driven point."""
    if point.schedule is not None:
        n = num_steps
        computed = set(point.schedule.steps(n))
        skipped = [i / (n - 1) for i in range(n) if i not in computed]
        return float(np.mean(skipped)) if skipped else 0.5
    return float("nan")


def _psnr_at(bench_dir: Path) -> dict[float, float | None]:
    from calibration.bench_report import matched

    result = json.loads((bench_dir / "bench.json").read_text())
    table = matched(result["results"], FRACTIONS)
    entry = {f: table.get(str(f), {}).get("sencache", {}) for f in FRACTIONS}
    return {f: e.get("psnr") if e.get("reached") else None for f, e in entry.items()}


def replay_policy_file(work: Path, model: str, replay_args: tuple[str, ...] = ()) -> Path:
    """Where the replay fit's policy is written: one file per set of replay-only arguments, so one
    work folder (`--reuse`) holds e.g. the calibrated and the uncalibrated replay fits."""
    tag = "".join("-" + a.strip("-") for a in replay_args)
    return work / f"{model}-replay{tag}.json"


def regret(model: str, db: Path, rerun_policy: Path | None, trials: int, seed: int, work: Path,
           reuse: Path | None = None, prompts: Path | None = None, fit_args: tuple[str, ...] = (),
           replay_args: tuple[str, ...] = ()) -> dict:
    """Fit by replay on a copy of the store (unless `reuse` names a finished work folder) — and by
    re-run on another copy when `rerun_policy` is None, so both fits see the same store and flags —
    bench both policies on the bench's held-out prompts (or the file `prompts`), and return their
    PSNR at `FRACTIONS`. `fit_args` go to both fits (e.g. ``--residual-change``), `replay_args` to the
    replay fit alone (e.g. ``--replay-compounding segments``)."""
    work = reuse or work
    cli = [sys.executable, "-m", "cli", "--quiet"]

    def fit(objective: str, policy: Path, extra: tuple[str, ...] = ()) -> Path:
        if not policy.exists():
            store = policy.with_suffix(".duckdb")
            shutil.copy(db, store)
            subprocess.run([*cli, "fit", "--db", str(store), "--trials", str(trials), "--seed", str(seed), "--knots",
                            "12", "--objective", objective, *fit_args, *extra], check=True)
            subprocess.run([*cli, "export", "--db", str(store), "--out", str(policy)], check=True)
        return policy

    replay_policy = fit("replay", replay_policy_file(work, model, replay_args), replay_args)
    rerun_policy = rerun_policy or fit("rerun", work / f"{model}-rerun.json")
    out = {}
    for name, policy in (("replay", replay_policy), ("rerun", rerun_policy)):
        bench = work / (f"bench-{policy.stem}" if prompts is None else f"bench-{policy.stem}-{prompts.stem}")
        if not (bench / "bench.json").exists():
            subprocess.run([*cli, "bench", "--model", model, "--policy", str(policy), "--methods", "none,sencache",
                            "--seeds", "2", "--out", str(bench), *(["--prompts", str(prompts)] if prompts else [])],
                           check=True)
        out[name] = _psnr_at(bench)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="toy-wan")
    parser.add_argument("--db", type=Path, required=True, help="the model's calibration store (read only)")
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--regret", action="store_true", help="also fit by replay and bench it against --rerun-policy")
    parser.add_argument("--rerun-policy", type=Path,
                        help="the re-run-fitted policy to compare with (e.g. policies/toy-wan.json); without it, "
                             "--regret fits one by re-run on a copy of the same store with the same --fit-args")
    parser.add_argument("--fit-args", default="",
                        help="extra arguments for both fits, after an equals sign (e.g. --fit-args=--residual-change)")
    parser.add_argument("--replay-args", default="",
                        help="extra arguments for the replay fit alone, after an equals sign and quoted "
                             "(e.g. --replay-args=\"--replay-compounding segments\")")
    parser.add_argument("--trials", type=int, default=40, help="trials of the replay fit (with --regret)")
    parser.add_argument("--reuse", type=Path, help="a work folder of an earlier --regret run: keep its fit and benches")
    parser.add_argument("--bench-prompts", type=Path,
                        help="held-out prompts for the regret's benches, one per line (default: the bench's 4; "
                             "benchmarks/toy-heldout-prompts.txt holds all 10 of the zoo's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="replay-vs-rerun-"))
    bench = CandidateBench.open(args.model, args.db, work)
    data, table, predictors = bench.data, bench.table, bench.predictors
    replays = {rule: _with_rule(bench.replay, rule) for rule in COMPOUNDING}
    if bench.replay.corrections:  # the store's whole-mask re-runs calibrate the "segments" rule
        replays["calibrated"] = bench.replay
        for mode, c in sorted(bench.replay.corrections.items()):
            print(f"calibrated compounding of {mode!r} on {c.masks} whole masks: run-length exponent "
                  f"{c.length_exponent:.2f}, norm across runs {c.norm:.2f}")
    rerun = bench.rerun
    rng = np.random.default_rng(args.seed)
    rows = []
    for index in range(args.candidates):
        kind, point = bench.draw(rng)
        real = rerun.evaluate(predictors, point)
        row = {"candidate": index, "kind": kind, "forecast": point.forecast, "nfe": real.nfe_fraction,
               "rerun": real.error, "position": skip_position(point, data.num_steps),
               "run_length": mean_skip_run(replays["segments"].usual_mask(predictors, point), data.num_steps)}
        for rule, replay in replays.items():
            row[rule] = replay.evaluate(predictors, point).error
        rows.append(row)
        print(f"{index:3d} {row['kind']:7s} {row['forecast']:6s} nfe {row['nfe']:.2f} rerun {row['rerun']:.4g} "
              + " ".join(f"{r} {row[r]:.4g}" for r in replays), flush=True)
    if rows:
        _report(args.model, rows, tuple(replays))
    if args.regret:
        psnr = regret(args.model, args.db, args.rerun_policy, args.trials, args.seed, work, args.reuse,
                      args.bench_prompts, tuple(args.fit_args.split()), tuple(args.replay_args.split()))
        print(f"\n| {args.model} | " + " | ".join(
            f"NFE {f}: replay-fit {_f(psnr['replay'][f])} dB, re-run-fit {_f(psnr['rerun'][f])} dB, regret "
            f"{_f(None if psnr['replay'][f] is None or psnr['rerun'][f] is None else psnr['rerun'][f] - psnr['replay'][f])}"
            for f in FRACTIONS) + " |")
        _points_report(data, table, predictors, args.model,
                       {"replay-fit": replay_policy_file(args.reuse or work, args.model, tuple(args.replay_args.split())),
                        "re-run-fit": args.rerun_policy or (args.reuse or work) / f"{args.model}-rerun.json"})
    print(f"\n(work files in {work})")


def mean_skip_run(mask: frozenset[int] | None, num_steps: int) -> float:
    """The mean length of the runs of consecutive skipped steps in `mask` (the computed steps)."""
    if mask is None:
        return float("nan")
    runs, current = [], 0
    for i in range(num_steps):
        if i in mask:
            if current:
                runs.append(current)
            current = 0
        else:
            current += 1
    if current:
        runs.append(current)
    return float(np.mean(runs)) if runs else 0.0


def _points_report(data, table, predictors: dict, model: str, policies: dict[str, Path]) -> None:
    """Each operating point of both policies scored by replay and by re-run on the store's holdout
    runs (neither fit chose on them): which kinds of point replay over- or underestimates."""
    from policies import Policy

    holdout = {kind: _Objectives(kind, data, table, model).for_split("holdout") for kind in ("replay", "rerun")}
    if holdout["replay"] is None:
        return
    print(f"\n## {model}: the chosen points, replay vs re-run on the {len(data.run_ids('holdout'))} holdout runs\n")
    print("| policy | point | forecast | K | static | NFE | replay | re-run | replay / re-run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, path in policies.items():
        for point in Policy.load(path).operating_points:
            if point.name == "paper":
                continue
            rep, real = (holdout[k].evaluate(predictors, point) for k in ("replay", "rerun"))
            print(f"| {name} | {point.name} | {point.forecast} | {'—' if point.static else point.max_skips} | "
                  f"{'yes' if point.static else 'no'} | {real.nfe_fraction:.3f} | {rep.error:.4f} | {real.error:.4f} | "
                  f"{rep.error / max(real.error, 1e-12):.2f} |", flush=True)


def _report(model: str, rows: list[dict], rules: tuple[str, ...] = COMPOUNDING) -> None:
    """Spearman ρ per compounding rule, the replay/re-run ratio by skip position, ρ per mode."""
    rerun_err = np.array([r["rerun"] for r in rows])
    print(f"\n## {model}: replay vs re-run over {len(rows)} candidates (calibration runs)\n")
    print("| compounding | Spearman ρ | median replay/re-run | ratio, skips early / mid / late (static points) |")
    print("|---|---|---|---|")
    for rule in rules:
        rep = np.array([r[rule] for r in rows])
        rho = spearmanr(rep, rerun_err).statistic
        ratio = rep / np.maximum(rerun_err, 1e-12)
        pos = np.array([r["position"] for r in rows])
        bins = []
        for lo, hi in ((0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.01)):
            sel = (pos >= lo) & (pos < hi)
            bins.append(f"{np.median(ratio[sel]):.2f}" if sel.any() else "—")
        print(f"| {rule} | {rho:.3f} | {np.median(ratio):.2f} | {' / '.join(bins)} |")
    for rule in [r for r in ("segments", "calibrated") if r in rules]:
        print(f"\n| forecast | mean skip run ≤ 1.5 | 1.5–2.5 | > 2.5 |  (median replay/re-run, {rule}; candidates)")
        print("|---|---|---|---|")
        for mode in sorted({r["forecast"] for r in rows}):
            cells = []
            for lo, hi in ((0.0, 1.5), (1.5, 2.5), (2.5, 99.0)):
                ratios = [r[rule] / max(r["rerun"], 1e-12) for r in rows
                          if r["forecast"] == mode and lo < r["run_length"] <= hi]
                cells.append(f"{np.median(ratios):.2f} ({len(ratios)})" if ratios else "—")
            print(f"| {mode} | " + " | ".join(cells) + " |")
        for mode in sorted({r["forecast"] for r in rows}):
            sel = [r for r in rows if r["forecast"] == mode]
            if len(sel) >= 3:
                rho = spearmanr([r[rule] for r in sel], [r["rerun"] for r in sel]).statistic
                print(f"  forecast {mode}: ρ {rho:.3f} over {len(sel)} candidates ({rule})")


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _with_rule(replay: ReplayObjective, rule: str) -> ReplayObjective:
    """The same replay (same arrays) under another compounding rule, uncalibrated."""
    import copy

    other = copy.copy(replay)
    other.compounding = rule
    other.corrections = {}
    return other


if __name__ == "__main__":
    main()
