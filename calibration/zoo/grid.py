"""A toy's look-and-see sheet: decoded frames of a few prompts as one PNG, and where its time goes.

`zoo_grid("toy-wan", "docs/toy-wan.png")` draws held-out prompts (never trained on) and training
prompts, one row each, labelled with the prompt and what `fidelity.read_video` reads from the
frames. `block_stack_share` measures the fraction of a transformer forward spent in its block
stack, the part a step cache skips.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from calibration.zoo import data
from sencache.adapters import architecture_for

__all__ = ["GRID_PROMPTS", "block_stack_share", "zoo_grid"]

#: Four held-out prompts, then four training prompts: every colour, both shapes, all directions.
GRID_PROMPTS = data.heldout_prompts()[:4] + [
    "a yellow circle moving right on a red background",
    "a blue circle moving left on a yellow background",
    "a green circle moving up on a red background",
    "a red square moving left on a green background",
]


def zoo_grid(model: str, out: Path, prompts: list[str] | None = None, seed: int = 0, steps: int | None = None) -> Path:
    """Generate `prompts` with `model` (zoo.json call arguments) and write a labelled frame grid."""
    from calibration.generate import frames_grid, generate_videos
    from calibration.zoo.fidelity import read_video

    prompts = list(prompts or GRID_PROMPTS)
    videos = generate_videos(model, prompts, steps=steps, seed=seed)
    heldout = set(data.heldout_prompts())
    labels = []
    for prompt, video in zip(prompts, videos, strict=True):
        r = read_video(video)
        tag = "held-out" if prompt in heldout else "train"
        labels.append(f"[{tag}] {prompt} | read: {r.object_colour} {r.direction} on {r.background_colour}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames_grid(videos, labels=labels, scale=4).save(out)
    return out


def block_stack_share(model: str, repeats: int = 20) -> dict[str, float]:
    """Time one CFG-batch transformer forward with and without its block stack.

    The blocks are swapped for identities (`nn.ModuleList` of `_Skip`) and the same forward is
    timed again; share = (full - without blocks) / full. Inputs are captured from a real
    pipeline call, so shapes, masks and rotary embeddings are exactly the pipeline's.
    """
    from calibration.models import load_model

    loaded = load_model(model)
    transformer = loaded.pipe.transformer
    captured: dict = {}

    def grab(_module, args, kwargs):
        if not captured:
            captured["args"], captured["kwargs"] = args, dict(kwargs)

    handle = transformer.register_forward_pre_hook(grab, with_kwargs=True)
    loaded.pipe(prompt=data.heldout_prompts()[0], output_type="latent", **loaded.call_kwargs(num_inference_steps=1))
    handle.remove()

    arch = architecture_for(transformer)
    lists = {attr: getattr(transformer, attr) for attr in arch.block_lists}

    def timed() -> float:
        with torch.no_grad():
            transformer(*captured["args"], **captured["kwargs"])  # warm-up
            best = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                transformer(*captured["args"], **captured["kwargs"])
                best.append(time.perf_counter() - t0)
        return float(np.median(best))

    full = timed()
    for attr, blocks in lists.items():  # text-stream blocks return (video, text)
        setattr(transformer, attr, torch.nn.ModuleList([_Skip(arch.text_stream) for _ in blocks]))
    try:
        rest = timed()
    finally:
        for attr, blocks in lists.items():
            setattr(transformer, attr, blocks)
    return {"forward_ms": full * 1e3, "outside_blocks_ms": rest * 1e3, "block_share": (full - rest) / full}


class _Skip(torch.nn.Module):
    """A block that returns its inputs: hidden states (and the text states, for a text-stream architecture)."""

    def __init__(self, joint: bool):
        super().__init__()
        self.joint = joint

    def forward(self, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        return (hidden_states, encoder_hidden_states) if self.joint else hidden_states
