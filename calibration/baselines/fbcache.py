"""`fbcache`: diffusers' First Block Cache (`FirstBlockCacheConfig`, `apply_first_block_cache`).

Block 0 always runs; when the relative change of its residual since the last full step is
below the threshold, the other blocks are skipped and their cached residual reused. Needs at
least two blocks.
"""

from __future__ import annotations

from typing import Any

from diffusers.hooks import FirstBlockCacheConfig

from calibration.baselines._common import BaselineHandle, MethodUnsupported, transformer_of
from sencache.adapters import adapter_for

__all__ = ["apply_fbcache"]


def apply_fbcache(pipe: Any, knob: float) -> BaselineHandle:
    """`transformer.enable_cache(FirstBlockCacheConfig(threshold=knob))`; higher is faster."""
    transformer = transformer_of(pipe)
    blocks = adapter_for(transformer).blocks(transformer)
    if len(blocks) < 2:
        raise MethodUnsupported(f"First Block Cache needs >= 2 blocks; {type(transformer).__name__} has {len(blocks)}")
    transformer.enable_cache(FirstBlockCacheConfig(threshold=float(knob)))
    return BaselineHandle(
        "fbcache", float(knob), remove=transformer.disable_cache, reset=transformer._reset_stateful_cache,
        config={"threshold": float(knob), "library": "diffusers FirstBlockCacheConfig"},
    )
