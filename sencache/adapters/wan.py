"""Wan 2.1 / 2.2 (`WanTransformer3DModel`): blocks in `blocks`, rotary table shared by the batch."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import WanTransformer3DModel

from sencache.adapters.base import Architecture


def _modulated_input(block: torch.nn.Module, args: dict[str, Any]) -> torch.Tensor | None:
    """`norm1(h)·(1 + scale_msa) + shift_msa` with `(scale_shift_table + temb)` (per-token temb: 4-D)."""
    h, temb = args["hidden_states"], args["temb"]
    if temb.ndim == 4:
        shift, scale = (block.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)[:2]
        shift, scale = shift.squeeze(2), scale.squeeze(2)
    else:
        shift, scale = (block.scale_shift_table + temb.float()).chunk(6, dim=1)[:2]
    return block.norm1(h.float()) * (1 + scale) + shift


def _loop_latents(pipe: Any, z: torch.Tensor) -> torch.Tensor:
    """(z − latents_mean) / latents_std, per channel, from the VAE config."""
    config = pipe.vae.config
    mean = torch.tensor(config.latents_mean, dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std, dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
    return (z - mean) / std


ARCHITECTURE = Architecture(
    name="wan",
    transformer_class=WanTransformer3DModel,
    pipeline="WanPipeline",
    block_lists=("blocks",),
    unbatched_block_args=frozenset({"rotary_emb"}),
    forecast_modules=("attn1", "attn2", "ffn"),
    forecast_outputs={"attn1": ("video",), "attn2": ("video",), "ffn": ("video",)},
    modulated_input=_modulated_input,
    loop_latents=_loop_latents,
)
