"""HunyuanVideo (`HunyuanVideoTransformer3DModel`): dual-stream blocks, then single-stream blocks.

Both kinds return `(video, text)`, so the stack is the two lists one after the other and both
residuals are cached; the single-stream blocks call the rotary table `image_rotary_emb` where
the dual-stream ones call it `freqs_cis`. CFG ("true CFG", with a negative prompt) runs as two
calls, `cond` and `uncond`, never batched.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.models.transformers.transformer_hunyuan_video import (
    HunyuanVideoSingleTransformerBlock,
    HunyuanVideoTokenReplaceSingleTransformerBlock,
)

from sencache.adapters.base import Architecture

_SINGLE = {"freqs_cis": "image_rotary_emb"}


def _modulated_input(block: torch.nn.Module, args: dict[str, Any]) -> torch.Tensor | None:
    """The video stream after the first dual-stream block's `norm1` (AdaLayerNormZero)."""
    return block.norm1(args["hidden_states"], emb=args["temb"])[0]


def _loop_latents(pipe: Any, z: torch.Tensor) -> torch.Tensor:
    """Raw latents times the VAE's `scaling_factor` (the pipeline divides by it before decoding)."""
    return z * pipe.vae.config.scaling_factor


ARCHITECTURE = Architecture(
    name="hunyuanvideo",
    transformer_class=HunyuanVideoTransformer3DModel,
    pipeline="HunyuanVideoPipeline",
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    text_stream=True,
    unbatched_block_args=frozenset({"freqs_cis", "image_rotary_emb"}),
    # dual-stream: joint attention, video and text feed-forwards; single-stream: attention, MLP in, fused out
    forecast_modules=("attn", "ff", "ff_context", "proj_mlp", "proj_out"),
    block_arg_names={HunyuanVideoSingleTransformerBlock: _SINGLE, HunyuanVideoTokenReplaceSingleTransformerBlock: _SINGLE},
    modulated_input=_modulated_input,
    loop_latents=_loop_latents,
    batched_cfg=lambda pipe: False,
)
