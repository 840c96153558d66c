"""What every stage must know about one transformer architecture, in one object.

A description is data plus two or three small functions, never a code path elsewhere: the
runtime reads where the blocks are, which forward arguments carry the latent and the timestep,
whether a block also returns the text stream (CogVideoX, HunyuanVideo), which block arguments
are shared by the whole batch, and how each later block is called; calibration reads the
latent layout of the pipeline's loop, TeaCache's modulated input, the modules a module-level
forecast may replace, whether a batched call holds the CFG branches, and the pipeline class.
One file per architecture in this package; `sencache.adapters` is the registry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import torch

__all__ = ["Architecture", "BlockStackAdapter", "scale_says_cfg"]

_FORWARD_SIGNATURES: dict[type, inspect.Signature] = {}


def scale_says_cfg(pipe: Any) -> bool:
    """Whether a pipeline runs classifier-free guidance: its own flag, else `guidance_scale > 1`."""
    flag = getattr(pipe, "do_classifier_free_guidance", None)
    if flag is None:  # some pipelines keep only the scale
        flag = float(getattr(pipe, "_guidance_scale", 1.0) or 1.0) > 1.0
    return bool(flag)


@dataclass(frozen=True, eq=False)
class Architecture:
    """Describes one transformer class (and its subclasses).

    Attributes:
        name: short name used in tables, bench results and `--model tiny-<name>`.
        transformer_class: the diffusers transformer class this description serves (subclasses too).
        pipeline: name of the diffusers text-to-video pipeline class (resolved lazily: see
            `pipeline_class`; importing every pipeline would import every text encoder).
        block_lists: attributes holding the `nn.ModuleList`s of blocks, in the order the
            forward runs them; the stack is their concatenation.
        latent_arg: forward argument holding the noisy latent x (the model's own layout).
        timestep_arg: forward argument holding the timestep, in the model's own units.
        text_stream: True when a block returns `(hidden_states, encoder_hidden_states)` and the
            text stream's residual must be cached too.
        unbatched_block_args: block arguments shared by every sample (never sliced).
        forecast_modules: names of the modules inside a block that a module-level forecast
            (TaylorSeer) may replace: attention and feed-forward. With several kinds of block,
            the union; `forecast_module_names(block)` keeps those a block has.
        forecast_outputs: per forecast module, the token sets its output spans ("video",
            "text", or "video+text" for one tensor over both), each of the model's width: what
            forecast "taylor" keeps per module (`sencache.taylor_memory`). Empty: no memory model.
        block_arg_names: per block class, how the head block's argument names are spelled in
            that block's forward (HunyuanVideo's single-stream blocks say `image_rotary_emb`
            where the dual-stream ones say `freqs_cis`).
        modulated_input: `(block, bound block args) -> tensor | None`, block 0's input after
            the timestep shift/scale of its attention branch (TeaCache's signal).
        loop_latents: `(pipe, raw VAE latents [B, C, F, H, W]) -> tensor`, the layout and
            normalisation the pipeline's denoising loop carries.
        batched_cfg: `pipe -> bool`, whether a call in the `cond_uncond` context holds the
            `[uncond; cond]` halves of classifier-free guidance.
    """

    name: str
    transformer_class: type
    pipeline: str
    block_lists: tuple[str, ...]
    latent_arg: str = "hidden_states"
    timestep_arg: str = "timestep"
    text_stream: bool = False
    unbatched_block_args: frozenset[str] = field(default_factory=frozenset)
    forecast_modules: tuple[str, ...] = ()
    forecast_outputs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    block_arg_names: Mapping[type, Mapping[str, str]] = field(default_factory=dict)
    modulated_input: Callable[[torch.nn.Module, dict[str, Any]], torch.Tensor | None] | None = None
    loop_latents: Callable[[Any, torch.Tensor], torch.Tensor] | None = None
    batched_cfg: Callable[[Any], bool] = scale_says_cfg

    # --- identity --------------------------------------------------------------------------
    @property
    def class_name(self) -> str:
        """The transformer class's name (reports and policy files; never for lookups)."""
        return self.transformer_class.__name__

    @property
    def blocks_attr(self) -> str:
        """The block lists' attributes as one readable string (messages)."""
        return " + ".join(self.block_lists)

    @property
    def pipeline_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.pipeline)

    # --- the block stack -------------------------------------------------------------------
    def blocks(self, transformer: torch.nn.Module) -> Sequence[torch.nn.Module]:
        """Every block in forward order: the one ModuleList, or the concatenation of several."""
        if len(self.block_lists) == 1:
            return getattr(transformer, self.block_lists[0])
        return list(chain.from_iterable(getattr(transformer, attr) for attr in self.block_lists))

    def forecast_module_names(self, block: torch.nn.Module) -> tuple[str, ...]:
        """The `forecast_modules` that `block` has, as direct children."""
        children = dict(block.named_children())
        return tuple(n for n in self.forecast_modules if n in children)

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

    def block_kwargs(self, block: torch.nn.Module, named: dict[str, Any],
                     streams: tuple[torch.Tensor, ...]) -> dict[str, Any]:
        """How to call `block` given the head block's bound arguments and the current streams."""
        updated = self.with_streams(named, streams)
        renames = self._renames(type(block))
        for old, new in renames.items():
            if old in updated:
                updated[new] = updated.pop(old)
        return updated

    def _renames(self, block_type: type) -> Mapping[str, str]:
        for cls in block_type.__mro__:
            if cls in self.block_arg_names:
                return self.block_arg_names[cls]
        return {}

    def as_output(self, streams: tuple[torch.Tensor, ...]) -> Any:
        """Stream tensors in the form a block returns them."""
        return tuple(streams) if self.text_stream else streams[0]


#: The name the runtime, the stack and the baselines have always used.
BlockStackAdapter = Architecture
