"""`dbcache`: cache-dit's DBCache (`cache_dit.enable_cache(pipe, cache_config=DBCacheConfig(...))`).

A real peer library (cache-dit 1.5.3). Configured F1B0: the first block always runs and its
residual change decides whether the rest are reused, the setting cache-dit recommends for small
step counts; its warm-up (`max_warmup_steps`, default 8 of 28+) is scaled to 20% of the steps so
a 10-step toy run can skip at all. cache-dit ships adapters for WanPipeline, CogVideoXPipeline
and LTXPipeline; a pipeline it cannot wrap raises `MethodUnsupported` with cache-dit's reason.
"""

from __future__ import annotations

import logging
from typing import Any

from calibration.baselines._common import BaselineHandle, MethodUnavailable, MethodUnsupported, transformer_of

__all__ = ["apply_dbcache"]

WARMUP_FRACTION = 0.2


def _quiet_cache_dit() -> None:
    """cache-dit logs every context to stdout at INFO: keep its errors only."""
    from cache_dit import logger as cd_logger

    if cd_logger._default_handler is not None and not logging.getLogger().isEnabledFor(logging.DEBUG):
        cd_logger._default_handler.setLevel(logging.ERROR)


def apply_dbcache(pipe: Any, knob: float, num_inference_steps: int) -> BaselineHandle:
    """DBCache F1B0 with residual-diff threshold `knob` (higher is faster and less faithful)."""
    try:
        import cache_dit
        from cache_dit import DBCacheConfig
    except ImportError as exc:
        raise MethodUnavailable(f"dbcache needs cache-dit (`pip install cache-dit==1.5.3`): {exc}") from exc
    _quiet_cache_dit()
    transformer_of(pipe)
    steps = int(num_inference_steps)
    warmup = max(1, round(WARMUP_FRACTION * steps))
    config = DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=float(knob),
                           max_warmup_steps=warmup, num_inference_steps=steps)
    try:
        cache_dit.enable_cache(pipe, cache_config=config)
    except Exception as exc:  # cache-dit raises plain ValueError/AssertionError for unknown pipelines
        raise MethodUnsupported(f"cache-dit {cache_dit.__version__} cannot wrap {type(pipe).__name__}: "
                                f"{type(exc).__name__}: {exc}") from exc

    def reset() -> None:
        cache_dit.refresh_context(pipe.transformer, num_inference_steps=steps)

    return BaselineHandle(
        "dbcache", float(knob), remove=lambda: cache_dit.disable_cache(pipe), reset=reset,
        config={"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "residual_diff_threshold": float(knob),
                "max_warmup_steps": warmup, "library": f"cache-dit {cache_dit.__version__}"},
    )
