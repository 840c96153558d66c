"""CogVideoX (`CogVideoXTransformer3DModel`): blocks return (video, text); both residuals are cached."""

from sencache.adapters.base import BlockStackAdapter

COGVIDEOX = BlockStackAdapter(
    class_name="CogVideoXTransformer3DModel",
    blocks_attr="transformer_blocks",
    text_stream=True,
    unbatched_block_args=frozenset({"image_rotary_emb"}),
    forecast_modules=("attn1", "ff"),
)
