"""Tiny pipelines of the deployment shapes the zoo does not build: image-to-video and Wan 2.2.

Every one is assembled from `calibration.zoo.architectures.build_pipeline(...)` components (random
weights, real diffusers classes), so hooks, schedulers and offloading behave as on a checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from calibration.zoo.architectures import TINY, build_pipeline

__all__ = ["CALL", "image", "policy_for", "tiny_ltx_i2v", "tiny_wan22", "tiny_wan_ti2v"]

#: call arguments of the tiny fixtures (zoo's TINY_CALL_ARGS sizes: 32x32, 9 frames)
CALL = dict(height=32, width=32, num_frames=9, guidance_scale=5.0, max_sequence_length=16, num_inference_steps=8)


def image(size: int = 32, seed: int = 0) -> Image.Image:
    """A random RGB image to condition image-to-video on."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def policy_for(transformer: torch.nn.Module, eps: float, K: int = 1, warmup: float = 0, final: float = 0):
    """A flat-ε policy bound to this transformer's fingerprint (J_x = J_t = 1, a = b = 1, c = 0)."""
    from policies import config_fingerprint, constant_policy

    fp = config_fingerprint(dict(transformer.config))
    return constant_policy(eps, fingerprint=fp, max_skips=K, warmup_steps=warmup, final_steps=final)


def tiny_wan_ti2v():
    """Wan 2.2 TI2V's shape: `WanImageToVideoPipeline(expand_timesteps=True)`, no image encoder.

    The first latent frame is the encoded image and its tokens get t = 0 (`timestep` [B, tokens]).
    """
    from diffusers import WanImageToVideoPipeline

    base = build_pipeline("wan", TINY)
    pipe = WanImageToVideoPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, scheduler=base.scheduler,
        transformer=base.transformer, expand_timesteps=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_ltx_i2v():
    """`LTXImageToVideoPipeline`: first-frame tokens carry t = 0 in a [B, tokens] timestep."""
    from diffusers import LTXImageToVideoPipeline

    base = build_pipeline("ltx", TINY)
    pipe = LTXImageToVideoPipeline(
        scheduler=base.scheduler, vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
        transformer=base.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan22(boundary_ratio: float = 0.5):
    """Wan 2.2 A14B's shape: two experts of one config, `transformer` above the boundary timestep."""
    from diffusers import WanPipeline

    base = build_pipeline("wan", TINY, seed=0)
    low = build_pipeline("wan", TINY, seed=1).transformer  # same config, other weights
    pipe = WanPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, scheduler=base.scheduler,
        transformer=base.transformer, transformer_2=low, boundary_ratio=boundary_ratio,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, prompt: str = "a red circle moving left", seed: int = 0, **overrides):
    """One call of a fixture at `CALL` sizes; returns the final latents."""
    kwargs = dict(CALL)
    kwargs.update(overrides)
    generator = torch.Generator().manual_seed(seed)
    if type(pipe).__name__ == "WanImageToVideoPipeline":
        # its prompt cleaning needs `ftfy` unconditionally (the text-to-video one guards it): encode
        # the prompt with the text-to-video pipeline's code, the same tokenizer and encoder
        from diffusers import WanPipeline

        n = kwargs["max_sequence_length"]
        cond = WanPipeline._get_t5_prompt_embeds(pipe, prompt=prompt, max_sequence_length=n, device="cpu")
        uncond = WanPipeline._get_t5_prompt_embeds(pipe, prompt="", max_sequence_length=n, device="cpu")
        return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, generator=generator, output_type="latent",
                    **kwargs).frames
    return pipe(prompt=prompt, negative_prompt="", generator=generator, output_type="latent", **kwargs).frames
