"""The tiny pipelines are real diffusers pipelines: they generate, save and load back identically."""

import numpy as np
import pytest
import torch

from calibration.models import load_model
from calibration.zoo.architectures import ARCHITECTURES, build_pipeline
from tests.conftest import generate


def test_tiny_pipeline_generates_a_short_video(tiny):
    frames = generate(tiny, "a red circle moving left on a blue background", output_type="np")
    # 9 frames of 32x32 RGB, values in [0, 1]
    assert frames.shape == (1, 9, 32, 32, 3)
    assert np.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1


def test_save_pretrained_round_trip_is_identical(tiny, tmp_path):
    before = generate(tiny, "a green square moving up", seed=3)
    tiny.pipe.save_pretrained(tmp_path)
    tiny.pipe = load_model(str(tmp_path)).pipe
    after = generate(tiny, "a green square moving up", seed=3)
    assert type(tiny.pipe).__name__ in {"WanPipeline", "CogVideoXPipeline", "LTXPipeline"}
    assert torch.equal(before, after)


def test_same_seed_same_weights_and_unknown_architecture_refused():
    a = build_pipeline("wan", seed=1).transformer.state_dict()
    b = build_pipeline("wan", seed=1).transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_pipeline("sora")
    assert ARCHITECTURES == ("wan", "cogvideox", "ltx", "hunyuanvideo")


def test_tiny_hunyuanvideo_generates_and_round_trips(tmp_path):
    # two text encoders (a Llama and a CLIP), each with a locally built tokenizer; no hub
    loaded = load_model("tiny-hunyuanvideo")
    assert type(loaded.pipe.text_encoder).__name__ == "LlamaModel"
    assert type(loaded.pipe.text_encoder_2).__name__ == "CLIPTextModel"
    frames = generate(loaded, "a red circle moving left on a blue background", output_type="np", num_inference_steps=2)
    assert frames.shape == (1, 9, 32, 32, 3) and np.isfinite(frames).all()
    before = generate(loaded, "a green square moving up", seed=3, num_inference_steps=3)
    loaded.pipe.save_pretrained(tmp_path)
    loaded.pipe = load_model(str(tmp_path)).pipe
    assert type(loaded.pipe).__name__ == "HunyuanVideoPipeline"
    assert torch.equal(generate(loaded, "a green square moving up", seed=3, num_inference_steps=3), before)
