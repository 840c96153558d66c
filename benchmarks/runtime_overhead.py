"""Runtime cost of SenCache: the decision's own cost, and realised vs ideal speedup.

    python benchmarks/runtime_overhead.py --model toy-wan --steps 30

Prints:
  * decision cost per step as a share of one block-stack forward (target < 1%);
  * f, the block stack's share of the transformer forward time (full compute);
  * with a policy computing half the steps (K = 1, ε = ∞: compute, skip, compute, ...), the
    wall-clock speedup of the transformer calls, the ideal 1 / (1 − f·0.5), and their ratio
    (target ≥ 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch

import sencache
from calibration.models import load_model
from policies import Policy, config_fingerprint, constant_policy
from sencache import runtime, stack


class Timers:
    def __init__(self) -> None:
        self.decide: list[float] = []
        self.stack: list[float] = []
        self.forward: list[float] = []


@contextmanager
def timed(timers: Timers, transformer: torch.nn.Module):
    """Wrap the decision, the stack run and the whole transformer call with wall-clock timers."""
    begin, run_stack = runtime._Runtime.begin_forward, stack._HeadHook._run_stack

    def begin_timed(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return begin(self, *a, **k)
        finally:
            timers.decide.append(time.perf_counter() - t0)

    def stack_timed(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return run_stack(self, *a, **k)
        finally:
            timers.stack.append(time.perf_counter() - t0)

    starts: list[float] = []
    pre = transformer.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
    post = transformer.register_forward_hook(lambda *_: timers.forward.append(time.perf_counter() - starts.pop()))
    runtime._Runtime.begin_forward, stack._HeadHook._run_stack = begin_timed, stack_timed
    try:
        yield timers
    finally:
        runtime._Runtime.begin_forward, stack._HeadHook._run_stack = begin, run_stack
        pre.remove()
        post.remove()


def run(loaded, steps: int, repeats: int, prompt: str, forecast: str = "none") -> None:
    pipe = loaded.pipe
    fp = config_fingerprint(dict(pipe.transformer.config))

    def generate():
        generator = torch.Generator().manual_seed(0)
        pipe(prompt=prompt, generator=generator, output_type="latent", **loaded.call_kwargs(num_inference_steps=steps))

    results = {}
    for label, eps in (("full", 0.0), ("half", 1e30)):
        policy = constant_policy(eps, fingerprint=fp, max_skips=1).to_dict()
        policy["operating_points"][0]["forecast"] = forecast
        sencache.apply(pipe, Policy.from_dict(policy))
        generate()  # warm-up
        totals, timers_all = [], []
        for _ in range(repeats):
            with timed(Timers(), pipe.transformer) as timers:
                generate()
            totals.append(sum(timers.forward))
            timers_all.append(timers)
        results[label] = (statistics.median(totals), timers_all)
        sencache.remove(pipe)

    full_total, full_timers = results["full"]
    half_total, _ = results["half"]
    stack_time = statistics.median(sum(t.stack) for t in full_timers)
    f = stack_time / full_total
    per_stack = statistics.median(s for t in full_timers for s in t.stack)
    per_decide = statistics.median(d for t in full_timers for d in t.decide)
    ideal = 1.0 / (1.0 - f * 0.5)
    realised = full_total / half_total
    print(f"model {loaded.name}, {steps} steps, {repeats} repeats, torch threads {torch.get_num_threads()}, "
          f"forecast {forecast}")
    print(f"decision cost per transformer call: {per_decide * 1e3:.3f} ms = "
          f"{per_decide / per_stack:.2%} of one block-stack forward ({per_stack * 1e3:.2f} ms)")
    print(f"block-stack share of transformer forward time f = {f:.3f}")
    print(f"half the steps computed: transformer time {full_total:.3f}s -> {half_total:.3f}s, "
          f"speedup {realised:.3f}x, ideal 1/(1-f*0.5) = {ideal:.3f}x, realised/ideal = {realised / ideal:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy-wan")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt", default="a red circle moving left on a blue background")
    parser.add_argument("--forecast", choices=("none", "linear", "taylor"), default="none",
                        help="what the skipped steps reuse (default: %(default)s)")
    args = parser.parse_args()
    run(load_model(args.model), args.steps, args.repeats, args.prompt, args.forecast)


if __name__ == "__main__":
    main()
