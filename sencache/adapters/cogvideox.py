"""CogVideoX (`CogVideoXTransformer3DModel`): blocks return (video, text); both residuals are cached."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import CogVideoXTransformer3DModel

from sencache.adapters.base import Architecture


def _modulated_input(block: torch.nn.Module, args: dict[str, Any]) -> torch.Tensor | None:
    """The video half of `norm1(h, text, temb)` (LayerNormZero)."""
    return block.norm1(args["hidden_states"], args["encoder_hidden_states"], args["temb"])[0]


def _loop_latents(pipe: Any, z: torch.Tensor) -> torch.Tensor:
    """Frames before channels ([B, F, C, H, W]), times the VAE's `scaling_factor`."""
    return z.permute(0, 2, 1, 3, 4) * pipe.vae.config.scaling_factor


ARCHITECTURE = Architecture(
    name="cogvideox",
    transformer_class=CogVideoXTransformer3DModel,
    pipeline="CogVideoXPipeline",
    block_lists=("transformer_blocks",),
    text_stream=True,
    unbatched_block_args=frozenset({"image_rotary_emb"}),
    forecast_modules=("attn1", "ff"),
    # attn1 returns (video, text); ff runs on text and video concatenated
    forecast_outputs={"attn1": ("video", "text"), "ff": ("video+text",)},
    modulated_input=_modulated_input,
    loop_latents=_loop_latents,
)
