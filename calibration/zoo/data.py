"""The zoo's synthetic prompted video set: coloured shapes moving over flat backgrounds.

Every clip is drawn by code from its prompt and a seed, so the data set needs no download and a
person can see whether a decoded video matches its prompt. A prompt names four factors:

    "a red circle moving left on a blue background"
       ^object colour  ^direction  ^background colour  (and ^shape)

4 object colours x 3 other background colours x 4 directions x 2 shapes = 96 combinations; 10
are held out of training (`heldout_prompts`) so fidelity is measured on combinations the models
never saw: each differs from a training prompt only by its shape.

Clips are float32 arrays [frames=9, 32, 32, 3] in [0, 1]; the object is 12 px across and moves
2 px per frame (16 px over the clip); the seed jitters its start position.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BACKGROUND_COLOURS",
    "DATA_VERSION",
    "DIRECTIONS",
    "FRAMES",
    "OBJECT_COLOURS",
    "PALETTE",
    "SHAPES",
    "SIZE",
    "PromptSpec",
    "all_prompts",
    "heldout_prompts",
    "make_batch",
    "make_clip",
    "parse_prompt",
    "training_prompts",
]

#: Bump when anything below changes what a clip looks like; zoo.json records it.
DATA_VERSION = 1

FRAMES = 9
SIZE = 32
OBJECT_PX = 12
STEP_PX = 2

#: RGB in [0, 1]; chosen far apart so the nearest-palette read-out is unambiguous.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.12, 0.70, 0.22),
    "blue": (0.14, 0.24, 0.88),
    "yellow": (0.92, 0.84, 0.12),
}
OBJECT_COLOURS = ("red", "green", "blue", "yellow")
BACKGROUND_COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square")
#: direction -> (dx, dy) in image coordinates (y grows downwards)
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass(frozen=True)
class PromptSpec:
    """The four factors of a prompt."""

    colour: str
    shape: str
    direction: str
    background: str

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction} on a {self.background} background"


def parse_prompt(prompt: str) -> PromptSpec:
    """Read the factors back from a prompt; raise ValueError when it is not a zoo prompt."""
    words = prompt.lower().strip().split()
    if (
        len(words) != 9
        or words[0] != "a"
        or words[3] != "moving"
        or words[5:7] != ["on", "a"]
        or words[8] != "background"
    ):
        raise ValueError(f"not a zoo prompt: {prompt!r} (expected 'a COLOUR SHAPE moving DIRECTION on a COLOUR background')")
    spec = PromptSpec(colour=words[1], shape=words[2], direction=words[4], background=words[7])
    if (
        spec.colour not in OBJECT_COLOURS
        or spec.shape not in SHAPES
        or spec.direction not in DIRECTIONS
        or spec.background not in BACKGROUND_COLOURS
        or spec.colour == spec.background
    ):
        raise ValueError(f"prompt {prompt!r} names a factor outside the zoo's vocabulary")
    return spec


def _combinations() -> list[tuple[int, int, int, int, PromptSpec]]:
    out = []
    for (ci, c), (si, s), (di, d), (bi, b) in itertools.product(
        enumerate(OBJECT_COLOURS), enumerate(SHAPES), enumerate(DIRECTIONS), enumerate(BACKGROUND_COLOURS)
    ):
        if c != b:
            out.append((ci, si, di, bi, PromptSpec(c, s, d, b)))
    return out


def _is_heldout(ci: int, si: int, di: int, bi: int) -> bool:
    # Spread so every object colour, background, direction and shape stays in training, and
    # each held-out combination differs from a training one only by its shape (10 of 96).
    return (ci + 2 * si + di + 3 * bi) % 8 == 0


def all_prompts() -> list[str]:
    """All 96 prompts, training and held-out, in a fixed order."""
    return [spec.prompt for *_, spec in _combinations()]


def training_prompts() -> list[str]:
    """The prompts the toys are trained on."""
    return [spec.prompt for ci, si, di, bi, spec in _combinations() if not _is_heldout(ci, si, di, bi)]


def heldout_prompts() -> list[str]:
    """Combinations never seen in training, for the fidelity check."""
    return [spec.prompt for ci, si, di, bi, spec in _combinations() if _is_heldout(ci, si, di, bi)]


def _shape_mask(shape: str, cx: float, cy: float) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    r = OBJECT_PX / 2
    if shape == "circle":
        return ((xx - cx) ** 2 + (yy - cy) ** 2) <= r * r
    return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)


def make_clip(prompt: str, seed: int = 0) -> np.ndarray:
    """Draw the clip of `prompt`: float32 [FRAMES, SIZE, SIZE, 3] in [0, 1], fixed by `seed`."""
    spec = parse_prompt(prompt)
    rng = np.random.default_rng(seed)
    dx, dy = DIRECTIONS[spec.direction]
    travel = STEP_PX * (FRAMES - 1)
    margin = OBJECT_PX / 2 + 1
    span = SIZE - 2 * margin - travel  # room left along the motion axis (2 px)

    def start(d: int) -> float:
        if d == 0:  # across the motion: anywhere that keeps the object inside
            return float(rng.uniform(margin, SIZE - margin))
        lo = margin if d > 0 else SIZE - margin - span
        return float(lo + rng.uniform(0, span))

    x0, y0 = start(dx), start(dy)
    clip = np.empty((FRAMES, SIZE, SIZE, 3), dtype=np.float32)
    clip[:] = np.asarray(PALETTE[spec.background], dtype=np.float32)
    colour = np.asarray(PALETTE[spec.colour], dtype=np.float32)
    for f in range(FRAMES):
        mask = _shape_mask(spec.shape, x0 + dx * STEP_PX * f, y0 + dy * STEP_PX * f)
        clip[f][mask] = colour
    return clip


def make_batch(prompts: list[str], seeds: list[int]) -> np.ndarray:
    """Clips of `prompts` with `seeds`, stacked: [B, FRAMES, SIZE, SIZE, 3]."""
    return np.stack([make_clip(p, s) for p, s in zip(prompts, seeds, strict=True)])
