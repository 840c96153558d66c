"""`--model` resolution: zoo name, tiny fixture, folder, Hub id — and the errors that say what to do."""

import pytest

from calibration import models
from calibration.models import load_model
from policies.errors import InputError


def test_tiny_name_builds_with_call_args():
    loaded = load_model("tiny-ltx")
    assert type(loaded.pipe).__name__ == "LTXPipeline"
    assert loaded.call_kwargs(num_inference_steps=3)["num_inference_steps"] == 3
    assert loaded.call_kwargs(num_inference_steps=None)["num_inference_steps"] == 10


def test_local_folder_loads_and_bad_folder_is_refused(tmp_path):
    load_model("tiny-wan").pipe.save_pretrained(tmp_path / "pipe")
    assert type(load_model(str(tmp_path / "pipe")).pipe).__name__ == "WanPipeline"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no model_index.json"):
        load_model(str(tmp_path / "empty"))


def test_unreachable_hub_says_so_and_how_to_pass_a_folder(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(models.DiffusionPipeline, "from_pretrained", offline)
    with pytest.raises(InputError, match="Hugging Face Hub.*--model DIR"):
        load_model("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")


def test_nonsense_is_refused_with_the_accepted_forms():
    with pytest.raises(InputError, match="neither a zoo name"):
        load_model("no such thing")
