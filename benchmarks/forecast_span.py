"""How a forecast's error depends on where its second point lies: the store measures r − 1 only.

The store measures the module-level forecast ("taylor") at step r + k from the computed steps r
and r − 1 (`calibration.taylor_probe`). At inference the second point is the sample's previous
*computed* step r − h: h = 2 for every skip of a K = 1 point, up to K + 1 for a K = K point.
Replay scores every skip with the h = 1 error, and it misjudges points by their K (on
toy-cogvideox's holdout runs: K = 1 and K = 2 points 1.4–1.6× too high, K = 3 and K = 4 points
0.7–1.0×; `benchmarks/replay_vs_rerun.py --regret`). This probe records full-compute trajectories
with the forecast taken from r and r − h instead, for h = 1..`--spans`, and prints the median
over samples and steps r of e_h(r, k) / e_1(r, k) by lag k: the factor a span-aware store would
give replay.

    OMP_NUM_THREADS=1 python benchmarks/forecast_span.py --model toy-cogvideox --prompts 4 --spans 4

Measured (4 training prompts, seed 0, 30 steps), e_h / e_1 at k = 1..4:

    | h | toy-cogvideox          | toy-wan                | toy-ltx                |
    | 2 | 0.85 0.85 0.89 0.89    | 0.98 1.01 1.01 1.01    | 0.96 1.01 1.02 1.04    |
    | 3 | 0.85 0.86 0.89 0.93    | 1.01 1.07 1.07 1.04    | 1.06 1.16 1.16 1.17    |
    | 4 | 0.89 0.92 0.95 0.97    | 1.12 1.18 1.14 1.11    | 1.26 1.35 1.31 1.30    |

Within 15 % for h <= 3 on every toy, and on toy-cogvideox *smaller* with a wider span (a wider
backward difference also averages the residual's step-to-step noise): the second point explains
little of replay's 0.7–1.75× misjudgement there, which lies in how the skips of a whole mask
compound, not in one skip's local error.
"""

from __future__ import annotations

import argparse
from collections import deque

import numpy as np
import pandas as pd
import torch

from calibration.models import load_model
from calibration.recording import TableSink, recording
from calibration.zoo.data import training_prompts


def taylor_errors(loaded, prompts: list[str], span: int, k_max: int) -> pd.DataFrame:
    """The "taylor" reuse errors of full-compute runs of `prompts` (seed 0), forecast from r and r − `span`."""
    sink = TableSink()
    with recording(loaded.pipe, sink, k_max=k_max, latents=False) as rec:
        probe = rec.recorder.taylor
        probe.span, probe.window = span, deque(maxlen=k_max + span)  # r − span must still be kept
        for prompt in prompts:
            out = loaded.pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), output_type="latent",
                              **loaded.call_kwargs())
            rec.finish(out.frames)
    frame = sink.frame("reuse_errors")
    return frame[frame["mode"] == "taylor"][["call", "sample", "step", "lag", "error"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="toy-cogvideox")
    parser.add_argument("--prompts", type=int, default=4, help="training prompts to record (seed 0)")
    parser.add_argument("--spans", type=int, default=4, help="largest h measured")
    parser.add_argument("--k-max", type=int, default=4, help="largest lag k")
    args = parser.parse_args()
    loaded = load_model(args.model)
    loaded.pipe.set_progress_bar_config(disable=True)
    prompts = training_prompts()[: args.prompts]
    keys = ["call", "sample", "step", "lag"]
    base = taylor_errors(loaded, prompts, 1, args.k_max).rename(columns={"error": "e1"})
    print(f"{args.model}: median e_h(r, k) / e_1(r, k) of the 'taylor' forecast over {len(prompts)} runs, "
          f"steps r >= {args.spans} (all h measured there)")
    print("| h | " + " | ".join(f"k = {k}" for k in range(1, args.k_max + 1)) + " |")
    print("|---|" + "---|" * args.k_max)
    for span in range(1, args.spans + 1):
        got = base if span == 1 else taylor_errors(loaded, prompts, span, args.k_max).merge(base, on=keys)
        got = got[got["step"] >= args.spans]
        ratio = (got["error"] / got["e1"]) if span > 1 else pd.Series(np.ones(len(got)), index=got.index)
        cells = [f"{np.median(ratio[got['lag'] == k]):.2f}" if (got["lag"] == k).any() else "—"
                 for k in range(1, args.k_max + 1)]
        print(f"| {span} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
