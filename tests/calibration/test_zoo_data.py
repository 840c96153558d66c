"""The synthetic prompted video set: deterministic, closed vocabulary, held-out split."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.zoo import data


def test_clip_is_deterministic_in_prompt_and_seed():
    p = data.training_prompts()[0]
    np.testing.assert_array_equal(data.make_clip(p, 3), data.make_clip(p, 3))
    assert not np.array_equal(data.make_clip(p, 3), data.make_clip(p, 4))


def test_clip_shape_range_and_colours():
    clip = data.make_clip("a red circle moving left on a blue background", 0)
    assert clip.shape == (data.FRAMES, data.SIZE, data.SIZE, 3) and clip.dtype == np.float32
    colours = {tuple(c) for c in clip.reshape(-1, 3).tolist()}
    # exactly two colours: the background and the object
    assert colours == {tuple(np.float32(data.PALETTE[n]).tolist()) for n in ("red", "blue")}


@pytest.mark.parametrize("direction", list(data.DIRECTIONS))
def test_object_moves_two_pixels_per_frame(direction):
    clip = data.make_clip(f"a yellow square moving {direction} on a green background", 1)
    obj = np.all(np.isclose(clip, data.PALETTE["yellow"]), axis=-1)
    yy, xx = np.mgrid[0 : data.SIZE, 0 : data.SIZE]
    cx = np.array([xx[m].mean() for m in obj])
    cy = np.array([yy[m].mean() for m in obj])
    dx, dy = data.DIRECTIONS[direction]
    # 8 frame steps x 2 px = 16 px along the motion, nothing across it (the square stays inside)
    np.testing.assert_allclose(cx[-1] - cx[0], 16 * dx, atol=1)
    np.testing.assert_allclose(cy[-1] - cy[0], 16 * dy, atol=1)


def test_heldout_is_disjoint_from_training_and_covers_every_factor():
    train, held = set(data.training_prompts()), set(data.heldout_prompts())
    assert train.isdisjoint(held)
    assert train | held == set(data.all_prompts())
    # 4 object colours x 3 other backgrounds x 4 directions x 2 shapes
    assert len(data.all_prompts()) == 96
    specs = [data.parse_prompt(p) for p in train]
    assert {s.colour for s in specs} == set(data.OBJECT_COLOURS)
    assert {s.background for s in specs} == set(data.BACKGROUND_COLOURS)
    assert {s.direction for s in specs} == set(data.DIRECTIONS)
    assert {s.shape for s in specs} == set(data.SHAPES)


def test_parse_prompt_round_trip():
    for prompt in data.all_prompts():
        assert data.parse_prompt(prompt).prompt == prompt


@pytest.mark.parametrize(
    "bad",
    ["a red circle", "a purple circle moving left on a blue background", "a red circle moving left on a red background"],
    ids=["short", "unknown-colour", "same-colours"],
)
def test_parse_prompt_refuses_non_zoo_prompts(bad):
    with pytest.raises(ValueError):
        data.parse_prompt(bad)


def test_every_prompt_word_is_in_the_tokenizer_vocabulary():
    from calibration.zoo.tokenizer import build_tokenizer

    tok = build_tokenizer()
    ids = tok(data.all_prompts())["input_ids"]
    assert all(tok.unk_token_id not in row for row in ids)
