"""`sencache-calibrate quickstart`: collect → fit → export → bench on a bundled toy, in minutes.

The point is to show a newcomer the whole loop on their own machine: a store of measured
caching errors, a fitted policy file, and a table of SenCache against full compute and evenly
spaced skipping at matched compute. Defaults are small (few prompts, seeds, trials) so that it
finishes in about a quarter of an hour on 2 CPU cores (measured: 12 min 39 s with another job
beside it); every stage is the same call the CLI makes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.errors import InputError

__all__ = ["QuickstartResult", "quickstart"]

logger = logging.getLogger("sencache.quickstart")

#: Methods the quickstart benches: the reference, the baseline to beat, the strongest peer on the
#: toys (TaylorSeer), ours, and ours without the score (its static twin: what the score adds).
QUICK_METHODS = ("none", "uniform", "taylorseer", "sencache-static", "sencache")
#: The closing lines' columns, in this order.
HEADLINE_METHODS = ("sencache", "sencache-static", "taylorseer", "uniform")
#: Shorter sweeps than the full bench's: enough to interpolate at 0.7, 0.5 and 0.4.
QUICK_KNOBS: dict[str, list[Any]] = {"uniform": [0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
                                     "taylorseer": [2, 3, 4]}


@dataclass
class QuickstartResult:
    """Where the quickstart put its files, and the headline numbers it measured."""

    out: Path
    store: Path
    fit: Path
    policy: Path
    bench: Path
    seconds: dict[str, float] = field(default_factory=dict)
    headline: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        lines = ["", "SenCache quickstart finished.", ""]
        for fraction, row in sorted(self.headline.get("matched", {}).items(), reverse=True):
            cells = []
            for method in HEADLINE_METHODS:
                value = row.get(method, {}).get("psnr")
                cells.append(f"{method} {value:.1f} dB" if isinstance(value, (int, float)) else f"{method} n/a")
            lines.append(f"  at {float(fraction):.0%} of steps computed: " + ", ".join(cells))
        speed = self.headline.get("sencache_speedup")
        if speed:
            lines.append(f"  wall-clock speedup of SenCache's fastest point: {speed:.2f}x")
        lines += [
            "",
            f"  calibration store  {self.store}",
            f"  fit report         {self.fit}",
            f"  policy             {self.policy}",
            f"  benchmark          {self.bench}/summary.md (plots beside it)",
            "  time per stage     " + ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items()),
            "",
            "Use the policy:  handle = sencache.apply(pipe, Policy.load(" + repr(str(self.policy)) + "))",
        ]
        return "\n".join(lines)


def quickstart(
    model: str = "toy-wan",
    out: str | Path = "sencache-quickstart",
    prompts: int = 8,
    seeds: int = 1,
    steps: int | None = None,
    trials: int = 20,
    bench_seeds: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> QuickstartResult:
    """Run the whole loop on `model` into the folder `out`; returns where things are."""
    from calibration.bench import run_bench
    from calibration.collect import collect, default_prompts
    from calibration.export import export
    from calibration.fit import fit, fit_result_path
    from calibration.models import load_model

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} exists and is not empty; pass --overwrite or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(model)
    steps = steps or int(loaded.call_args.get("num_inference_steps", 30))
    store = out / "calib.duckdb"
    if overwrite:
        for stale in out.glob("calib.*"):
            stale.unlink()
    seconds: dict[str, float] = {}

    def stage(name: str, fn, *args, **kwargs):
        logger.info("quickstart: %s ...", name)
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds[name] = time.perf_counter() - t0
        return value

    prompt_list = default_prompts(model, count=prompts)
    # no whole-mask re-runs: they calibrate replay, and the quickstart fits by re-run
    stage("collect", collect, model=model, prompts=prompt_list, seeds=seeds, steps=steps, db=store,
          propagation=True, mask_runs=0, progress=progress)
    # half the fit's default refinement budget: the quickstart trades some of the fit for minutes
    stage("fit", fit, store, trials=trials, seed=0, model=model, show_progress=progress, static_evals=20)
    policy_path = out / f"{Path(model).name}.json"
    stage("export", export, store, policy_path)
    bench_dir = out / "bench"
    report = stage("bench", run_bench, loaded, policy_path, bench_dir, methods=list(QUICK_METHODS),
                   seeds=bench_seeds, steps=steps, overwrite=True, progress=progress, knobs=QUICK_KNOBS)
    speedups = [r.get("speedup") for r in report.get("results", []) if r.get("method") == "sencache"]
    headline = {
        "matched": report.get("matched", {}),
        "sencache_speedup": max((s for s in speedups if s), default=None),
    }
    result = QuickstartResult(out, store, fit_result_path(store), policy_path, bench_dir, seconds, headline)
    (out / "quickstart.json").write_text(json.dumps(
        {"model": model, "seconds": seconds, "headline": headline, "files": {
            "store": str(store), "fit": str(result.fit), "policy": str(policy_path), "bench": str(bench_dir)}},
        indent=2, default=str) + "\n")
    return result
