"""Does a decoded video match its prompt? Read the frames back into the prompt's factors.

`read_video` finds, from pixels alone, the background colour (the palette colour most pixels are
nearest to), the object (pixels far from the background colour), its colour (the palette colour
most object pixels are nearest to) and its direction (the displacement of the object mask's
centroid from the first frames to the last). `check` generates held-out prompts with a toy and
scores each factor against the prompt.

The read-out is exact on clips from `data.make_clip`, so any miss on a generated video is the
model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from calibration.zoo import data

__all__ = ["FACTORS", "Reading", "check", "read_video", "score"]

FACTORS = ("object_colour", "background_colour", "direction")

_NAMES = list(data.PALETTE)
_RGB = np.asarray([data.PALETTE[n] for n in _NAMES], dtype=np.float32)
#: a pixel belongs to the object when it is this far (RGB distance) from the background colour
_OBJECT_DISTANCE = 0.3
#: fewer object pixels than this in a frame: the frame shows no object
_MIN_PIXELS = 12
#: the centroid must travel at least this far (px) over the clip to count as moving
_MIN_TRAVEL = 3.0


@dataclass(frozen=True)
class Reading:
    """What the frames show; None where nothing could be read (no object, no motion)."""

    object_colour: str | None
    background_colour: str
    direction: str | None
    travel: tuple[float, float]  # centroid displacement (dx, dy) in pixels, first to last frames


def _nearest(pixels: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour of each pixel [..., 3]."""
    d = ((pixels[..., None, :] - _RGB) ** 2).sum(-1)
    return d.argmin(-1)


def read_video(video: np.ndarray) -> Reading:
    """Read factors from one decoded video [frames, H, W, 3] in [0, 1]."""
    video = np.clip(np.asarray(video, dtype=np.float32), 0, 1)
    labels = _nearest(video)
    background = int(np.bincount(labels.ravel(), minlength=len(_NAMES)).argmax())
    bg_rgb = np.median(video[labels == background], axis=0)
    mask = np.sqrt(((video - bg_rgb) ** 2).sum(-1)) > _OBJECT_DISTANCE  # [F, H, W]
    object_labels = labels[mask]
    object_labels = object_labels[object_labels != background]
    colour = _NAMES[int(np.bincount(object_labels).argmax())] if object_labels.size >= _MIN_PIXELS else None

    yy, xx = np.mgrid[0 : video.shape[1], 0 : video.shape[2]]
    centroids = [
        (float(xx[m].mean()), float(yy[m].mean())) for m in mask if m.sum() >= _MIN_PIXELS
    ]
    direction, travel = None, (0.0, 0.0)
    if len(centroids) >= 2:
        k = max(1, len(centroids) // 3)  # average the first and last thirds: robust to one bad frame
        first = np.mean(centroids[:k], axis=0)
        last = np.mean(centroids[-k:], axis=0)
        dx, dy = (last - first).tolist()
        travel = (dx, dy)
        if max(abs(dx), abs(dy)) >= _MIN_TRAVEL:
            if abs(dx) >= abs(dy):
                direction = "right" if dx > 0 else "left"
            else:
                direction = "down" if dy > 0 else "up"
    return Reading(colour, _NAMES[background], direction, travel)


def score(prompt: str, video: np.ndarray) -> dict[str, bool]:
    """Which factors of `prompt` the video shows correctly."""
    spec = data.parse_prompt(prompt)
    r = read_video(video)
    return {
        "object_colour": r.object_colour == spec.colour,
        "background_colour": r.background_colour == spec.background,
        "direction": r.direction == spec.direction,
    }


def check(
    model: Any, prompts: list[str] | None = None, seeds: list[int] | None = None, steps: int | None = None
) -> dict[str, Any]:
    """Generate every prompt with every seed and return per-factor accuracies in [0, 1].

    `model` is a zoo name, a pipeline folder, or a `LoadedModel`; its zoo.json call arguments
    are used (30 steps with CFG for the toys). `prompts` defaults to the held-out prompts.
    The result also has `n` (videos scored) and `misses` (prompt, seed, what was read).
    """
    import torch

    from calibration.models import LoadedModel, load_model

    loaded = model if isinstance(model, LoadedModel) else load_model(str(model))
    prompts = list(prompts) if prompts is not None else data.heldout_prompts()
    seeds = list(seeds) if seeds is not None else [0]
    hits = {f: 0 for f in FACTORS}
    misses = []
    n = 0
    for seed in seeds:
        for prompt in prompts:
            generator = torch.Generator().manual_seed(seed)
            out = loaded.pipe(
                prompt=prompt, generator=generator, output_type="np", **loaded.call_kwargs(num_inference_steps=steps)
            )
            video = np.asarray(out.frames[0], dtype=np.float32)
            s = score(prompt, video)
            for f in FACTORS:
                hits[f] += int(s[f])
            if not all(s.values()):
                misses.append({"prompt": prompt, "seed": seed, "read": read_video(video).__dict__})
            n += 1
    result: dict[str, Any] = {f: hits[f] / max(n, 1) for f in FACTORS}
    result["n"] = n
    result["misses"] = misses
    return result
