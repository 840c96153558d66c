"""How much memory forecast "taylor" keeps: per sample, per cache context.

Every forecast module of every block keeps ``order + 1`` factors the size of its output, for
every row and every cache context (Wan calls cond and uncond separately: two contexts; CogVideoX
and LTX batch CFG into one context of twice the rows). That is ``blocks × modules × (order + 1)``
activations where plain reuse keeps one residual, so on a large model it decides whether the
mode fits at all: `factor_bytes` says so from the transformer's config before a run, and
`kept_bytes` measures what a run really kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from policies.errors import InputError
from sencache.adapters import Architecture

__all__ = ["ROW_BOOKKEEPING", "FactorMemory", "factor_bytes", "kept_bytes"]

#: per row and context: its depth (int64) and last two timesteps (float64), on the CPU
ROW_BOOKKEEPING = 8 + 8 + 8


@dataclass(frozen=True)
class FactorMemory:
    """Bytes forecast "taylor" keeps for one sample in one cache context."""

    class_name: str
    blocks: int
    width: int
    video_tokens: int
    text_tokens: int
    order: int
    dtype: torch.dtype
    per_module: dict[str, int]

    @property
    def per_block(self) -> int:
        return sum(self.per_module.values())

    @property
    def total(self) -> int:
        """Factors of every block, plus the row's orders and timesteps (on the CPU)."""
        return self.per_block * self.blocks + ROW_BOOKKEEPING

    def summary(self) -> str:
        modules = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in self.per_module.items())
        return (f"{self.class_name}: {self.blocks} blocks x ({modules}) = {self.total / 2**30:.2f} GiB per sample "
                f"per cache context (order {self.order}, {str(self.dtype).removeprefix('torch.')}, "
                f"{self.video_tokens} video + {self.text_tokens} text tokens, width {self.width})")


def factor_bytes(architecture: Architecture, config: Mapping[str, Any], video_tokens: int, text_tokens: int | None = None,
                 order: int = 1, dtype: torch.dtype = torch.float32) -> FactorMemory:
    """Bytes of Taylor factors kept per sample per cache context, from a transformer's config.

    Args:
        architecture: the model's description (`sencache.adapters.architecture_for(transformer)`);
            its `forecast_outputs` say which token sets each forecast module's output spans.
        config: its config (`dict(transformer.config)`): `num_layers`, `num_attention_heads`,
            `attention_head_dim` (and CogVideoX's `max_text_seq_length` for `text_tokens`).
        video_tokens: latent tokens per sample (Wan 2.1 at 81×720×1280: 21·45·80 = 75600).
        text_tokens: text tokens in the stream of a text-stream model (CogVideoX); default its
            `max_text_seq_length`. Ignored where no forecast module outputs text.
        order, dtype: the forecast's order and factors dtype (`sencache.apply(factors_dtype=)`).
    """
    if not architecture.forecast_outputs:
        raise InputError(f"no forecast memory model for {architecture.class_name}: its description in "
                         "sencache/adapters/ gives no `forecast_outputs`")
    width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    text = int(text_tokens if text_tokens is not None else config.get("max_text_seq_length", 0) or 0)
    tokens = {"video": int(video_tokens), "text": text, "video+text": int(video_tokens) + text}
    size = torch.empty((), dtype=dtype).element_size()
    per_module = {}
    for name, outputs in architecture.forecast_outputs.items():
        factors = sum(tokens[kind] * width for kind in outputs) * (order + 1) * size
        per_module[name] = factors
    return FactorMemory(architecture.class_name, int(config["num_layers"]), width, int(video_tokens), text, order, dtype, per_module)


def kept_bytes(forecast: Any, context: str) -> int:
    """Bytes a run really kept per sample in `context` (a `sencache.taylor.ModuleForecast`)."""
    record = forecast.rows.get(context)
    if record is None:
        return 0
    rows = record.depth.shape[0]
    tensors = [record.depth, record.t_last, record.t_prev]
    for hook in forecast.hooks:
        state = hook.state._state_cache.get(context)
        if state is not None and state.values is not None:
            tensors += [v for values in state.values for v in values]
    return sum(t.numel() * t.element_size() for t in tensors) // rows
