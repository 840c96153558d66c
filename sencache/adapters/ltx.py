"""LTX-Video (`LTXVideoTransformer3DModel`): packed-token latents; its rotary table is per sample."""

from sencache.adapters.base import BlockStackAdapter

LTX = BlockStackAdapter(
    class_name="LTXVideoTransformer3DModel",
    blocks_attr="transformer_blocks",
    forecast_modules=("attn1", "attn2", "ff"),
)
