"""How much per-sample headroom is there, and how much of it does the shipped policy hold?

Reruns issue 16's probe beside the shipped points. On P held-out prompts (the bench's
`heldout_prompts`, never the calibration prompts), N random compute masks at M of S steps
(step 0 and the last step computed, at most `--max-skips` skipped in a row) are each forced as a
static operating point (`OperatingPoint(schedule=...)`, the same path `sencache-static` takes)
with reuse mode `--forecast`, and scored by the bench's PSNR of decoded frames against full
compute. It prints:

- evenly spaced at M of S;
- the best single mask for all prompts: picked on one half of the prompts and scored on the
  other (both ways, averaged), and its in-sample value (picked and scored on all);
- each prompt's own best mask (the oracle: the per-sample headroom);
- the shipped policy's `balanced` point (via `sencache.apply`) and its static twin, if the
  policy records one, on the same prompts and their measured compute,

so one can read "SenCache holds X of the Y dB per-sample headroom" (Y = oracle − best single mask,
X = shipped point − best single mask; both also shown over evenly spaced).
All prompts run in one batched pipeline call per mask (the runtime decides per sample).

    OMP_NUM_THREADS=1 python benchmarks/headroom_probe.py --model toy-wan [--masks 100 --prompts 8] [--policy P]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch

import sencache
from calibration.baselines.sencache_static import twin_of
from calibration.bench_report import psnr
from calibration.models import LoadedModel, load_model
from calibration.zoo.data import heldout_prompts
from policies import OperatingPoint, Policy, evenly_spaced
from policies.schedule import StaticSchedule


def random_masks(count: int, num_steps: int, computed: int, max_skips: int, seed: int = 0) -> list[tuple[int, ...]]:
    """`count` distinct compute masks (sorted step indices): `computed` of `num_steps`, the first and
    last step among them, no more than `max_skips` skipped steps in a row. Rejection sampling."""
    if computed < 2 or computed > num_steps:
        raise ValueError(f"need 2 <= computed <= num_steps, got {computed} of {num_steps}")
    if (num_steps - computed) > max_skips * (computed - 1):
        raise ValueError(f"{computed} of {num_steps} steps cannot keep runs of skips <= {max_skips}")
    rng = np.random.default_rng(seed)
    inner = np.arange(1, num_steps - 1)
    seen: set[tuple[int, ...]] = set()
    masks: list[tuple[int, ...]] = []
    for _ in range(1000 * count):
        if len(masks) == count:
            break
        mask = (0, *sorted(int(s) for s in rng.choice(inner, computed - 2, replace=False)), num_steps - 1)
        if max(np.diff(mask)) - 1 > max_skips or mask in seen:
            continue
        seen.add(mask)
        masks.append(mask)
    if len(masks) < count:
        raise ValueError(f"found only {len(masks)} distinct masks of {count} under these constraints")
    return masks


class Headroom(NamedTuple):
    """Mean PSNR (dB over prompts) of each summary; `table` is [mask, prompt]."""

    evenly: float
    best_single_split: float
    best_single_in_sample: float
    oracle: float


def summarise(table: np.ndarray, evenly: np.ndarray) -> Headroom:
    """The probe's numbers from a PSNR table [mask, prompt] and evenly spaced's per-prompt PSNR.

    The best single mask is picked on the mean over one half of the prompts and scored on the
    other half, both ways round (averaged); the oracle takes each prompt's own best mask. The
    evenly spaced mask is a candidate like any other.
    """
    table = np.vstack([np.asarray(table, np.float64), np.asarray(evenly, np.float64)[None]])
    n = table.shape[1]
    half = np.arange(n) < n // 2
    split = []
    if n >= 2:
        for pick, score in ((half, ~half), (~half, half)):
            split.append(table[int(np.argmax(table[:, pick].mean(axis=1))), score].mean())
    in_sample = float(table.mean(axis=1).max())
    return Headroom(float(np.mean(evenly)), float(np.mean(split)) if split else in_sample, in_sample,
                    float(table.max(axis=0).mean()))


@dataclass
class _Runner:
    loaded: LoadedModel
    policy: Policy
    prompts: list[str]
    kwargs: dict[str, Any]
    seed: int

    def frames(self, point: OperatingPoint | None, generator: Any = None) -> tuple[list[np.ndarray], list[float]]:
        """Decoded frames per prompt of one batched call, and each sample's computed fraction
        (`generator`: the call's, default one seeded with `seed`)."""
        pipe = self.loaded.pipe
        handle = None
        if point is not None:
            single = replace(self.policy, operating_points=(point,), default_operating_point=point.name)
            handle = sencache.apply(pipe, single, operating_point=point.name)
        try:
            with torch.no_grad():
                out = pipe(self.prompts, generator=generator or torch.Generator().manual_seed(self.seed), output_type="np",
                           **self.kwargs)
            compute = [1.0] * len(self.prompts)
            if handle is not None:
                computed = np.asarray(handle.report().computed, bool)
                compute = [float(row.mean()) for row in computed]
        finally:
            if handle is not None:
                sencache.remove(pipe)
        return [np.asarray(f, np.float32) for f in out.frames], compute


def mask_point(mask: tuple[int, ...], num_steps: int, forecast: str) -> OperatingPoint:
    """The static point that computes exactly `mask` at `num_steps` steps."""
    schedule = StaticSchedule(tuple(s / (num_steps - 1) for s in mask))
    if schedule.steps(num_steps) != frozenset(mask):
        raise AssertionError(f"schedule {schedule} does not reproduce mask {mask} at {num_steps} steps")
    return OperatingPoint("probe", schedule=schedule, forecast=forecast)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy-wan", choices=["toy-wan", "toy-cogvideox", "toy-ltx"])
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument("--prompts", type=int, default=8, help="the first P of the held-out prompts")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--computed", type=int, default=None, help="steps computed (default: half)")
    parser.add_argument("--max-skips", type=int, default=2)
    parser.add_argument("--forecast", default="linear", choices=["none", "linear", "taylor"])
    parser.add_argument("--point", default="balanced", help="the shipped operating point to set beside the probe")
    parser.add_argument("--policy", default=None, help="the policy whose point to set beside the probe "
                        "(default: the shipped policies/<model>.json)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = args.steps
    m = args.computed if args.computed is not None else n // 2
    loaded = load_model(args.model)
    loaded.pipe.set_progress_bar_config(disable=True)
    policy = Policy.load(args.policy or f"policies/{args.model}.json")
    prompts = heldout_prompts()[: args.prompts]
    kwargs = loaded.call_kwargs(num_inference_steps=n)
    kwargs["num_inference_steps"] = n
    run = _Runner(loaded, policy, prompts, kwargs, args.seed)
    reference, _ = run.frames(None)

    def scores(point: OperatingPoint) -> tuple[np.ndarray, list[float]]:
        frames, compute = run.frames(point)
        return np.array([psnr(f, r) for f, r in zip(frames, reference)]), compute

    evenly, _ = scores(OperatingPoint("evenly", schedule=evenly_spaced(m / n, n), forecast=args.forecast))
    masks = random_masks(args.masks, n, m, args.max_skips, seed=args.seed)
    table = np.stack([scores(mask_point(mask, n, args.forecast))[0] for mask in masks])
    h = summarise(table, evenly)
    print(f"{args.model}: {len(masks)} random masks at {m} of {n} steps (max {args.max_skips} skips in a row), "
          f"forecast {args.forecast}, {len(prompts)} held-out prompts, seed {args.seed}; mean PSNR vs full compute")
    print(f"  evenly spaced                        {h.evenly:6.2f} dB")
    print(f"  best single mask (picked on half)    {h.best_single_split:6.2f} dB  ({h.best_single_split - h.evenly:+.2f})"
          f"   in-sample {h.best_single_in_sample:.2f} dB")
    print(f"  each prompt's own best mask          {h.oracle:6.2f} dB  ({h.oracle - h.best_single_split:+.2f} more: "
          f"the per-sample headroom; {h.oracle - h.evenly:+.2f} over evenly)")
    best = int(np.argmax(table.mean(axis=1)))
    print(f"  the best single mask (all prompts)   {table[best].mean():6.2f} dB  computes {list(masks[best])}")
    point = policy.operating_point(args.point)
    shipped = [(f"shipped {point.name!r} ({'static' if point.static else 'score-driven'}, {point.forecast})", point)]
    twin, origin = twin_of(policy, args.point, n)
    if origin.startswith("fitted"):
        shipped.append((f"its static twin ({twin.forecast})", twin))
    else:
        print(f"  (the policy records no static twin of {args.point!r})")
    if point.forecast != args.forecast:
        print(f"  note: the shipped point reuses with {point.forecast!r}, the masks with {args.forecast!r}; "
              f"rerun with --forecast {point.forecast} for the same reuse mode")
    for label, p in shipped:
        values, compute = scores(p)
        mean = float(values.mean())
        held = (mean - h.best_single_split) / max(h.oracle - h.best_single_split, 1e-9)
        print(f"  {label:36s} {mean:6.2f} dB  ({mean - h.evenly:+.2f} over evenly, {mean - h.best_single_split:+.2f} "
              f"over the best single mask = {100 * held:.0f}% of the per-sample headroom); "
              f"compute per sample {[round(c, 3) for c in compute]}")

if __name__ == "__main__":
    main()
