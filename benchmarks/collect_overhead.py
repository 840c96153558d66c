"""Wall time of `collect` against the same generations without recording.

    PYTHONPATH=. python benchmarks/collect_overhead.py --model toy-wan --prompts 2 --seeds 2 --steps 30

Both sides use one loaded, warmed-up pipeline (the load is not timed) and run the same
(prompt, seed) pairs with the model's zoo call arguments and output_type="latent". The collect
side is the library call `collect(loaded, prompts, seeds, ...)` end to end into a fresh store
(recording, extra forwards, opening the store, the writes). Order: plain, collect, plain (the
plain time is the mean of both passes). Wall and CPU time of this process are printed: on a
shared CPU trust the CPU-time ratio at --threads 1. Target: ratio <= 2.3.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-wan")
    parser.add_argument("--prompts", type=int, default=2, help="how many of the zoo's default prompts")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--k-max", type=int, default=4)
    parser.add_argument("--estimator", default="trajectory")
    parser.add_argument("--no-latents", action="store_true")
    parser.add_argument("--random-weights", action="store_true",
                        help="a zoo toy's architecture and size with random weights (same cost; before the toy is trained)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: 1, so that the CPU-time ratio is meaningful; 0: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from calibration.collect import collect, default_prompts
    from calibration.models import load_model

    prompts = default_prompts(args.model)[: args.prompts]
    t0 = time.perf_counter()
    if args.random_weights:
        from calibration.models import LoadedModel
        from calibration.zoo.architectures import build_pipeline
        from calibration.zoo.registry import TOY_MODELS
        from calibration.zoo.train import TOY_CALL_ARGS, TOY_SIZES

        arch = TOY_MODELS[args.model]
        loaded = LoadedModel(args.model, build_pipeline(arch, TOY_SIZES[arch]), dict(TOY_CALL_ARGS))
    else:
        loaded = load_model(args.model)
    load_s = time.perf_counter() - t0
    call = loaded.call_kwargs(num_inference_steps=args.steps)
    loaded.pipe.set_progress_bar_config(disable=True)

    def generate(prompt: str, seed: int) -> None:
        loaded.pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **call)

    generate(prompts[0], 0)  # warm-up, not timed

    def plain_pass() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        for p in prompts:
            for s in range(args.seeds):
                generate(p, s)
        return time.perf_counter() - t0, time.process_time() - c0

    with tempfile.TemporaryDirectory() as tmp:
        collect(loaded, prompts[:1], seeds=[10**6], steps=args.steps, db=Path(tmp) / "warm.duckdb",  # warm-up
                k_max=args.k_max, estimator=args.estimator, no_latents=args.no_latents, progress=False)
        # plain, collect, plain: a drift of the machine's load over the measurement hits both sides
        before = plain_pass()
        t0, c0 = time.perf_counter(), time.process_time()
        summary = collect(loaded, prompts, seeds=args.seeds, steps=args.steps, db=Path(tmp) / "overhead.duckdb",
                          k_max=args.k_max, estimator=args.estimator, no_latents=args.no_latents, progress=False)
        collect_wall, collect_cpu = time.perf_counter() - t0, time.process_time() - c0
        after = plain_pass()
    plain_wall, plain_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    runs = summary.runs_written
    print(f"model {args.model}{' (random weights)' if args.random_weights else ''}: {runs} runs x {args.steps} steps, k_max {args.k_max}, estimator {args.estimator}, "
          f"latents {'off' if args.no_latents else 'on'}, torch threads {torch.get_num_threads()}")
    print(f"plain generations : wall {plain_wall:7.2f} s ({plain_wall / runs:.3f} s/run)  cpu {plain_cpu:7.2f} s "
          f"(mean of the passes before and after)")
    print(f"collect           : wall {collect_wall:7.2f} s ({collect_wall / runs:.3f} s/run)  cpu {collect_cpu:7.2f} s "
          f"(store open and writes included; model load {load_s:.2f} s not counted on either side)")
    print(f"ratio collect / plain: wall {collect_wall / plain_wall:.2f}, cpu {collect_cpu / plain_cpu:.2f} "
          "(target <= 2.3; trust cpu on a shared machine)")


if __name__ == "__main__":
    main()
