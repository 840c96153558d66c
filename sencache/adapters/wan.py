"""Wan 2.1 / 2.2 (`WanTransformer3DModel`): blocks in `blocks`, rotary table shared by the batch."""

from sencache.adapters.base import BlockStackAdapter

WAN = BlockStackAdapter(
    class_name="WanTransformer3DModel",
    blocks_attr="blocks",
    unbatched_block_args=frozenset({"rotary_emb"}),
    forecast_modules=("attn1", "attn2", "ffn"),
)
