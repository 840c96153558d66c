"""Shared fixtures: tiny random pipelines of the three real architectures (structure tests)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ARCHS = ["wan", "cogvideox", "ltx"]


@pytest.fixture(params=ARCHS, ids=ARCHS)
def tiny(request):
    """A `LoadedModel` of a tiny random-weight pipeline, one per architecture."""
    from calibration.models import load_model

    return load_model(f"tiny-{request.param}")


def generate(loaded, prompts, seed=0, output_type="latent", **overrides):
    """Run `loaded.pipe` with its zoo call arguments; one generator seed for the batch."""
    kwargs = loaded.call_kwargs(**overrides)
    generator = torch.Generator().manual_seed(seed)
    if isinstance(prompts, str):
        prompts = [prompts]
    return loaded.pipe(
        prompt=prompts, negative_prompt=[""] * len(prompts), generator=generator, output_type=output_type, **kwargs
    ).frames
