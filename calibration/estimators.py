"""Inputs of the paper's reference sensitivity estimator: clean latents of the zoo's data set.

The reference estimator (`recording(..., estimator="reference")`) measures J_x and J_t around
x_t = noise(z0, t) where z0 is a *clean* sample. For the zoo's toys z0 is the VAE encoding of the
clip `calibration.zoo.data.make_clip(prompt, seed)` draws for the run's prompt, in the layout and
normalisation the pipeline's denoising loop carries (the same as the zoo's training code).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from calibration.recording import ReferenceLatents
from policies.errors import InputError
from sencache.adapters import architecture_for

__all__ = ["check_reference_prompts", "clean_latents", "reference_latents"]

#: offset of the generator that draws the reference noise, so it differs from the run's noise
NOISE_SEED_OFFSET = 1_000_003


def check_reference_prompts(prompts: list[str]) -> None:
    """Refuse prompts the zoo's data set cannot draw (the reference estimator needs a clean clip)."""
    from calibration.zoo.data import parse_prompt

    for prompt in prompts:
        try:
            parse_prompt(prompt)
        except ValueError as exc:
            raise InputError(
                f"--estimator reference needs clean clips of the zoo's data set, and {exc}. "
                "Use zoo prompts (see calibration/zoo/data.py), or --estimator trajectory"
            ) from None


def _video(clip: np.ndarray) -> torch.Tensor:
    """[F, H, W, 3] in [0, 1] -> [1, 3, F, H, W] in [-1, 1], the VAEs' input."""
    return torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).unsqueeze(0).mul(2).sub(1)


@torch.no_grad()
def clean_latents(pipe: Any, clip: np.ndarray) -> torch.Tensor:
    """The clip's latent in the pipeline's loop layout (the architecture's `loop_latents`)."""
    arch = architecture_for(pipe)
    if arch.loop_latents is None:
        raise InputError(f"--estimator reference does not know how to encode clips for {arch.name} "
                         f"(its description in sencache/adapters/{arch.name}.py has no loop_latents); "
                         "use --estimator trajectory")
    vae = pipe.vae
    video = _video(clip).to(device=vae.device, dtype=vae.dtype)
    z = vae.encode(video).latent_dist.mean.float()
    return arch.loop_latents(pipe, z)


def reference_latents(pipe: Any, prompt: str, seed: int) -> ReferenceLatents:
    """z0 from the zoo clip of (`prompt`, `seed`) and a seeded Gaussian noise of the same shape."""
    from calibration.zoo.data import make_clip

    clean = clean_latents(pipe, make_clip(prompt, seed))
    generator = torch.Generator().manual_seed(int(seed) + NOISE_SEED_OFFSET)
    noise = torch.randn(clean.shape, generator=generator)
    return ReferenceLatents(clean=clean, noise=noise)
