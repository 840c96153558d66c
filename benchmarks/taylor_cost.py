"""Per-step cost of the reuse modes: what a skipped step still costs, against a computed one.

    OMP_NUM_THREADS=1 python benchmarks/taylor_cost.py --model toy-wan --repeats 3

Every method skips the same steps (diffusers TaylorSeer's schedule at `--interval`: its warm-up
steps 0–2, then one step in N), so only the reuse differs:

* ``plain``: SenCache, forecast "none" (adds the cached residual: no block runs);
* ``linear``: SenCache, forecast "linear" (extrapolates the residual: no block runs);
* ``taylor``: SenCache, forecast "taylor" (every block runs its norms, modulation and gates;
  attention and feed-forward outputs are forecast per sample);
* ``taylorseer``: diffusers' TaylorSeer hook (the same modules forecast, one state per batch).

Prints, per method, the median wall time of a computed and of a skipped denoising step (all of
the step's transformer calls: Wan calls cond and uncond separately), the skipped step's time as
a share of a full-compute step, and its block-stack Linear MACs (the bench's accounting) as a
share of a full step's. All methods are timed in one process, interleaved repeat by repeat, so
that the ratios share the machine's conditions; on a shared CPU they are still noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np
import torch

import sencache
from calibration.baselines._counter import BlockCounter
from calibration.baselines.taylorseer import apply_taylorseer
from calibration.models import load_model
from policies import OperatingPoint, Policy, config_fingerprint, constant_policy
from policies.tables import EpsSchedule

METHODS = ("full", "plain", "linear", "taylor", "taylorseer")


def taylorseer_steps(num_steps: int, interval: int, warmup: int = 3) -> set[int]:
    """The steps diffusers' TaylorSeer computes (its `_measure_should_compute`)."""
    return {i for i in range(num_steps) if i < warmup or (i - warmup - 1) % interval == 0}


def mask_policy(loaded, computed: set[int], num_steps: int, forecast: str) -> Policy:
    """A policy that computes exactly `computed` (ε 0 there, 1e30 elsewhere, a knot per step)."""
    values = tuple(0.0 if i in computed else 1e30 for i in range(num_steps))
    positions = tuple(i / (num_steps - 1) for i in range(num_steps))
    point = OperatingPoint("mask", EpsSchedule(positions, values), max_skips=num_steps, forecast=forecast)
    data = constant_policy(0.0, fingerprint=config_fingerprint(dict(loaded.pipe.transformer.config))).to_dict()
    data["operating_points"] = [point.to_dict()]
    data["default_operating_point"] = "mask"
    return Policy.from_dict(data)


class StepTimer:
    """Per transformer call: wall time, timestep, whether a block ran, block-stack MACs."""

    def __init__(self, transformer: torch.nn.Module, counter: BlockCounter) -> None:
        self.counter = counter
        self.calls: list[tuple[float, float, bool, float]] = []
        self._start = 0.0
        self._t = 0.0
        self._handles = [transformer.register_forward_pre_hook(self._pre, with_kwargs=True),
                         transformer.register_forward_hook(self._post)]

    def _pre(self, module, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else 0.0)
        self._t = float(torch.as_tensor(t).flatten()[0])
        self._calls_before = int(self.counter.calls[0])
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        elapsed = time.perf_counter() - self._start
        ran = int(self.counter.calls[0]) > self._calls_before
        self.calls.append((self._t, elapsed, ran, self.counter.per_call[-1] if self.counter.per_call else 0.0))

    def steps(self) -> list[tuple[float, bool, float]]:
        """(seconds, computed, MACs) per denoising step: consecutive calls at one timestep."""
        out: list[list] = []
        last = None
        for t, dt, ran, macs in self.calls:
            if out and t == last:
                out[-1][0] += dt
                out[-1][1] = out[-1][1] or ran
                out[-1][2] += macs
            else:
                out.append([dt, ran, macs])
            last = t
        return [tuple(s) for s in out]

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def apply_method(loaded, method: str, computed: set[int], num_steps: int, interval: int):
    if method == "full":
        return lambda: None
    if method == "taylorseer":
        return apply_taylorseer(loaded.pipe, interval).remove
    forecast = {"plain": "none", "linear": "linear", "taylor": "taylor"}[method]
    sencache.apply(loaded.pipe, mask_policy(loaded, computed, num_steps, forecast))
    return lambda: sencache.remove(loaded.pipe)


def run(model: str, steps: int, interval: int, repeats: int, prompt: str) -> None:
    torch.set_num_threads(1)
    loaded = load_model(model)
    transformer = loaded.pipe.transformer
    computed = taylorseer_steps(steps, interval)
    blocks = sencache.adapter_for(transformer).blocks(transformer)
    times: dict[str, dict[bool, list[float]]] = defaultdict(lambda: defaultdict(list))
    macs: dict[str, dict[bool, list[float]]] = defaultdict(lambda: defaultdict(list))
    masks: dict[str, list[bool]] = {}
    for repeat in range(repeats + 1):  # repeat 0 warms up
        for method in METHODS:
            remove = apply_method(loaded, method, computed, steps, interval)
            with BlockCounter(transformer, blocks) as counter:
                timer = StepTimer(transformer, counter)
                with torch.no_grad():
                    loaded.pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), output_type="latent",
                                **loaded.call_kwargs(num_inference_steps=steps))
                timer.close()
            remove()
            per_step = timer.steps()
            masks[method] = [ran for _, ran, _ in per_step]
            if repeat:
                for seconds, ran, m in per_step:
                    times[method][ran].append(seconds)
                    macs[method][ran].append(m)
    full_time = statistics.median(times["full"][True])
    full_macs = statistics.median(macs["full"][True])
    print(f"model {model}, {steps} steps, computed steps (TaylorSeer, interval {interval}): {sorted(computed)} "
          f"({len(computed)}/{steps}), {repeats} repeats, torch threads {torch.get_num_threads()}")
    for method in METHODS[1:]:
        if masks[method] != [i in computed for i in range(steps)]:
            print(f"  warning: {method} computed steps {[i for i, r in enumerate(masks[method]) if r]}")
    print(f"{'method':<11} {'computed step ms':>17} {'skipped step ms':>16} {'skipped/full time':>18} "
          f"{'skipped/full MACs':>18}")
    for method in METHODS:
        comp = statistics.median(times[method][True]) * 1e3
        skipped = times[method].get(False) or [float("nan")]
        skip_ms = statistics.median(skipped) * 1e3
        skip_macs = np.median(macs[method].get(False) or [float("nan")])
        print(f"{method:<11} {comp:>17.2f} {skip_ms:>16.2f} {skip_ms / (full_time * 1e3):>18.3f} "
              f"{skip_macs / full_macs:>18.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy-wan")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--interval", type=int, default=2, help="TaylorSeer's cache interval (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt", default="a red circle moving left on a blue background")
    args = parser.parse_args()
    run(args.model, args.steps, args.interval, args.repeats, args.prompt)


if __name__ == "__main__":
    main()
