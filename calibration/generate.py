"""Generate videos from prompts with any `--model`, optionally under a policy, as a PNG grid.

The simplest end-to-end job: a person can look at the grid and see whether the model follows
its prompts, and whether a policy changed what it draws.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from calibration.models import load_model

__all__ = ["frames_grid", "generate_grid", "generate_videos"]


def generate_videos(
    model: str, prompts: list[str], steps: int | None = None, seed: int = 0, policy: str | None = None
) -> np.ndarray:
    """Return decoded videos [prompts, frames, H, W, 3] in [0, 1], one seed per prompt."""
    loaded = load_model(model)
    handle = None
    if policy is not None:
        import sencache
        from policies import Policy

        handle = sencache.apply(loaded.pipe, Policy.load(policy))
    videos = []
    for prompt in prompts:
        kwargs = loaded.call_kwargs(num_inference_steps=steps)
        generator = torch.Generator().manual_seed(seed)
        out = loaded.pipe(prompt=prompt, generator=generator, output_type="np", **kwargs)
        videos.append(np.asarray(out.frames[0], dtype=np.float32))
    if handle is not None:
        import sencache

        sencache.remove(loaded.pipe)
    return np.stack(videos)


def frames_grid(videos: np.ndarray, labels: list[str] | None = None, scale: int = 3) -> Image.Image:
    """One row per video, one column per frame, upscaled by `scale` with a text label above each row."""
    n, f, h, w, _ = videos.shape
    label_h = 12 if labels else 0
    grid = Image.new("RGB", (f * w * scale, n * (h * scale + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        top = i * (h * scale + label_h)
        if labels:
            draw.text((2, top), labels[i], fill="black")
        for j in range(f):
            frame = (np.clip(videos[i, j], 0, 1) * 255).astype(np.uint8)
            tile = Image.fromarray(frame).resize((w * scale, h * scale), Image.NEAREST)
            grid.paste(tile, (j * w * scale, top + label_h))
    return grid


def generate_grid(
    model: str, prompts: list[str], out: Path, steps: int | None = None, seed: int = 0, policy: str | None = None
) -> Path:
    """Generate `prompts` and write their frames as one PNG grid at `out`."""
    videos = generate_videos(model, prompts, steps=steps, seed=seed, policy=policy)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames_grid(videos, labels=prompts).save(out)
    return out
