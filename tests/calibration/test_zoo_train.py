"""Training smoke tests on the TINY size: the objectives are the pipelines' own and a few steps learn."""

from __future__ import annotations

import json

import pytest
import torch

from calibration.zoo import data
from calibration.zoo.architectures import TINY
from calibration.zoo.train import TOY_CALL_ARGS, Trainer, TrainConfig, _to_video, train_toy

ARCHS = ["wan", "cogvideox", "ltx"]


def _fixed(fn, seed=0):
    """Run `fn` with the same noise and timesteps every time (so losses are comparable)."""
    torch.manual_seed(seed)
    return fn()


@pytest.mark.parametrize("arch", ARCHS)
def test_a_few_transformer_steps_lower_the_loss(arch):
    tr = Trainer(arch, TINY, TrainConfig(seed=0))
    video = _to_video(data.make_batch(data.training_prompts()[:4], [0, 1, 2, 3]))
    raw = tr.encode(video)
    tr.set_latent_stats(raw)
    x0 = tr.to_model_space(raw)
    tr.embed_prompts(data.training_prompts()[:4])
    text = tr.text_batch(data.training_prompts()[:4])
    model = tr.pipe.transformer.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss():
        tr.gen.manual_seed(123)  # same noise and timesteps every call
        return tr.denoise_loss(model, x0, text)

    first = loss().item()
    for _ in range(15):
        opt.zero_grad()
        l = loss()
        l.backward()
        opt.step()
    assert loss().item() < 0.8 * first


@pytest.mark.parametrize("arch", ARCHS)
def test_model_space_latents_are_normalised_in_the_pipeline_layout(arch):
    tr = Trainer(arch, TINY, TrainConfig(seed=0))
    raw = tr.encode(_to_video(data.make_batch(data.training_prompts()[:8], list(range(8)))))
    tr.set_latent_stats(raw)
    x0 = tr.to_model_space(raw)
    expected = {
        "wan": (8, 4, 5, 8, 8),  # [B, C, F, H, W]
        "cogvideox": (8, 5, 4, 8, 8),  # [B, F, C, H, W]
        "ltx": (8, 5 * 8 * 8, 4),  # packed tokens [B, F*H*W, C]
    }[arch]
    assert tuple(x0.shape) == expected
    assert 0.5 < float(x0.pow(2).mean().sqrt()) < 2.0


def test_vae_steps_lower_the_reconstruction_loss():
    tr = Trainer("ltx", TINY, TrainConfig(seed=0))
    video = _to_video(data.make_batch(data.training_prompts()[:2], [0, 1]))
    vae = tr.pipe.vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    first = tr.vae_loss(video).item()
    for _ in range(15):
        opt.zero_grad()
        tr.vae_loss(video).backward()
        opt.step()
    assert tr.vae_loss(video).item() < first


def test_train_toy_writes_a_loadable_folder_with_its_card(tmp_path):
    from calibration.models import load_model

    cfg = TrainConfig(vae_steps=2, steps=3, clips_per_prompt=1, batch=4, vae_batch=2)
    folder = train_toy("wan", minutes=1, seed=5, folder=tmp_path / "toy", config=cfg, size=TINY, progress=False)
    card = json.loads((folder / "zoo.json").read_text())
    assert card["call_args"] == TOY_CALL_ARGS
    assert card["training"]["steps"] == 3 and card["training"]["seed"] == 5
    assert card["training"]["data_version"] == data.DATA_VERSION
    assert (folder / "training_log.csv").read_text().startswith("phase,step,loss,seconds")
    loaded = load_model(str(folder))
    assert loaded.call_args["num_inference_steps"] == 30
    # the text encoder was trained along with the transformer (not left at its random init)
    from calibration.zoo.architectures import build_pipeline

    fresh = build_pipeline("wan", TINY, seed=5).text_encoder.state_dict()
    trained = loaded.pipe.text_encoder.state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh if k in trained)
