"""`collect`: full-compute runs over prompts × seeds, recorded into the calibration store.

One run per (prompt, seed): the pipeline runs with the model's zoo call arguments and
`output_type="latent"` under `calibration.recording.recording`, and the run's rows are written
whole in one transaction (`CalibrationStore.write_run`). A rerun skips the runs already stored,
so an interrupted collect resumes where it stopped. Under `torchrun --nproc-per-node N` rank k
takes the pairs k, k+N, k+2N, ... and writes its own shard `store.shard_path(db, k)`; combine
them with `sencache-calibrate store merge`.

Collect only records (torchao's observers): fitting reads the store and is a separate stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from calibration.recording import ESTIMATORS, TableSink, recording
from policies.errors import InputError

__all__ = ["CollectSummary", "collect", "default_prompts", "plan_runs", "read_prompts", "split_of"]

logger = logging.getLogger(__name__)

#: how many steps `--propagation` perturbs a trajectory at by default (`propagation.propagation_steps`)
PROPAGATION_POINTS = 6


@dataclass
class CollectSummary:
    """What `collect` did."""

    db: Path
    model: str
    model_fingerprint: str
    runs_planned: int
    runs_written: int
    runs_skipped: int
    rank: int = 0
    world_size: int = 1
    wall_s: float = 0.0
    run_ids: list[str] = field(default_factory=list)

    def describe(self) -> str:
        shard = f" (rank {self.rank} of {self.world_size})" if self.world_size > 1 else ""
        return (
            f"collect{shard}: {self.runs_written} run(s) written, {self.runs_skipped} already stored, "
            f"of {self.runs_planned} planned, into {self.db} in {self.wall_s:.1f}s"
        )


def read_prompts(path: str | Path, flag: str = "--prompts") -> list[str]:
    """Prompts of a text file, one per line (blank lines and lines starting with '#' skipped);
    `flag` names the option in the error messages."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{flag} {path}: no such file; write one prompt per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{flag} {path}: cannot read it ({exc})") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise InputError(f"{flag} {path}: the file has no prompts; write one prompt per line")
    return prompts


def default_prompts(model: str, count: int = 12) -> list[str]:
    """For zoo toys and tiny fixtures: `count` of the zoo's training prompts, evenly picked.

    Never the held-out prompts: `bench` measures on those by default, and a number measured on
    prompts the fit saw would flatter the policy. The store's own calib/holdout split (by hash,
    `split_of`) is taken among these.
    """
    from calibration.zoo.registry import TINY_MODELS, TOY_MODELS

    if model not in TOY_MODELS and model not in TINY_MODELS:
        raise InputError(f"--prompts is required for --model {model!r} (only zoo models have default prompts)")
    from calibration.zoo.data import training_prompts

    items = training_prompts()
    step = max(len(items) / max(count, 1), 1.0)
    return [items[int(i * step)] for i in range(min(count, len(items)))]


#: The default share of prompts (by hash) whose runs are the holdout.
HOLDOUT_FRACTION = 0.25


def split_of(prompt: str, holdout_fraction: float) -> str:
    """'holdout' or 'calib', fixed by a hash of the prompt (every seed of a prompt shares it)."""
    h = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8], 16) / 2**32
    return "holdout" if h < holdout_fraction else "calib"


def plan_runs(prompts: Sequence[str], seeds: Sequence[int], rank: int = 0, world_size: int = 1) -> list[tuple[str, int]]:
    """The (prompt, seed) pairs of `rank`: prompts × seeds in order, every `world_size`-th from `rank`."""
    pairs = [(p, int(s)) for p in prompts for s in seeds]
    return pairs[rank::world_size]


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK={rank} and WORLD_SIZE={world} do not describe a torchrun process")
    return rank, world


def _fingerprint(transformer: torch.nn.Module) -> str:
    from policies.fingerprint import config_fingerprint

    return config_fingerprint(transformer.config)


def _run_row(loaded: Any, fingerprint: str, prompt: str, seed: int, steps: int, call: dict[str, Any],
             estimator: str, extra: dict[str, Any], split: str) -> dict[str, Any]:
    from store import make_run_id

    pipe = loaded.pipe
    known = {"height", "width", "num_frames", "guidance_scale", "num_inference_steps"}
    row = {
        "model_name": loaded.name,
        "model_fingerprint": fingerprint,
        "pipeline_class": type(pipe).__name__,
        "scheduler_class": type(pipe.scheduler).__name__,
        "scheduler_config": json.dumps(
            {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}, sort_keys=True, default=str
        ),
        "prompt": prompt,
        "seed": int(seed),
        "num_steps": int(steps),
        "guidance_scale": call.get("guidance_scale"),
        "height": call.get("height"),
        "width": call.get("width"),
        "num_frames": call.get("num_frames"),
        "split": split,
        "estimator": estimator,
        "extra": json.dumps({**{k: v for k, v in call.items() if k not in known}, **extra}, sort_keys=True, default=str),
        "status": "complete",
    }
    row["run_id"] = make_run_id(row)
    return row


def _one_sample(frame: Any, table: str) -> Any:
    if frame.empty:
        return None
    if (frame["sample"] != 0).any() or (frame["call"] != 0).any():
        raise RuntimeError(f"collect expects one sample per run; the {table} rows have several")
    return frame.drop(columns=["call", "sample"])


def _collect_one(loaded: Any, prompt: str, seed: int, call: dict[str, Any], k_max: int, estimator: str,
                 keep_latents: bool, propagation_points: int,
                 propagation_direction: str = "cache", mask_runs: int = 0, skip_costs: Any = None) -> dict[str, Any]:
    """Run and record one (prompt, seed); return the frames `write_run` takes."""
    from calibration.estimators import reference_latents
    from calibration.propagation import measure_gains, propagation_steps

    pipe = loaded.pipe

    def run() -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(seed))
        return pipe(prompt=prompt, generator=generator, output_type="latent", **call).frames

    reference = reference_latents(pipe, prompt, seed) if estimator == "reference" else None
    sink = TableSink()
    with recording(pipe, sink, k_max=k_max, estimator=estimator, latents=keep_latents, reference=reference) as rec:
        final = run()
        rec.finish(final)
    latents = None
    if keep_latents:
        frame = _one_sample(sink.frame("latents"), "latents")
        latents = {int(s): v for s, v in zip(frame["step"], frame["value"])} if frame is not None else None
    cache_errors = _one_sample(sink.frame("cache_errors"), "cache_errors")
    reuse_errors = _one_sample(sink.frame("reuse_errors"), "reuse_errors")
    propagation = None
    if propagation_points:
        n = call["num_inference_steps"]
        rows = measure_gains(pipe, run, final, propagation_steps(n, propagation_points), n, propagation_direction,
                             seed, cache_errors, reuse_errors)
        import pandas as pd

        propagation = pd.DataFrame(rows) if rows else None
    mask_errors = None
    if mask_runs:
        import pandas as pd

        from calibration.mask_runs import anchor_masks, draw_masks, measure_mask_errors

        n = call["num_inference_steps"]
        modes = ["none"] + sorted({str(m) for m in reuse_errors["mode"]} - {"none"}) if reuse_errors is not None else ["none"]
        drawn = draw_masks(n, mask_runs, modes, prompt, seed)
        masks = drawn + [m for m in anchor_masks(n, modes, skip_costs) if m not in drawn]
        mask_errors = pd.DataFrame(measure_mask_errors(pipe, run, final, masks, n)) if masks else None
    return {
        "steps": _one_sample(sink.frame("steps"), "steps"),
        "sensitivities": _one_sample(sink.frame("sensitivities"), "sensitivities"),
        "cache_errors": cache_errors,
        "reuse_errors": reuse_errors,
        "propagation": propagation,
        "mask_errors": mask_errors,
        "latents": latents,
    }


def _record_skip_costs(store: Any, pipe: Any, call: dict[str, Any]) -> None:
    """Measure once what a skipped step of each reuse mode still computes (`calibration.compute_cost`)
    and keep it in the store's `meta`: a replay fit has no model, and without it a "taylor" point
    counted only its computed steps (toy-cogvideox: 0.406 of the compute stated as 0.400)."""
    if "skip_costs" in store.meta:
        return
    import json

    from calibration.compute_cost import measure_skip_costs

    costs = measure_skip_costs(pipe, call)
    store.set_meta("skip_costs", json.dumps(costs.to_dict(), sort_keys=True))
    logger.info("collect: a 'taylor' skip still runs %.2f%% of a step's block-stack Linear MACs", 100 * costs.taylor)


def _stored_skip_costs(store: Any) -> Any:
    """The store's measured `SkipCosts` (`_record_skip_costs`), or None."""
    import json

    from calibration.compute_cost import SkipCosts

    raw = store.meta.get("skip_costs")
    return SkipCosts.from_dict(json.loads(raw)) if raw else None


def _validate(steps: int, k_max: int, estimator: str, holdout_fraction: float, seeds: Sequence[int]) -> None:
    if steps < 2:
        raise InputError(f"--steps {steps}: collect needs at least 2 denoising steps (sensitivities compare consecutive steps)")
    if k_max < 1:
        raise InputError(f"--k-max {k_max}: must be at least 1")
    if estimator not in ESTIMATORS:
        raise InputError(f"--estimator {estimator!r}: choose one of {', '.join(ESTIMATORS)}")
    if not 0.0 <= holdout_fraction < 1.0:
        raise InputError(f"holdout_fraction {holdout_fraction}: must be in [0, 1)")
    if not seeds:
        raise InputError("--seeds: at least one seed is needed")


def collect(
    model: str | Any,
    prompts: Sequence[str] | None = None,
    seeds: int | Sequence[int] = 4,
    steps: int = 30,
    db: str | Path = "calib.duckdb",
    k_max: int = 4,
    estimator: str = "trajectory",
    no_latents: bool = False,
    holdout_fraction: float | None = None,
    propagation: bool | int = False,
    progress: bool = True,
    propagation_direction: str = "cache",
    mask_runs: int | None = None,
    holdout_prompts: Sequence[str] | None = None,
) -> CollectSummary:
    """Record full-compute runs of `model` over `prompts` × `seeds` into the store at `db`.

    Args:
        model: `--model` (zoo name, tiny fixture, pipeline folder, Hub id), or a `LoadedModel`
            already in memory (its name gives the default prompts).
        prompts: the prompts; None takes the zoo's (training and held-out) for zoo models.
        seeds: a count n (seeds 0..n−1) or the seeds themselves.
        k_max (`int`, defaults to 4): largest lag of the measured caching errors (one cheap
            bypassed forward per lag per step).
        estimator: "trajectory" (one extra forward per step) or "reference" (the paper's, three
            extra forwards per step from the zoo's clean clips; zoo prompts only).
        no_latents: do not store the per-step latents (for large models).
        holdout_fraction: share of prompts (by hash) whose runs are marked 'holdout' (None: 0.25,
            or none with `holdout_prompts`).
        propagation: also measure the propagation gain at 6 (or this many) steps; each point
            costs one more pipeline call per run and reuse mode ("cache" measures a gain per mode).
        propagation_direction: what perturbs step p ("cache": step p really skipped by the
            runtime, its final error over the store's own local error; "trajectory": a small δ
            along the output's change from the step before; "random": a Gaussian δ, which the
            denoiser removes, and replay then underestimated re-runs 25×;
            `calibration.propagation`). Recorded with each run.
        mask_runs: whole static schedules re-run per run, each one more pipeline call, whose
            final errors calibrate how replay compounds a mask's skips (`calibration.mask_runs`);
            with any, the fit's evenly spaced candidates (`anchor_masks`) are re-run too. None:
            `MASK_RUNS` with `propagation`, else 0.
        holdout_prompts: prompts whose runs are all the holdout, collected after `prompts`, whose
            runs are then all calibration runs: the split chosen, not hashed, so a store can
            calibrate on every prompt it was meant to (`fit` chooses its points on the
            calibration runs alone, and 8 runs misorder close candidates) and still hold out
            enough runs for the twin rule. Not with `holdout_fraction`.
    """
    from calibration.models import load_model
    from store import CalibrationStore, shard_path

    started = time.perf_counter()
    name = model if isinstance(model, str) else model.name
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if holdout_prompts is not None and holdout_fraction is not None:
        raise InputError("give --holdout-prompts or --holdout-fraction, not both: with --holdout-prompts the split is "
                         "those prompts against --prompts")
    holdout_list = list(holdout_prompts or ())
    if holdout_prompts is not None and not holdout_list:
        raise InputError("--holdout-prompts: no prompts given")
    holdout_fraction = (0.0 if holdout_list else HOLDOUT_FRACTION) if holdout_fraction is None else holdout_fraction
    _validate(steps, k_max, estimator, holdout_fraction, seed_list)
    from calibration.propagation import DIRECTIONS

    if propagation_direction not in DIRECTIONS:
        raise InputError(f"--propagation-direction {propagation_direction!r}: choose one of {', '.join(DIRECTIONS)}")
    prompt_list = list(prompts) if prompts is not None else default_prompts(name)
    if not prompt_list:
        raise InputError("no prompts given")
    both = sorted(set(prompt_list) & set(holdout_list))
    if both:
        raise InputError(f"--holdout-prompts: {len(both)} prompt(s) also among --prompts (first: {both[0]!r}); a "
                         "prompt is either calibrated on or held out")
    prompt_list += holdout_list
    held_out = set(holdout_list)
    if estimator == "reference":
        from calibration.estimators import check_reference_prompts

        check_reference_prompts(prompt_list)
    points = PROPAGATION_POINTS if propagation is True else int(propagation or 0)
    if mask_runs is None:
        from calibration.mask_runs import MASK_RUNS

        mask_runs = MASK_RUNS if points else 0
    if mask_runs < 0:
        raise InputError(f"--mask-runs {mask_runs}: must be 0 or more")
    rank, world = _distributed()
    path = shard_path(db, rank) if world > 1 else Path(db)

    loaded = load_model(model) if isinstance(model, str) else model
    pipe = loaded.pipe
    fingerprint = _fingerprint(pipe.transformer)
    call = loaded.call_kwargs(num_inference_steps=steps)
    extra = {"k_max": k_max, "propagation_points": points}
    if mask_runs:
        extra["mask_runs"] = mask_runs
    if points:
        extra["propagation_direction"] = propagation_direction
    planned = plan_runs(prompt_list, seed_list, rank, world)
    rows = [_run_row(loaded, fingerprint, p, s, steps, call, estimator, extra, "holdout" if p in held_out else split_of(p, holdout_fraction)) for p, s in planned]

    from tqdm.auto import tqdm

    pipe.set_progress_bar_config(disable=True if not progress else None, leave=False, desc="steps")
    written = skipped = 0
    with CalibrationStore(path, model_fingerprint=fingerprint) as store:
        _record_skip_costs(store, pipe, call)
        costs = _stored_skip_costs(store)
        done = store.completed_run_ids()
        todo = [r for r in rows if r["run_id"] not in done]
        skipped = len(rows) - len(todo)
        if skipped:
            logger.info("collect: %d of %d run(s) already in %s, resuming", skipped, len(rows), path)
        bar = tqdm(todo, desc="runs", unit="run", disable=True if not progress else None)
        for row in bar:
            t0 = time.perf_counter()
            frames = _collect_one(loaded, row["prompt"], row["seed"], call, k_max, estimator, not no_latents, points,
                                  propagation_direction, mask_runs, costs)
            wall = time.perf_counter() - t0
            store.write_run({**row, "wall_s": wall}, **frames)
            written += 1
            logger.info("collect: run %s written (%r, seed %d, %.1fs)", row["run_id"], row["prompt"], row["seed"], wall)
    summary = CollectSummary(path, loaded.name, fingerprint, len(rows), written, skipped, rank, world,
                             time.perf_counter() - started, [r["run_id"] for r in rows])
    logger.info(summary.describe())
    return summary
