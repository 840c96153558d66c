"""Does a toy's shipped default point decide by its score, per sample?

Applies each toy's shipped policy at its default operating point to one batch of 3 held-out
prompts (prompts no fit saw), at 30 steps, and prints the per-sample compute and the reasons the
report gives for every computed step, and how many distinct masks the samples made. A
score-driven point shows `score` among the reasons and masks (or compute) that differ between
samples; a static point shows `schedule`, one mask for every sample.

`--windows` goes on to every batch of 3 consecutive held-out prompts (8 of them from the 10) at
seeds 0 and 1, and counts the batches whose samples differ in compute and in mask: one batch can
happen to be three samples the score treats alike.

    OMP_NUM_THREADS=1 python benchmarks/default_point.py [--models toy-wan,toy-cogvideox,toy-ltx] [--windows]
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

import sencache
from calibration.models import load_model
from calibration.zoo.data import heldout_prompts
from policies import Policy
from sencache.report import RunReport


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="toy-wan,toy-cogvideox,toy-ltx")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--windows", action="store_true",
                        help="also every batch of 3 consecutive held-out prompts at seeds 0 and 1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = heldout_prompts()[4:7]
    for name in args.models.split(","):
        loaded = load_model(name)
        loaded.pipe.set_progress_bar_config(disable=True)
        policy = Policy.load(f"policies/{name}.json")
        point = policy.operating_point()
        report = _run(loaded, policy, prompts, 0, args.steps)
        reasons = Counter(r for row, done in zip(report.reasons, report.computed) for r, c in zip(row, done) if c)
        per_sample = [int(n) for n in report.computed.sum(axis=1)]
        # the score may move *where* a sample computes without changing how much
        masks = len({tuple(bool(c) for c in row) for row in report.computed})
        kind = "static schedule" if point.static else f"score-driven, forecast {point.forecast}"
        print(f"{name}: default point {point.name!r} ({kind}); computed per sample {per_sample} of {args.steps}; "
              f"{masks} distinct mask(s) among {len(per_sample)} samples; reasons of computed steps {dict(reasons)}")
        if args.windows:
            _windows(name, loaded, policy, args.steps)


def _run(loaded, policy: Policy, prompts: list[str], seed: int, steps: int) -> RunReport:
    """One batch under the policy's default point; the report of its steps."""
    handle = sencache.apply(loaded.pipe, policy)
    try:
        with torch.no_grad():
            loaded.pipe(prompts, generator=torch.Generator().manual_seed(seed), output_type="latent",
                        **loaded.call_kwargs(num_inference_steps=steps))
        return handle.report()
    finally:
        sencache.remove(loaded.pipe)


def _windows(name: str, loaded, policy: Policy, steps: int) -> None:
    """Every batch of 3 consecutive held-out prompts at seeds 0 and 1: in how many do the samples differ?"""
    prompts = heldout_prompts()
    batches = differ_compute = differ_mask = 0
    for seed in (0, 1):
        for start in range(len(prompts) - 2):
            report = _run(loaded, policy, prompts[start:start + 3], seed, steps)
            per_sample = [int(n) for n in report.computed.sum(axis=1)]
            batches += 1
            differ_compute += len(set(per_sample)) > 1
            differ_mask += len({tuple(bool(c) for c in row) for row in report.computed}) > 1
            print(f"  prompts {start}-{start + 2}, seed {seed}: computed per sample {per_sample}")
    print(f"{name}: of {batches} batches of 3, {differ_compute} differ in per-sample compute, "
          f"{differ_mask} in mask")


if __name__ == "__main__":
    main()
