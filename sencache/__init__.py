"""SenCache runtime: apply a sensitivity-aware caching policy to a diffusers video pipeline."""

__all__: list[str] = []
