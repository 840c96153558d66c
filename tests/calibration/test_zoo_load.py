"""Each shipped toy loads by name, like a real checkpoint, and generates with its zoo.json arguments."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.zoo import data
from calibration.zoo.registry import TOY_MODELS, load_card, zoo_folder


def _trained(name):
    if not (zoo_folder(name) / "model_index.json").exists():
        pytest.skip(f"{name} is not trained yet: run `sencache-calibrate zoo train {name}`")


@pytest.mark.parametrize("name", list(TOY_MODELS))
def test_card_records_call_args_and_training(name):
    _trained(name)
    card = load_card(zoo_folder(name))
    assert card.name == name and card.architecture == TOY_MODELS[name]
    assert card.call_args["height"] == data.SIZE and card.call_args["num_frames"] == data.FRAMES
    for key in ("seed", "data_version", "train_seconds", "final_loss", "steps"):
        assert key in card.training
    assert card.training["data_version"] == data.DATA_VERSION


@pytest.mark.parametrize("name", list(TOY_MODELS))
def test_toy_loads_and_generates(name):
    import torch

    from calibration.models import load_model

    _trained(name)
    loaded = load_model(name)
    assert type(loaded.pipe).__name__.lower().startswith(TOY_MODELS[name][:3])
    out = loaded.pipe(
        prompt=data.heldout_prompts()[0],
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **loaded.call_kwargs(num_inference_steps=4),
    )
    frames = np.asarray(out.frames[0])
    assert frames.shape == (data.FRAMES, data.SIZE, data.SIZE, 3)
    assert np.isfinite(frames).all()


def test_zoo_is_small():
    folders = [zoo_folder(n) for n in TOY_MODELS if (zoo_folder(n) / "model_index.json").exists()]
    if not folders:
        pytest.skip("no toy trained yet: run `sencache-calibrate zoo train toy-wan`")
    total = sum(f.stat().st_size for folder in folders for f in folder.rglob("*") if f.is_file())
    assert total <= 30 * 2**20, f"zoo is {total / 2**20:.1f} MB; the budget is 30 MB for all three"


def test_cli_zoo_refuses_an_unknown_toy_with_exit_2(capsys):
    import cli

    assert cli.main(["zoo", "train", "toy-nope", "--minutes", "0.01"]) == 2
    assert "toy-wan" in capsys.readouterr().err  # the message lists the zoo


def test_cli_zoo_without_an_action_says_which_to_use(capsys):
    import cli

    assert cli.main(["zoo"]) == 2
    assert "zoo check" in capsys.readouterr().err
