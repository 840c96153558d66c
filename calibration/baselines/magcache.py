"""`magcache`: diffusers' MagCache (`MagCacheConfig`, `apply_mag_cache`), ratios from its own calibrate mode.

MagCache needs the model's per-step magnitude ratios ‖R_i‖/‖R_{i−1}‖ of the block-stack
residual. `calibrate_ratios` runs diffusers' calibrate mode once per model (one full-compute
call), captures the ratios it prints, and averages them over the cache contexts (Wan's cond and
uncond calls each print their own). The sweep then varies the threshold on MagCache's
accumulated error, with diffusers' defaults for the rest (K = 3, first 20% of steps computed).
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
from typing import Any

import numpy as np
import torch
from diffusers.hooks import MagCacheConfig

from calibration.baselines._common import BaselineHandle, transformer_of
from policies.errors import SenCacheError

__all__ = ["apply_magcache", "calibrate_ratios", "parse_ratios"]

logger = logging.getLogger(__name__)

_MARKER = "[MagCache] Calibration Complete"


def parse_ratios(printed: str) -> list[list[float]]:
    """Every ratio list diffusers printed after its "Calibration Complete" line."""
    lines = printed.splitlines()
    found = []
    for i, line in enumerate(lines):
        if _MARKER in line:
            for candidate in lines[i + 1:]:
                if candidate.strip().startswith("["):
                    found.append([float(v) for v in ast.literal_eval(candidate.strip())])
                    break
    return found


def calibrate_ratios(pipe: Any, call_kwargs: dict[str, Any], prompt: str, seed: int = 0) -> list[float]:
    """Run MagCache's calibrate mode once; return the per-step ratios (mean over cache contexts)."""
    transformer = transformer_of(pipe)
    steps = int(call_kwargs["num_inference_steps"])
    transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    buffer = io.StringIO()
    try:
        transformer._reset_stateful_cache()
        with contextlib.redirect_stdout(buffer):
            pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **call_kwargs)
    finally:
        transformer.disable_cache()
    runs = [r for r in parse_ratios(buffer.getvalue()) if len(r) == steps]
    if not runs:
        raise SenCacheError(
            f"MagCache calibration printed no ratios for {steps} steps (diffusers' output changed?): "
            f"captured {buffer.getvalue()[-300:]!r}"
        )
    ratios = np.mean(np.asarray(runs), axis=0)
    logger.info("magcache: calibrated %d ratios over %d cache context(s)", steps, len(runs))
    return [float(r) for r in ratios]


def apply_magcache(pipe: Any, knob: float, mag_ratios: list[float], num_inference_steps: int) -> BaselineHandle:
    """MagCache with accumulated-error threshold `knob` (higher is faster and less faithful)."""
    transformer = transformer_of(pipe)
    config = MagCacheConfig(threshold=float(knob), num_inference_steps=int(num_inference_steps),
                            mag_ratios=list(mag_ratios))
    transformer.enable_cache(config)
    return BaselineHandle(
        "magcache", float(knob), remove=transformer.disable_cache, reset=transformer._reset_stateful_cache,
        config={"threshold": float(knob), "max_skip_steps": config.max_skip_steps,
                "retention_ratio": config.retention_ratio, "ratios": "diffusers calibrate mode, mean over contexts"},
    )
