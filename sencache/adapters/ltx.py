"""LTX-Video (`LTXVideoTransformer3DModel`): packed-token latents; its rotary table is per sample."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import LTXVideoTransformer3DModel

from sencache.adapters.base import Architecture


def _modulated_input(block: torch.nn.Module, args: dict[str, Any]) -> torch.Tensor | None:
    """`norm1(h)·(1 + scale_msa) + shift_msa` from the block's table and its reshaped `temb`."""
    h, temb = args["hidden_states"], args["temb"]
    n = block.scale_shift_table.shape[0]
    ada = block.scale_shift_table[None, None].to(temb.device) + temb.reshape(h.shape[0], temb.size(1), n, -1)
    shift, scale = ada[:, :, 0], ada[:, :, 1]
    return block.norm1(h) * (1 + scale) + shift


def _loop_latents(pipe: Any, z: torch.Tensor) -> torch.Tensor:
    """Normalised by the VAE's latent statistics, then packed into tokens, as the pipeline does."""
    vae = pipe.vae
    z = pipe._normalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    return pipe._pack_latents(z, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)


ARCHITECTURE = Architecture(
    name="ltx",
    transformer_class=LTXVideoTransformer3DModel,
    pipeline="LTXPipeline",
    block_lists=("transformer_blocks",),
    forecast_modules=("attn1", "attn2", "ff"),
    forecast_outputs={"attn1": ("video",), "attn2": ("video",), "ff": ("video",)},
    modulated_input=_modulated_input,
    loop_latents=_loop_latents,
)
