"""Can a per-segment correction make replay compound skips as re-runs do? (issue 17; not shipped)

Replay adds a run of skips of one reference linearly and runs of different references in
quadrature ("segments", `calibration.replay`). Its ratio to re-runs falls with the length of the
runs of skips (toy-cogvideox, 40 candidates: "linear" 1.09 / 0.84 / 0.59 for runs of about one,
two and more than 2.5 skips). This script tries corrections calibrated on a few whole-mask
re-runs of the kind `collect` could make — periodic masks that compute every (L + 1)-th step, L =
1..4, with and without a four-step warm-up, for every reuse mode — and judges them on `--candidates`
points drawn as `benchmarks/replay_vs_rerun.py` draws them:

    final error = α_m · ( Σ_segments (L^β_m · segment sum)^q_m )^(1/q_m)

with any of α (a scale per mode), β (a segment-length factor) and q (the norm across segments)
fitted by least squares on log(re-run / replay). Measured on the stores of the README's collect
command (`OMP_NUM_THREADS=1 python benchmarks/compounding_models.py --model M --db runs/cache/M.duckdb`):

* toy-cogvideox: α and β fitted on the 24 periodic masks take ρ over the 40 candidates from
  0.978 to 0.993 and flatten the ratio by run length to 0.85 / 1.01 / 1.06 ("linear"),
  0.84 / 1.09 / 0.88 ("none"), 0.78 / 1.02 / 1.12 ("taylor").
* toy-wan: periodic forecast masks with runs of two or more skips replay at 0.25–0.45 of their
  re-runs, while candidates with long runs replay at 0.59–0.67; β ≈ 1 fitted on the periodic
  masks puts long-run candidates at 4.5–5.9× their re-runs, and ρ falls from 0.976 to 0.957.
* Fitted instead on the 24 static candidates and judged on the 16 score-driven ones, α and β
  lift ρ on both toys (toy-cogvideox 0.938 → 0.982, toy-wan 0.935 → 0.941) but leave the ratio
  by run length as uneven as before (toy-cogvideox "linear" 0.57 / 0.65 / 0.73, toy-wan
  "taylor" 0.99 / 0.73 / 0.64).

So no correction calibrated on periodic masks is shipped: what a periodic mask measures does not
transfer between toys. What shipped instead follows the lead this left: `collect --mask-runs`
re-runs masks drawn as the search draws its static candidates, and replay calibrates a run-length
exponent and a norm across runs per mode on them, with no free scale, so single skips stay exact
(`calibration.replay.fit_corrections`; `benchmarks/replay_vs_rerun.py` reports it as "calibrated").
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.stats import spearmanr

from benchmarks.headroom_probe import mask_point
from benchmarks.replay_vs_rerun import CandidateBench
from calibration.objectives import rule_params_for
from calibration.replay import _replay_group

RUN_LENGTH_BINS = ((0.0, 1.5), (1.5, 2.5), (2.5, 99.0))
MODELS = {"segments": (), "alpha": ("alpha",), "alpha+beta": ("alpha", "beta"), "alpha+q": ("alpha", "q")}


@dataclass
class Scored:
    """One point: its kind, reuse mode, mean re-run error, and per run its segments (sum, length)."""

    kind: str
    mode: str
    rerun: float
    segments: list[np.ndarray]

    @property
    def run_length(self) -> float:
        return float(np.mean([s[:, 1].mean() for s in self.segments if len(s)] or [0.0]))


def predict(point: Scored, beta: float = 0.0, q: float = 2.0, alpha: float = 1.0) -> float:
    """The mean over runs of α·(Σ (L^β·sum)^q)^(1/q); β = 0, q = 2, α = 1 is replay's "segments"."""
    values = [0.0 if len(s) == 0 else float(((s[:, 0] * s[:, 1] ** beta) ** q).sum() ** (1 / q))
              for s in point.segments]
    return alpha * float(np.mean(values))


def _segments(parts) -> list[np.ndarray]:
    out = []
    for contributions, reference, computed in parts:
        for b in range(contributions.shape[0]):
            sums: dict[int, list[float]] = {}
            for i in np.flatnonzero(~computed[b]):
                entry = sums.setdefault(int(reference[b, i]), [0.0, 0.0])
                entry[0] += contributions[b, i]
                entry[1] += 1
            out.append(np.array(list(sums.values()), dtype=np.float64).reshape(-1, 2))
    return out


def fit_model(points: list[Scored], free: tuple[str, ...]) -> tuple[float, float, float]:
    """(β, q, α) minimising Σ log²(predicted / re-run) over `points`; fixed where not `free`."""
    if not free or len(points) < 2:
        return 0.0, 2.0, 1.0
    bounds = [(0, 3) if "beta" in free else (0, 0), (1, 3) if "q" in free else (2, 2),
              (-3, 3) if "alpha" in free else (0, 0)]

    def loss(theta: np.ndarray) -> float:
        return sum((np.log(max(predict(p, theta[0], theta[1], np.exp(theta[2])), 1e-12)) - np.log(p.rerun)) ** 2
                   for p in points)

    best = min((minimize(loss, np.array([b0 if "beta" in free else 0.0, 2.0, 0.0]), bounds=bounds,
                         method="L-BFGS-B") for b0 in (0.0, 0.5, 1.0)), key=lambda r: r.fun)
    return float(best.x[0]), float(best.x[1]), float(np.exp(best.x[2]))


def report(label: str, points: list[Scored], params: dict[str, tuple[float, float, float]]) -> None:
    """ρ over `points` and, per mode, the median predicted / re-run by mean run length."""
    predicted = np.array([predict(p, *params.get(p.mode, (0.0, 2.0, 1.0))) for p in points])
    real = np.array([p.rerun for p in points])
    ratio = predicted / np.maximum(real, 1e-12)
    cells = []
    for mode in sorted({p.mode for p in points}):
        bins = []
        for lo, hi in RUN_LENGTH_BINS:
            sel = [i for i, p in enumerate(points) if p.mode == mode and lo < p.run_length <= hi]
            bins.append(f"{np.median(ratio[sel]):.2f}" if sel else "—")
        cells.append(f"{mode} {' / '.join(bins)}")
    print(f"| {label} | {spearmanr(predicted, real).statistic:.3f} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="toy-cogvideox")
    parser.add_argument("--db", type=Path, required=True, help="the model's calibration store (read only)")
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = CandidateBench.open(args.model, args.db, Path(tempfile.mkdtemp(prefix="compounding-")))
    table, predictors, replay, rerun = bench.table, bench.predictors, bench.replay, bench.rerun
    measured = bench.space.forecasts
    n = bench.data.num_steps

    def score(point, kind: str) -> Scored:
        params, mode = rule_params_for(predictors, table, point), replay._mode(point)
        parts = []
        for g in replay.groups:
            steps: list = []
            contributions, reference, _ = _replay_group(params, g, g.err[mode], g.gain[mode],
                                                        replay.tail_exponents[mode], steps_out=steps)
            parts.append((contributions, reference, np.stack(steps, axis=1)))
        return Scored(kind, point.forecast, rerun.evaluate(predictors, point).error, _segments(parts))

    periodic = []
    for mode in measured:
        for length in (1, 2, 3, 4):
            for warmup in (0, 4):
                mask = sorted(set(range(warmup)) | set(range(max(warmup - 1, 0), n, length + 1)) | {n - 1})
                periodic.append(score(mask_point(tuple(mask), n, mode), "periodic"))
    rng = np.random.default_rng(args.seed)
    candidates = [score(point, kind) for kind, point in (bench.draw(rng) for _ in range(args.candidates))]
    print(f"\n## {args.model}: corrections fitted on {len(periodic)} periodic masks, judged on "
          f"{len(candidates)} candidates\n")
    print("| correction | ρ | median corrected replay / re-run by mean run length (≤1.5 / 1.5–2.5 / >2.5) |")
    print("|---|---|---|")
    for name, free in MODELS.items():
        report(name, candidates, {m: fit_model([p for p in periodic if p.mode == m], free) for m in measured})
    static = [p for p in candidates if p.kind == "static"]
    driven = [p for p in candidates if p.kind != "static"]
    if static and driven:
        print(f"\nfitted on the {len(static)} static candidates, judged on the {len(driven)} score-driven ones:\n")
        print("| correction | ρ | median corrected replay / re-run by mean run length |")
        print("|---|---|---|")
        for name, free in MODELS.items():
            report(name, driven, {m: fit_model([p for p in static if p.mode == m], free) for m in measured})


if __name__ == "__main__":
    main()
