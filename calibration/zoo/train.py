"""Train a toy of the zoo: the VAE to reconstruct clips, then the transformer on its latents.

`train_toy("toy-wan", minutes=60, seed=0)` (or `sencache-calibrate zoo train toy-wan`) builds the
pipeline with `build_pipeline(arch, TOY_SIZES[arch], seed)`, then

1. trains the VAE on clips of `data.py` (MSE + a small KL), and writes the per-channel latent
   statistics where the pipeline reads them (Wan: `latents_mean/std` in the VAE config;
   CogVideoX: `scaling_factor`; LTX: the `latents_mean/std` buffers);
2. trains the text encoder jointly with the transformer, through the pipeline's own
   `encode_prompt`. (A random frozen T5 separates the prompts' words but not their roles: the
   denoisers see text tokens without positions, so "red ... on a blue background" and "blue ...
   on a red background" came out alike. `train_text_encoder=False` keeps it frozen, with the
   embeddings computed once.)
3. trains the transformer with the architecture's own objective, in the pipeline's latent layout:
   flow matching for Wan and LTX (x_t = (1-s) x0 + s noise, target noise - x0, timestep s*1000,
   s drawn through the scheduler's shift), v-prediction on the DDIM alphas for CogVideoX
   (integer timesteps). The prompt is dropped (empty-prompt embeddings) 10% of the time so
   classifier-free guidance works. AdamW, EMA weights, one CPU thread;
4. saves the EMA pipeline with `save_pretrained` into `zoo_folder(name)` with `zoo.json` and
   `training_log.csv`.

The wall-clock budget `minutes` is split 25% VAE / 75% transformer; the step counts reached are
recorded in zoo.json, and passing them back (`vae_steps=`, `steps=`) replays the same run.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from calibration.zoo import data
from calibration.zoo.architectures import ModelSize, build_pipeline
from calibration.zoo.registry import TOY_MODELS, ZooCard, zoo_folder
from sencache.adapters import architecture_for

__all__ = ["TOY_CALL_ARGS", "TOY_SIZES", "TrainConfig", "Trainer", "train_toy"]

logger = logging.getLogger(__name__)

_WIDE = ModelSize(
    layers=5, heads=4, head_dim=32, ffn_mult=2, text_dim=32, text_layers=1, vae_channels=8, latent_channels=4
)
#: The trained toys' sizes: width 128, 5 blocks, 80 video tokens per sample.
TOY_SIZES: dict[str, ModelSize] = {
    "wan": _WIDE,
    "cogvideox": _WIDE,
    # LTX compresses hard in its VAE and patchifies nothing in the transformer (as the real
    # model does): a 4x4 VAE patch and 16 latent channels give the same 80 tokens. At base width
    # 16 the VAE's first layer squeezes 48 patch channels into 16 and it plateaued on "background
    # right, no object" (MSE ~0.19 after 1,346 steps); width 32 is the smallest that got past it.
    "ltx": replace(_WIDE, vae_channels=32, latent_channels=16, ltx_vae_patch=4),
}

#: zoo.json call arguments of every trained toy.
TOY_CALL_ARGS: dict[str, Any] = {
    "height": data.SIZE,
    "width": data.SIZE,
    "num_frames": data.FRAMES,
    "guidance_scale": 5.0,
    "max_sequence_length": 16,
    "num_inference_steps": 30,
}


@dataclass
class TrainConfig:
    """Hyper-parameters of one toy's training; the defaults are what the shipped toys used."""

    minutes: float = 60.0
    seed: int = 0
    vae_fraction: float = 0.25
    vae_steps: int | None = None
    max_vae_steps: int = 2000
    vae_target_loss: float = 0.004
    steps: int | None = None
    vae_batch: int = 4
    vae_lr: float = 2e-3
    latent_l2: float = 1e-4
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    ema: float = 0.999
    p_uncond: float = 0.1
    clips_per_prompt: int = 6
    threads: int = 1
    checkpoint_minutes: float = 10.0
    train_text_encoder: bool = True


#: Per-architecture departures from `TrainConfig`'s defaults: the Wan VAE (RMS-normed causal
#: convolutions at full resolution) learns these clips several times slower than CogVideoX's;
#: LTX's VAE steps are cheap (4x4 patches) but it needs more of them.
TOY_TRAIN: dict[str, dict[str, Any]] = {
    "wan": {"vae_fraction": 0.35, "vae_lr": 1e-3},
    "ltx": {"vae_fraction": 0.3, "max_vae_steps": 4000, "vae_lr": 1e-3},
    # the shipped toy-cogvideox was trained with the random T5 frozen (the measurement that
    # says a frozen encoder is enough for colours; see the zoo report)
    "cogvideox": {"train_text_encoder": False},
}


def _to_video(clips: np.ndarray) -> torch.Tensor:
    """[B, F, H, W, 3] in [0, 1] -> [B, 3, F, H, W] in [-1, 1], the VAEs' input."""
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).mul(2).sub(1).contiguous()


class Trainer:
    """One architecture's training steps, in the layout and normalisation its pipeline uses."""

    def __init__(self, architecture: str, size: ModelSize, config: TrainConfig):
        self.arch = architecture
        self.cfg = config
        self.pipe = build_pipeline(architecture, size, config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.max_len = TOY_CALL_ARGS["max_sequence_length"]
        self._embeds: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    # --- VAE -------------------------------------------------------------------------------

    def _sample_clips(self, n: int) -> np.ndarray:
        prompts = data.training_prompts()
        picks = self.rng.integers(0, len(prompts), n)
        seeds = self.rng.integers(0, 2**31, n)
        return data.make_batch([prompts[i] for i in picks], [int(s) for s in seeds])

    def vae_loss(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruction MSE of the posterior mean, plus a small L2 on the latents.

        A deterministic autoencoder learns these flat-coloured clips several times faster than a
        sampled one; the L2 keeps the latents near zero and the pipeline's normalisation
        (written by `set_latent_stats`) brings them to unit scale for the transformer.
        """
        vae = self.pipe.vae
        z = vae.encode(video).latent_dist.mean
        recon = vae.decode(z).sample
        return F.mse_loss(recon, video) + self.cfg.latent_l2 * z.pow(2).mean()

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents (posterior means) [B, C, f, h, w]."""
        return self.pipe.vae.encode(video).latent_dist.mean

    @torch.no_grad()
    def set_latent_stats(self, latents: torch.Tensor) -> None:
        """Write the latent normalisation where this architecture's pipeline reads it."""
        vae = self.pipe.vae
        mean = latents.mean(dim=(0, 2, 3, 4))
        std = latents.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
        if self.arch == "wan":
            vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
        elif self.arch == "cogvideox":
            # one scalar scale, no shift: the pipeline divides by `scaling_factor` only
            scale = float(1.0 / latents.pow(2).mean().sqrt())
            vae.register_to_config(scaling_factor=scale)
            self.pipe.vae_scaling_factor_image = scale
        else:
            vae.latents_mean.copy_(mean)
            vae.latents_std.copy_(std)

    def to_model_space(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents -> the tensor the pipeline's denoising loop carries."""
        return architecture_for(self.pipe).loop_latents(self.pipe, latents)

    # --- text ------------------------------------------------------------------------------

    @torch.no_grad()
    def embed_prompts(self, prompts: list[str]) -> None:
        """Encode `prompts` (and the empty prompt) once with the pipeline's own encoder."""
        todo = [p for p in dict.fromkeys([""] + prompts) if p not in self._embeds]
        if not todo:
            return
        pipe = self.pipe
        out = pipe.encode_prompt(todo, do_classifier_free_guidance=False, max_sequence_length=self.max_len)
        if self.arch == "ltx":
            embeds, masks = out[0], out[1]
        else:
            embeds, masks = out[0], [None] * len(todo)
        for p, e, m in zip(todo, embeds, masks, strict=True):
            self._embeds[p] = (e, m)

    def text_live(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt embeddings through the pipeline's own `encode_prompt`, with gradients."""
        out = self.pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=self.max_len)
        return (out[0], out[1]) if self.arch == "ltx" else (out[0], None)

    def text_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        embeds = torch.stack([self._embeds[p][0] for p in prompts])
        if self.arch != "ltx":
            return embeds, None
        return embeds, torch.stack([self._embeds[p][1] for p in prompts])

    # --- transformer -----------------------------------------------------------------------

    def _rope(self) -> Any:
        if not hasattr(self, "_rope_cache"):
            a = TOY_CALL_ARGS
            frames = (a["num_frames"] - 1) // self.pipe.vae_scale_factor_temporal + 1
            self._rope_cache = self.pipe._prepare_rotary_positional_embeddings(
                a["height"], a["width"], frames, torch.device("cpu")
            )
        return self._rope_cache

    def predict(self, model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, text: tuple) -> torch.Tensor:
        """One transformer call exactly as the pipeline makes it."""
        embeds, mask = text
        if self.arch == "wan":
            return model(hidden_states=x_t, timestep=t, encoder_hidden_states=embeds, return_dict=False)[0]
        if self.arch == "cogvideox":
            return model(
                hidden_states=x_t,
                encoder_hidden_states=embeds,
                timestep=t,
                image_rotary_emb=self._rope(),
                return_dict=False,
            )[0]
        pipe, a = self.pipe, TOY_CALL_ARGS
        return model(
            hidden_states=x_t,
            encoder_hidden_states=embeds,
            timestep=t,
            encoder_attention_mask=mask,
            num_frames=(a["num_frames"] - 1) // pipe.vae_temporal_compression_ratio + 1,
            height=a["height"] // pipe.vae_spatial_compression_ratio,
            width=a["width"] // pipe.vae_spatial_compression_ratio,
            rope_interpolation_scale=(pipe.vae_temporal_compression_ratio / 25, pipe.vae_spatial_compression_ratio,
                                      pipe.vae_spatial_compression_ratio),
            return_dict=False,
        )[0]

    def denoise_loss(self, model: torch.nn.Module, x0: torch.Tensor, text: tuple) -> torch.Tensor:
        """The architecture's training objective on model-space latents `x0`."""
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=self.gen)
        shape = (b,) + (1,) * (x0.dim() - 1)
        if self.arch == "cogvideox":
            alphas = self.pipe.scheduler.alphas_cumprod.float()
            t = torch.randint(0, len(alphas), (b,), generator=self.gen)
            a = alphas[t].view(shape)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
            return F.mse_loss(self.predict(model, x_t, t, text), target)
        shift = float(self.pipe.scheduler.config.shift)
        u = torch.rand(b, generator=self.gen)
        sigma = shift * u / (1 + (shift - 1) * u)
        s = sigma.view(shape)
        x_t = (1 - s) * x0 + s * noise
        return F.mse_loss(self.predict(model, x_t, sigma * 1000, text), noise - x0)


def _lr(step: int, cfg: TrainConfig, total: int | None) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup)
    return cfg.lr * warm


def train_toy(
    name: str,
    minutes: float = 60.0,
    seed: int = 0,
    folder: Path | None = None,
    config: TrainConfig | None = None,
    size: ModelSize | None = None,
    progress: bool = True,
) -> Path:
    """Train zoo toy `name` for about `minutes` and save it; return its folder."""
    arch = TOY_MODELS[name] if name in TOY_MODELS else name
    cfg = replace(config or TrainConfig(**TOY_TRAIN.get(arch, {})), minutes=minutes, seed=seed)
    folder = Path(folder) if folder is not None else zoo_folder(name)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tr = Trainer(arch, size or TOY_SIZES[arch], cfg)
    pipe = tr.pipe
    folder.mkdir(parents=True, exist_ok=True)
    log_rows = ["phase,step,loss,seconds"]
    start = time.monotonic()
    budget = cfg.minutes * 60

    # 1. VAE
    vae = pipe.vae
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae_deadline = start + budget * cfg.vae_fraction
    step, ema_loss = 0, None
    bar = tqdm(desc=f"{name} vae", disable=not progress, total=cfg.vae_steps)
    while (
        cfg.vae_steps is None
        and time.monotonic() < vae_deadline
        and step < cfg.max_vae_steps
        and (ema_loss is None or step < 50 or ema_loss > cfg.vae_target_loss)
    ) or (cfg.vae_steps is not None and step < cfg.vae_steps):
        video = _to_video(tr._sample_clips(cfg.vae_batch))
        loss = tr.vae_loss(video)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        if step % 10 == 0:
            log_rows.append(f"vae,{step},{ema_loss:.6f},{time.monotonic() - start:.1f}")
            (folder / "training_log.csv").write_text("\n".join(log_rows) + "\n")
            bar.set_postfix(loss=f"{ema_loss:.4f}")
        bar.update()
    bar.close()
    vae_steps, vae_loss = step, ema_loss
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)

    # 2. latents of the training set, and the prompt embeddings
    prompts = data.training_prompts()
    pairs = [(p, k) for p in prompts for k in range(cfg.clips_per_prompt)]
    raw = []
    for i in range(0, len(pairs), 32):
        chunk = pairs[i : i + 32]
        clips = data.make_batch([p for p, _ in chunk], [1000 * cfg.seed + 7919 * k + j for j, (_, k) in enumerate(chunk)])
        raw.append(tr.encode(_to_video(clips)))
    raw_latents = torch.cat(raw)
    tr.set_latent_stats(raw_latents)
    latents = tr.to_model_space(raw_latents)
    latent_prompts = [p for p, _ in pairs]
    tr.embed_prompts(prompts)
    for p in pipe.text_encoder.parameters():
        p.requires_grad_(False)

    # 3. transformer (and, unless frozen, the text encoder with it)
    model = pipe.transformer
    if cfg.train_text_encoder:
        # one module holding both, so the optimiser, EMA and checkpoints treat them alike
        model = torch.nn.ModuleDict({"transformer": pipe.transformer, "text_encoder": pipe.text_encoder})
        for p in pipe.text_encoder.parameters():
            p.requires_grad_(True)
    model.train()
    ema_model = copy.deepcopy(model).eval()
    for p in ema_model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.99))
    denoiser = pipe.transformer
    step, ema_loss, last_save = 0, None, time.monotonic()
    bar = tqdm(desc=f"{name} transformer", disable=not progress, total=cfg.steps)
    while (cfg.steps is None and time.monotonic() < start + budget) or (cfg.steps is not None and step < cfg.steps):
        idx = tr.rng.integers(0, len(latents), cfg.batch)
        batch_prompts = ["" if tr.rng.random() < cfg.p_uncond else latent_prompts[i] for i in idx]
        text = tr.text_live(batch_prompts) if cfg.train_text_encoder else tr.text_batch(batch_prompts)
        loss = tr.denoise_loss(denoiser, latents[torch.from_numpy(idx)], text)
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg, cfg.steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema_model.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % 25 == 0:
            log_rows.append(f"transformer,{step},{ema_loss:.6f},{time.monotonic() - start:.1f}")
            (folder / "training_log.csv").write_text("\n".join(log_rows) + "\n")
            bar.set_postfix(loss=f"{ema_loss:.4f}")
        if cfg.checkpoint_minutes and time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
            # an intermediate, usable toy: the EMA weights so far, card marked as partial
            live = copy.deepcopy(model.state_dict())
            model.load_state_dict(ema_model.state_dict())
            _save(pipe, folder, name, arch, cfg, log_rows, start, step, ema_loss, vae_steps, vae_loss, partial=True)
            model.load_state_dict(live)
            last_save = time.monotonic()
        bar.update()
    bar.close()
    model.load_state_dict(ema_model.state_dict())
    model.eval()
    pipe.text_encoder.eval()
    _save(pipe, folder, name, arch, cfg, log_rows, start, step, ema_loss, vae_steps, vae_loss, partial=False)
    return folder


def _save(pipe, folder, name, arch, cfg, log_rows, start, step, ema_loss, vae_steps, vae_loss, partial) -> None:
    seconds = time.monotonic() - start
    pipe.save_pretrained(str(folder), safe_serialization=True)
    (folder / "training_log.csv").write_text("\n".join(log_rows) + "\n")
    ZooCard(
        name=name,
        architecture=arch,
        call_args=dict(TOY_CALL_ARGS),
        training={
            "seed": cfg.seed,
            "data_version": data.DATA_VERSION,
            "train_seconds": round(seconds, 1),
            "final_loss": None if ema_loss is None else round(ema_loss, 5),
            "steps": step,
            "vae_steps": vae_steps,
            "vae_final_loss": None if vae_loss is None else round(vae_loss, 5),
            "batch": cfg.batch,
            "lr": cfg.lr,
            "ema": cfg.ema,
            "p_uncond": cfg.p_uncond,
            "text_encoder": "trained with the transformer" if cfg.train_text_encoder else "random, frozen",
            "config": asdict(cfg),
            "command": f"sencache-calibrate zoo train {name} --minutes {cfg.minutes:g} --seed {cfg.seed}",
            "partial": partial,
        },
    ).save(folder)
    logger.info("saved %s to %s (%d steps, loss %.4f, %.0f s)", name, folder, step, ema_loss or math.nan, seconds)
