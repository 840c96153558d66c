"""What SenCache keeps in memory per sample, worked out from a model's shape (no model needed).

Per cache context (Wan calls cond and uncond separately: two contexts; CogVideoX and LTX batch
them: one context whose rows are both) SenCache keeps one block-stack residual per row,
`tokens × dim` in the model's dtype; the linear forecast keeps one more (the difference of the
row's last two residuals). Per sample it also keeps the reference latent. Transients on top: a
step where only some rows compute allocates one output the size of the batch's residuals, plus the
computing rows' own activations; a forecast skip in half precision sums in float32 a sixteenth of
the tokens at a time.

    python -m sencache.memory        # Wan 2.1 14B at 81x720x1280
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MemoryPerSample", "memory_per_sample", "wan21_14b_720p"]

_MIB = 2**20


@dataclass(frozen=True)
class MemoryPerSample:
    """Bytes SenCache keeps per sample, by reuse mode (`none`: plain reuse; `linear`: forecast)."""

    tokens: int
    residual: int
    latent: int
    contexts: int

    def kept(self, forecast: str = "none") -> int:
        per_context = self.residual * (2 if forecast == "linear" else 1)
        return self.contexts * per_context + self.latent

    def lines(self) -> list[str]:
        return [
            f"tokens {self.tokens}; one residual {self.residual / _MIB:.1f} MiB; reference latent {self.latent / _MIB:.1f} MiB",
            f"plain reuse ({self.contexts} contexts): {self.kept('none') / _MIB:.0f} MiB per sample",
            f"linear forecast: {self.kept('linear') / _MIB:.0f} MiB per sample",
        ]


def memory_per_sample(frames: int, height: int, width: int, *, dim: int, patch: tuple[int, int, int],
                      vae_temporal: int, vae_spatial: int, latent_channels: int, contexts: int = 2,
                      bytes_per_value: int = 2) -> MemoryPerSample:
    """Memory per sample for a video of `frames × height × width` on a patchified latent transformer."""
    latent_frames = (frames - 1) // vae_temporal + 1
    lh, lw = height // vae_spatial, width // vae_spatial
    tokens = (latent_frames // patch[0]) * (lh // patch[1]) * (lw // patch[2])
    return MemoryPerSample(
        tokens=tokens,
        residual=tokens * dim * bytes_per_value,
        latent=latent_channels * latent_frames * lh * lw * bytes_per_value,
        contexts=contexts,
    )


def wan21_14b_720p() -> MemoryPerSample:
    """Wan 2.1 14B (dim 5120, patch [1, 2, 2], VAE 4x/8x, 16 channels), 81x720x1280, bf16, CFG."""
    return memory_per_sample(81, 720, 1280, dim=5120, patch=(1, 2, 2), vae_temporal=4, vae_spatial=8,
                             latent_channels=16)


if __name__ == "__main__":
    print("\n".join(wan21_14b_720p().lines()))
