"""What SenCache must know about a transformer class to cache its block stack.

An adapter is data, not code paths: where the blocks are, which forward arguments carry the
latent and the timestep, whether a block returns a text stream too (CogVideoX), and which block
arguments are shared by the whole batch (rotary tables) and must not be sliced to a sub-batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["BlockStackAdapter"]

_FORWARD_SIGNATURES: dict[type, inspect.Signature] = {}


@dataclass(frozen=True)
class BlockStackAdapter:
    """Describes one transformer class's block stack.

    Attributes:
        class_name: the diffusers class this adapter serves.
        blocks_attr: attribute holding the `nn.ModuleList` of blocks.
        latent_arg: forward argument holding the noisy latent x (the model's own layout).
        timestep_arg: forward argument holding the timestep, in the model's own units.
        text_stream: True when a block returns `(hidden_states, encoder_hidden_states)` and the
            text stream's residual must be cached too.
        unbatched_block_args: block arguments shared by every sample (never sliced).
        forecast_modules: names of the modules inside a block that forecast "taylor" may
            replace by a forecast of their output (attention, feed-forward); empty: that
            forecast is refused for this class.
    """

    class_name: str
    blocks_attr: str
    latent_arg: str = "hidden_states"
    timestep_arg: str = "timestep"
    text_stream: bool = False
    unbatched_block_args: frozenset[str] = field(default_factory=frozenset)
    forecast_modules: tuple[str, ...] = ()

    def blocks(self, transformer: torch.nn.Module) -> torch.nn.ModuleList:
        return getattr(transformer, self.blocks_attr)

    def latent_and_timestep(self, transformer: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        """Pick x and t out of a call `transformer(*args, **kwargs)`."""
        signature = _FORWARD_SIGNATURES.get(type(transformer))
        if signature is None:
            signature = _FORWARD_SIGNATURES[type(transformer)] = inspect.signature(type(transformer).forward)
        named = signature.bind(transformer, *args, **kwargs).arguments
        return named[self.latent_arg], named[self.timestep_arg]

    def stream_inputs(self, block_kwargs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """The tensors that flow from block to block: (hidden,) or (hidden, encoder_hidden)."""
        if self.text_stream:
            return block_kwargs["hidden_states"], block_kwargs["encoder_hidden_states"]
        return (block_kwargs["hidden_states"],)

    def stream_outputs(self, output: Any) -> tuple[torch.Tensor, ...]:
        """A block's output as a tuple of stream tensors."""
        if self.text_stream:
            return tuple(output)
        return (output,)

    def with_streams(self, block_kwargs: dict[str, Any], streams: tuple[torch.Tensor, ...]) -> dict[str, Any]:
        """Block kwargs for the next block, whose stream inputs are the previous block's outputs."""
        updated = dict(block_kwargs)
        updated["hidden_states"] = streams[0]
        if self.text_stream:
            updated["encoder_hidden_states"] = streams[1]
        return updated

    def as_output(self, streams: tuple[torch.Tensor, ...]) -> Any:
        """Stream tensors in the form a block returns them."""
        return tuple(streams) if self.text_stream else streams[0]
