"""The prompt-fidelity read-out: exact on drawn clips, catches wrong ones, and the trained toys pass."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.zoo import data, fidelity
from calibration.zoo.registry import TOY_MODELS, zoo_folder


def test_reads_every_drawn_clip_exactly():
    for prompt in data.all_prompts()[::5]:
        assert all(fidelity.score(prompt, data.make_clip(prompt, 7)).values()), prompt


def test_scores_a_mismatched_clip_as_wrong():
    video = data.make_clip("a red circle moving left on a blue background", 0)
    s = fidelity.score("a green circle moving right on a yellow background", video)
    assert s == {"object_colour": False, "background_colour": False, "direction": False}


def test_reversed_time_reads_as_the_opposite_direction():
    video = data.make_clip("a blue square moving up on a red background", 2)
    assert fidelity.read_video(video[::-1]).direction == "down"


def test_flat_video_has_no_object_and_no_direction():
    video = np.broadcast_to(np.float32(data.PALETTE["green"]), (data.FRAMES, data.SIZE, data.SIZE, 3))
    r = fidelity.read_video(video)
    assert (r.object_colour, r.background_colour, r.direction) == (None, "green", None)


def test_tolerates_decoder_noise():
    rng = np.random.default_rng(0)
    prompt = "a yellow circle moving right on a green background"
    video = data.make_clip(prompt, 1) + rng.normal(0, 0.05, (data.FRAMES, data.SIZE, data.SIZE, 3)).astype(np.float32)
    assert all(fidelity.score(prompt, video).values())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TOY_MODELS))
def test_trained_toy_follows_heldout_prompts(name):
    if not (zoo_folder(name) / "model_index.json").exists():
        pytest.skip(f"{name} is not trained yet: run `sencache-calibrate zoo train {name}`")
    result = fidelity.check(name, prompts=data.heldout_prompts()[:6], seeds=[0], steps=20)
    # chance: 1/3 for the background (it differs from the object), 1/4 for colour and direction
    for factor in fidelity.FACTORS:
        assert result[factor] >= 0.6, (name, result)
