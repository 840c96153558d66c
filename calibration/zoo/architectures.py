"""Builders of the real diffusers pipeline classes at small sizes, with random weights.

`build_pipeline("wan", TINY)` gives a structure fixture (milliseconds per forward);
the trained toys of the zoo start from the same builders at `ToySize` values and are then
trained. Every component is a real diffusers/transformers class, so hooks, schedulers and
`save_pretrained`/`from_pretrained` behave exactly as they do on a full-size checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLHunyuanVideo,
    AutoencoderKLLTXVideo,
    AutoencoderKLWan,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    LTXPipeline,
    LTXVideoTransformer3DModel,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    LlamaConfig,
    LlamaModel,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

from calibration.zoo.tokenizer import build_tokenizer

__all__ = ["ARCHITECTURES", "ModelSize", "TINY", "build_pipeline"]

ARCHITECTURES = ("wan", "cogvideox", "ltx", "hunyuanvideo")


@dataclass(frozen=True)
class ModelSize:
    """Widths and depths shared by the three builders.

    `heads * head_dim` is the transformer width; `text_dim` is the text encoder's `d_model`;
    `vae_channels` the VAE's base width; `latent_channels` the VAE's z channels.
    """

    layers: int = 2
    heads: int = 2
    head_dim: int = 16
    ffn_mult: int = 2
    text_dim: int = 16
    text_layers: int = 1
    vae_channels: int = 8
    latent_channels: int = 4
    max_text_len: int = 16
    #: LTX's VAE patch size: 2 gives 8x8 latents for 32x32 frames; 4 gives 4x4 (80 tokens).
    ltx_vae_patch: int = 2


#: Structure fixture: a forward is a few milliseconds on CPU.
TINY = ModelSize()


def _text_encoder(kind: str, size: ModelSize, vocab_size: int) -> torch.nn.Module:
    common = dict(
        vocab_size=vocab_size,
        d_model=size.text_dim,
        d_kv=max(size.text_dim // 4, 4),
        d_ff=size.text_dim * 2,
        num_layers=size.text_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    if kind == "umt5":
        return UMT5EncoderModel(UMT5Config(**common))
    return T5EncoderModel(T5Config(**common))


def _build_wan(size: ModelSize) -> WanPipeline:
    tokenizer = build_tokenizer()
    text_encoder = _text_encoder("umt5", size, len(tokenizer))
    z = size.latent_channels
    # dim_mult of length 3 -> two spatial downsamples (x4); one temporal downsample (x2).
    vae = AutoencoderKLWan(
        base_dim=size.vae_channels,
        z_dim=z,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * z,
        latents_std=[1.0] * z,
        scale_factor_temporal=2,
        scale_factor_spatial=4,
    )
    transformer = WanTransformer3DModel(
        patch_size=[1, 2, 2],  # a list, as from_pretrained reads it back from JSON
        num_attention_heads=size.heads,
        attention_head_dim=size.head_dim,
        in_channels=z,
        out_channels=z,
        text_dim=size.text_dim,
        freq_dim=32,
        ffn_dim=size.heads * size.head_dim * size.ffn_mult,
        num_layers=size.layers,
        rope_max_seq_len=32,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )


def _build_cogvideox(size: ModelSize) -> CogVideoXPipeline:
    tokenizer = build_tokenizer()
    text_encoder = _text_encoder("t5", size, len(tokenizer))
    z = size.latent_channels
    c = size.vae_channels
    # three blocks -> two spatial downsamples (x4); temporal compression x2.
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(c, 2 * c, 2 * c),
        down_block_types=("CogVideoXDownBlock3D",) * 3,
        up_block_types=("CogVideoXUpBlock3D",) * 3,
        latent_channels=z,
        layers_per_block=1,
        norm_num_groups=min(4, c),
        temporal_compression_ratio=2,
        sample_height=32,
        sample_width=32,
        scaling_factor=1.0,
    )
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=size.heads,
        attention_head_dim=size.head_dim,
        in_channels=z,
        out_channels=z,
        time_embed_dim=size.heads * size.head_dim,
        text_embed_dim=size.text_dim,
        num_layers=size.layers,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=2,
        max_text_seq_length=size.max_text_len,
        norm_eps=1e-5,
        use_rotary_positional_embeddings=True,
    )
    scheduler = CogVideoXDDIMScheduler(
        prediction_type="v_prediction",
        beta_schedule="scaled_linear",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=True,
        snr_shift_scale=1.0,
    )
    return CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


def _build_ltx(size: ModelSize) -> LTXPipeline:
    tokenizer = build_tokenizer()
    text_encoder = _text_encoder("t5", size, len(tokenizer))
    z = size.latent_channels
    c = size.vae_channels
    # patch 2 x one spatio-temporal scaling block -> x4 spatial, x2 temporal. The decoder has its
    # own sizes (decoder_*), shrunk to match.
    vae = AutoencoderKLLTXVideo(
        latent_channels=z,
        block_out_channels=(c, 2 * c),
        down_block_types=("LTXVideoDownBlock3D", "LTXVideoDownBlock3D"),
        decoder_block_out_channels=(c, 2 * c),
        layers_per_block=(1, 1, 1),
        decoder_layers_per_block=(1, 1, 1),
        spatio_temporal_scaling=(True, False),
        decoder_spatio_temporal_scaling=(True, False),
        decoder_inject_noise=(False, False, False),
        downsample_type=("conv", "conv"),
        upsample_residual=(False, False),
        upsample_factor=(1, 1),
        patch_size=size.ltx_vae_patch,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    transformer = LTXVideoTransformer3DModel(
        in_channels=z,
        out_channels=z,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=size.heads,
        attention_head_dim=size.head_dim,
        cross_attention_dim=size.heads * size.head_dim,
        num_layers=size.layers,
        caption_channels=size.text_dim,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=False, base_shift=0.95, max_shift=2.05
    )
    return LTXPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def _build_hunyuanvideo(size: ModelSize) -> HunyuanVideoPipeline:
    # Two text encoders at tiny sizes, each with its own locally built tokenizer: a Llama whose
    # third-to-last hidden state is the prompt embedding (so at least two layers), and a CLIP
    # whose pooled output (at the eos token, id 1 here) is the pooled projection.
    tokenizer, tokenizer_2 = build_tokenizer(), build_tokenizer()
    text_encoder = LlamaModel(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size.text_dim, intermediate_size=size.text_dim * 2,
        num_hidden_layers=max(2, size.text_layers), num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=128, pad_token_id=0, bos_token_id=None, eos_token_id=1,
    ))
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer_2), hidden_size=size.text_dim, intermediate_size=size.text_dim * 2,
        num_hidden_layers=size.text_layers, num_attention_heads=2, max_position_embeddings=77,
        pad_token_id=0, bos_token_id=0, eos_token_id=1,
    ))
    z = size.latent_channels
    c = size.vae_channels
    # three blocks -> two spatial downsamples (x4); two temporal ones (x4: 9 frames -> 3).
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=z,
        down_block_types=("HunyuanVideoDownBlock3D",) * 3,
        up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        block_out_channels=(c, 2 * c, 2 * c),
        layers_per_block=1,
        norm_num_groups=min(4, c),
        spatial_compression_ratio=4,
        temporal_compression_ratio=4,
        mid_block_add_attention=False,
    )
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=z,
        out_channels=z,
        num_attention_heads=size.heads,
        attention_head_dim=size.head_dim,
        num_layers=size.layers,
        num_single_layers=size.layers,
        num_refiner_layers=1,
        mlp_ratio=float(size.ffn_mult),
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=size.text_dim,
        pooled_projection_dim=size.text_dim,
        rope_axes_dim=(size.head_dim // 4, 3 * size.head_dim // 8, 3 * size.head_dim // 8),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    return HunyuanVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae, scheduler=scheduler,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
    )


_BUILDERS = {"wan": _build_wan, "cogvideox": _build_cogvideox, "ltx": _build_ltx, "hunyuanvideo": _build_hunyuanvideo}


def build_pipeline(architecture: str, size: ModelSize = TINY, seed: int = 0) -> DiffusionPipeline:
    """Build a random-weight pipeline of `architecture` (one of `ARCHITECTURES`).

    The seed fixes the weights, so two builds with the same arguments are identical.
    """
    if architecture not in _BUILDERS:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    torch.manual_seed(seed)
    pipe = _BUILDERS[architecture](size)
    for name in ("vae", "text_encoder", "text_encoder_2", "transformer"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe
