"""Does a toy's shipped default point decide by its score, per sample?

Applies each toy's shipped policy at its default operating point to one batch of 3 held-out
prompts (prompts no fit saw), at 30 steps, and prints the per-sample compute and the reasons the
report gives for every computed step, and how many distinct masks the samples made. A
score-driven point shows `score` among the reasons and masks (or compute) that differ between
samples; a static point shows `schedule`, one mask for every sample.

    OMP_NUM_THREADS=1 python benchmarks/default_point.py [--models toy-wan,toy-cogvideox,toy-ltx]
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

import sencache
from calibration.models import load_model
from calibration.zoo.data import heldout_prompts
from policies import Policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="toy-wan,toy-cogvideox,toy-ltx")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = heldout_prompts()[4:7]
    for name in args.models.split(","):
        loaded = load_model(name)
        loaded.pipe.set_progress_bar_config(disable=True)
        policy = Policy.load(f"policies/{name}.json")
        point = policy.operating_point()
        handle = sencache.apply(loaded.pipe, policy)
        with torch.no_grad():
            loaded.pipe(prompts, generator=torch.Generator().manual_seed(0), output_type="latent",
                        **loaded.call_kwargs(num_inference_steps=args.steps))
        report = handle.report()
        sencache.remove(loaded.pipe)
        reasons = Counter(r for row, done in zip(report.reasons, report.computed) for r, c in zip(row, done) if c)
        per_sample = [int(n) for n in report.computed.sum(axis=1)]
        # the score may move *where* a sample computes without changing how much
        masks = len({tuple(bool(c) for c in row) for row in report.computed})
        kind = "static schedule" if point.static else f"score-driven, forecast {point.forecast}"
        print(f"{name}: default point {point.name!r} ({kind}); computed per sample {per_sample} of {args.steps}; "
              f"{masks} distinct mask(s) among {len(per_sample)} samples; reasons of computed steps {dict(reasons)}")


if __name__ == "__main__":
    main()
