"""Fitted policy vs evenly spaced skipping vs the paper setting, at matched fractions of steps.

    PYTHONPATH=. python benchmarks/fit_vs_uniform.py --model toy-wan --policy policies/toy-wan.json \
        --db runs/toy-wan.duckdb --out runs/toy-wan.fit_vs_uniform.json

Held-out prompts: the store's holdout runs (never seen by the search), at their seeds plus
`--extra-seeds` more. Quality: PSNR of the decoded frames against full compute of the same
prompt and seed, mean ± standard deviation over samples. Matching:

* fitted: each operating point of the policy as exported, at the NFE it reaches here;
* uniform: at every fitted point, the evenly spaced mask computing the same number of steps
  (``round(nfe·N)``), so the comparison is at equal compute by construction;
* paper (``a = b = 1, c = 0``, two-level ε 0.1/0.2 × λ, K = 3): λ swept, PSNR interpolated
  linearly in NFE at the fitted point's NFE (NaN where the sweep does not reach it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

import sencache
from calibration.fit import PAPER_PREDICTOR, paper_point, uniform_point
from calibration.fitdata import load_fit_data
from calibration.models import load_model
from policies import Policy

logger = logging.getLogger("fit_vs_uniform")


def _psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


class Bench:
    def __init__(self, model: str, prompts: list[tuple[str, int]], steps: int) -> None:
        self.loaded = load_model(model)
        self.pipe = self.loaded.pipe
        self.prompts = prompts
        self.steps = steps
        self.calls = 0
        self.reference = self._call()

    def _call(self) -> np.ndarray:
        kwargs = self.loaded.call_kwargs(num_inference_steps=self.steps)
        gens = [torch.Generator().manual_seed(int(s)) for _, s in self.prompts]
        with torch.no_grad():
            out = self.pipe(prompt=[p for p, _ in self.prompts], generator=gens, output_type="np", **kwargs)
        self.calls += 1
        return np.asarray(out.frames, dtype=np.float32)

    def run(self, policy: Policy, point: str | None = None) -> dict:
        handle = sencache.apply(self.pipe, policy, operating_point=point, strict=False)
        try:
            frames = self._call()
            nfe = float(np.mean(handle.report().nfe_fraction))
        finally:
            sencache.remove(self.pipe)
        psnr = _psnr(frames, self.reference)
        finite = np.minimum(psnr, 120.0)
        return {"nfe_fraction": nfe, "psnr": float(finite.mean()), "psnr_std": float(finite.std()),
                "psnr_min": float(finite.min())}


def _with_point(policy: Policy, point, predictor=None) -> Policy:
    return Policy(policy.model, policy.scheduler, policy.sensitivity, predictor or policy.predictor, (point,), point.name, {})


def _interp(sweep: list[dict], nfe: float) -> dict:
    pts = sorted(sweep, key=lambda r: r["nfe_fraction"])
    xs = [r["nfe_fraction"] for r in pts]
    if not pts or nfe < xs[0] - 1e-9 or nfe > xs[-1] + 1e-9:
        return {"psnr": float("nan"), "psnr_std": float("nan"), "note": "sweep does not reach this NFE"}
    return {"psnr": float(np.interp(nfe, xs, [r["psnr"] for r in pts])),
            "psnr_std": float(np.interp(nfe, xs, [r["psnr_std"] for r in pts]))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--db", required=True, help="the store whose holdout runs give the prompts")
    ap.add_argument("--extra-seeds", type=int, default=0, help="more seeds per holdout prompt")
    ap.add_argument("--paper-scales", default="0.1,0.2,0.3,0.45,0.6,0.8,1,1.3,1.7,2.2,3,5,10", help="λ values of the paper sweep")
    ap.add_argument("--out", default=None, help="JSON file for the numbers")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("sencache").setLevel(logging.WARNING)

    data = load_fit_data(args.db)
    holdout = data.runs[data.runs["split"] == "holdout"]
    if holdout.empty:
        holdout = data.runs
    steps = int(holdout["num_steps"].mode().iloc[0])
    prompts = []
    for _, row in holdout.sort_values("run_id").iterrows():
        for extra in range(args.extra_seeds + 1):
            prompts.append((str(row["prompt"]), int(row["seed"]) + 1000 * extra))
    policy = Policy.load(args.policy)
    start = time.time()
    bench = Bench(args.model, prompts, steps)
    rows = []
    paper_sweep = []
    for scale in [float(s) for s in args.paper_scales.split(",")]:
        point = paper_point(scale=scale, name=f"paper-x{scale:g}")
        r = bench.run(_with_point(policy, point, PAPER_PREDICTOR))
        paper_sweep.append({"scale": scale, **r})
        logger.info("paper λ=%-6g NFE %.3f PSNR %.2f", scale, r["nfe_fraction"], r["psnr"])
    for point in policy.operating_points:
        fitted = bench.run(policy, point.name)
        keep = round(fitted["nfe_fraction"] * steps)
        uniform = bench.run(_with_point(policy, uniform_point(keep / steps, steps)))
        paper = _interp(paper_sweep, fitted["nfe_fraction"])
        rows.append({"point": point.name, "fitted": fitted, "uniform": uniform, "paper": paper})
        logger.info("%-9s NFE %.3f: fitted %.2f±%.2f dB | uniform (NFE %.3f) %.2f±%.2f | paper %.2f",
                    point.name, fitted["nfe_fraction"], fitted["psnr"], fitted["psnr_std"],
                    uniform["nfe_fraction"], uniform["psnr"], uniform["psnr_std"], paper["psnr"])
    result = {"model": args.model, "policy": args.policy, "steps": steps, "samples": len(prompts),
              "rows": rows, "paper_sweep": paper_sweep, "wall_s": time.time() - start}
    print(f"{args.model}: {len(prompts)} held-out samples, {steps} steps, PSNR (dB) vs full compute, mean ± std")
    print(f"{'point':<10}{'NFE':>6}  {'fitted':>14}  {'uniform':>14}  {'paper':>7}")
    for r in rows:
        f, u, p = r["fitted"], r["uniform"], r["paper"]
        print(f"{r['point']:<10}{f['nfe_fraction']:>6.3f}  {f['psnr']:>7.2f} ± {f['psnr_std']:<4.2f}  "
              f"{u['psnr']:>7.2f} ± {u['psnr_std']:<4.2f}  {p['psnr']:>7.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
