"""What an operating point computes at other step counts: the fraction measured by running it.

"One policy, any step count" is a promise each point keeps only as far as it is measured: a
score-driven point's compute depends on the scores along the trajectory, which change with the
step count. `measure_nfe_by_steps` runs the point through the runtime (the real hooks) on a few
prompts at each step count, and `fit`/`export` write the result as the point's
``expected_nfe_by_steps``. A static point needs no run: its schedule says its steps
(`StaticSchedule.fraction`), and the runtime computes exactly those.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

import sencache
from policies import OperatingPoint, Policy

__all__ = ["STEP_COUNTS", "measure_nfe_by_steps", "static_nfe_by_steps"]

logger = logging.getLogger("sencache.calibration")

#: the step counts every shipped point states its compute fraction at
STEP_COUNTS = (20, 30, 50)


def static_nfe_by_steps(point: OperatingPoint, steps: Sequence[int] = STEP_COUNTS) -> dict[str, float]:
    """A static point's compute fraction at each step count, exactly (no run needed)."""
    if point.schedule is None:
        raise ValueError(f"operating point {point.name!r} is score-driven: use measure_nfe_by_steps")
    return {str(n): point.schedule.fraction(n) for n in steps}


def measure_nfe_by_steps(
    loaded: Any,
    policy: Policy,
    point: OperatingPoint,
    prompts: Sequence[str],
    seed: int = 0,
    steps: Sequence[int] = STEP_COUNTS,
) -> dict[str, float]:
    """The fraction of block-stack evaluations `point` makes at each step count, mean over a batch.

    `loaded` is a `calibration.models.LoadedModel`; the prompts run as one batch, latent output
    only. Static points are answered from their schedule.
    """
    if point.schedule is not None:
        return static_nfe_by_steps(point, steps)
    single = Policy(policy.model, policy.scheduler, policy.sensitivity, policy.predictor_for(point), (point,),
                    point.name, {}, predictors=dict(policy.predictors))
    out: dict[str, float] = {}
    handle = sencache.apply(loaded.pipe, single, operating_point=point.name, strict=False)
    try:
        for n in steps:
            with torch.no_grad():
                loaded.pipe(list(prompts), generator=torch.Generator().manual_seed(seed), output_type="latent",
                            **loaded.call_kwargs(num_inference_steps=int(n)))
            out[str(n)] = float(handle.report().computed.mean())
            logger.info("  %s at %d steps: computes %.3f", point.name, n, out[str(n)])
    finally:
        sencache.remove(loaded.pipe)
    return out
