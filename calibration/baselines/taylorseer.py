"""`taylorseer`: diffusers' TaylorSeer cache, with identifiers that match each architecture.

diffusers' default identifiers (`^blocks.*attn`, `^transformer_blocks.*attn`, matched with
`re.fullmatch`) match no module of Wan, CogVideoX or LTX, whose attention modules are named
`attn1`/`attn2`: TaylorSeer would silently do nothing. Here the cached modules are named
explicitly: every block's attention and feed-forward modules (the architecture description's
`forecast_modules`), TaylorSeer's feature caching.
At a refresh step they run and update their Taylor factors; in between, their outputs are
predicted (order 1), so their Linears do not run; the blocks' norms and gating still run.

The knob is the cache interval N: after the warm-up, one step in N refreshes.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from diffusers.hooks import TaylorSeerCacheConfig

from calibration.baselines._common import BaselineHandle, MethodUnsupported, transformer_of
from sencache.adapters import adapter_for

__all__ = ["apply_taylorseer", "cache_identifiers"]


def cache_identifiers(pipe: Any) -> list[str]:
    """The `re.fullmatch` patterns of the modules TaylorSeer caches on this pipeline's transformer."""
    transformer = transformer_of(pipe)
    arch = adapter_for(transformer)
    patterns = []
    for attr in arch.block_lists:  # each list's modules: its blocks may be of another kind
        blocks = getattr(transformer, attr)
        names = arch.forecast_module_names(blocks[0]) if len(blocks) else ()
        if names:
            patterns.append(rf"{attr}\.\d+\.({'|'.join(names)})")
    return patterns


def apply_taylorseer(pipe: Any, knob: int, max_order: int = 1) -> BaselineHandle:
    """TaylorSeer with cache interval `knob` (>= 2; higher is faster and less faithful)."""
    transformer = transformer_of(pipe)
    interval = int(knob)
    if interval < 2:
        raise ValueError(f"taylorseer: the cache interval must be >= 2 (1 would compute every step); got {knob!r}")
    patterns = cache_identifiers(pipe)
    matched = [n for n, _ in transformer.named_modules() if any(re.fullmatch(p, n) for p in patterns)]
    if not matched:
        raise MethodUnsupported(f"TaylorSeer identifiers {patterns} match no module of {type(transformer).__name__}")
    config = TaylorSeerCacheConfig(
        cache_interval=interval,
        disable_cache_before_step=3,
        max_order=max_order,
        taylor_factors_dtype=torch.float32,
        cache_identifiers=patterns,
    )
    transformer.enable_cache(config)
    n_blocks = len(adapter_for(transformer).blocks(transformer))
    return BaselineHandle(
        "taylorseer", interval, remove=transformer.disable_cache, reset=transformer._reset_stateful_cache,
        config={"cache_interval": interval, "disable_cache_before_step": 3, "max_order": max_order,
                "cache_identifiers": patterns, "modules_cached": len(matched), "blocks": n_blocks},
    )
