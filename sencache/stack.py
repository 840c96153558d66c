"""Hooks that let a controller run the block stack on a sub-batch and replay cached residuals.

The first block carries a *head* hook: it asks the controller which rows of the batch compute,
runs the whole stack itself on that sub-batch, and returns `input + R` for the other rows, where
`R` is the residual (stack output minus stack input, in token space) of the last step at which
that row computed, kept per cache context (`cond`, `uncond`, `cond_uncond`). Every later block
carries a *pass* hook that returns its input unchanged, because the head already produced the
stack's output. The blocks' own forwards are untouched, so they stay compilable.

Both the runtime (`sencache.apply`) and calibration's recorder drive this through a
`StackController`; neither replaces a class method.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from sencache.adapters import BlockStackAdapter

__all__ = ["HEAD_HOOK", "PASS_HOOK", "StackController", "StackHooks", "install_stack", "remove_stack"]

logger = logging.getLogger(__name__)

HEAD_HOOK = "sencache_stack_head"
PASS_HOOK = "sencache_stack_pass"
DEFAULT_CONTEXT = "default"


class StackController(Protocol):
    """Decides which rows run the blocks; told what ran."""

    def compute_mask(self, context: str, batch: int) -> torch.Tensor | None:
        """Bool [batch] of rows that run the blocks, or None for all of them."""

    def stack_ran(self, context: str, rows: int, batch: int) -> None:
        """Called after the blocks ran on `rows` of `batch` rows in `context`."""

    # Optional: `forecasting` (bool attribute) and `forecast_weights(context, batch) -> Tensor |
    # None`, float [batch]: a skipped row reuses `R + w·(R − R_previous)` instead of `R` (see
    # `_reuse`). Without `forecasting` no previous residual is kept (on a large model, one more
    # residual per context is hundreds of MB) and every skipped row reuses `R` as it is.
    # Optional: `module_forecast` (a `sencache.taylor.ModuleForecast`, or None) and
    # `row_timesteps` / `row_steps(context, batch) -> Tensor | None` (the rows' timesteps or step
    # index; None: compute every row, touch no factor): forecast "taylor", where skipped rows run
    # the blocks with their attention / feed-forward outputs forecast; no residual is kept.


class _ResidualState(BaseState):
    def __init__(self) -> None:
        self.residual: tuple[torch.Tensor, ...] | None = None
        #: each row's residual at the computed step before its last one (for forecasting)
        self.previous: tuple[torch.Tensor, ...] | None = None

    def reset(self) -> None:
        self.residual = None
        self.previous = None


@dataclass
class _Shared:
    """State the head and pass hooks share: whether the head is running the stack right now."""

    running: bool = False


_SIGNATURES: dict[type, inspect.Signature] = {}


def _bind(module: torch.nn.Module, fn: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    sig = _SIGNATURES.get(type(module))
    if sig is None:
        sig = _SIGNATURES[type(module)] = inspect.signature(fn)
    return dict(sig.bind(*args, **kwargs).arguments)


def _reuse(streams_in: tuple[torch.Tensor, ...], cached: tuple[torch.Tensor, ...],
           previous: tuple[torch.Tensor, ...] | None, weights: torch.Tensor | None) -> list[torch.Tensor]:
    """The skipped rows' stack output: `input + R`, or `input + R + w·(R − R_previous)`."""
    if weights is None or previous is None:
        return [s + r for s, r in zip(streams_in, cached)]
    out = []
    for s, r, p in zip(streams_in, cached, previous):
        w = weights.to(device=r.device, dtype=r.dtype).view(-1, *([1] * (r.ndim - 1)))
        out.append(s + r + w * (r - p))
    return out


def _slice(value: Any, index: torch.Tensor, batch: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index.to(value.device)) if value.ndim and value.shape[0] == batch else value
    if isinstance(value, tuple):
        return tuple(_slice(v, index, batch) for v in value)
    return value


class _HeadHook(ModelHook):
    _is_stateful = True

    def __init__(self, adapter: BlockStackAdapter, blocks: torch.nn.ModuleList, controller: StackController,
                 shared: _Shared) -> None:
        super().__init__()
        self.adapter = adapter
        self.blocks = blocks
        self.controller = controller
        self.shared = shared
        self.state = StateManager(_ResidualState)

    def context_name(self) -> str:
        context = self.state._context
        return context.name if context is not None else DEFAULT_CONTEXT

    def residual_state(self) -> _ResidualState:
        if self.state._context is None:
            return self.state._state_cache.setdefault(DEFAULT_CONTEXT, _ResidualState())
        return self.state.get_state()

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        named = _bind(module, self.fn_ref.original_forward, args, kwargs)
        streams_in = self.adapter.stream_inputs(named)
        batch = streams_in[0].shape[0]
        context = self.context_name()
        state = self.residual_state()
        mask = self.controller.compute_mask(context, batch)
        # --- forecast "taylor" (sencache/taylor.py): skipping rows run the blocks, modules forecast
        module_forecast = getattr(self.controller, "module_forecast", None)
        if module_forecast is not None:
            return module_forecast.run(self, named, streams_in, batch, context, mask)
        # --- plain reuse and the linear residual forecast
        cached = state.residual
        if mask is not None and not bool(mask.all()):
            if cached is None or cached[0].shape[0] != batch:
                logger.debug("no cached residual for context %r: computing every row", context)
                mask = None
        forecasting = bool(getattr(self.controller, "forecasting", False))
        previous = state.previous if forecasting and state.previous is not None and cached is not None \
            and state.previous[0].shape[0] == batch else None
        weights = self.controller.forecast_weights(context, batch) if forecasting and mask is not None else None
        if mask is not None and not bool(mask.any()):
            self.controller.stack_ran(context, 0, batch)
            return self.adapter.as_output(tuple(_reuse(streams_in, cached, previous, weights)))

        if mask is None or bool(mask.all()):
            streams_out = self._run_stack(module, named)
            fresh = forecasting and cached is not None and cached[0].shape[0] == batch
            state.previous = cached if fresh else None
            state.residual = tuple(o - i for o, i in zip(streams_out, streams_in))
            self.controller.stack_ran(context, batch, batch)
            return self.adapter.as_output(streams_out)

        index = mask.nonzero().flatten()
        sub = {k: (v if k in self.adapter.unbatched_block_args else _slice(v, index, batch)) for k, v in named.items()}
        sub_out = self._run_stack(module, sub)
        sub_in = self.adapter.stream_inputs(sub)
        reused = _reuse(streams_in, cached, previous, weights)
        residual, out, prior = [], [], []
        for k, (s_in, r_old, o_sub, i_sub) in enumerate(zip(streams_in, cached, sub_out, sub_in)):
            dev_index = index.to(s_in.device)
            residual.append(r_old.index_copy(0, dev_index, o_sub - i_sub))
            out.append(reused[k].index_copy(0, dev_index, o_sub))
            if forecasting:  # the computing rows' old residual becomes their previous one; the others keep theirs
                base = previous[k] if previous is not None else r_old
                prior.append(base.index_copy(0, dev_index, r_old.index_select(0, dev_index)))
        state.residual = tuple(residual)
        state.previous = tuple(prior) if forecasting else None
        self.controller.stack_ran(context, int(index.numel()), batch)
        return self.adapter.as_output(tuple(out))

    def _run_stack(self, head: torch.nn.Module, named: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        self.shared.running = True
        try:
            streams = self.adapter.stream_outputs(self.fn_ref.original_forward(**named))
            for block in self.blocks[1:]:
                streams = self.adapter.stream_outputs(block(**self.adapter.block_kwargs(block, named, streams)))
        finally:
            self.shared.running = False
        return streams

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module


class _PassHook(ModelHook):
    """On every block after the first: run for real only while the head runs the stack."""

    def __init__(self, adapter: BlockStackAdapter, shared: _Shared) -> None:
        super().__init__()
        self.adapter = adapter
        self.shared = shared

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.shared.running:
            return self.fn_ref.original_forward(*args, **kwargs)
        named = _bind(module, self.fn_ref.original_forward, args, kwargs)
        return self.adapter.as_output(self.adapter.stream_inputs(named))


@dataclass
class StackHooks:
    """The installed hooks of one transformer; `residual(context)` reads a cached residual."""

    transformer: torch.nn.Module
    adapter: BlockStackAdapter
    head: _HeadHook

    def residual(self, context: str = DEFAULT_CONTEXT) -> tuple[torch.Tensor, ...] | None:
        state = self.head.state._state_cache.get(context)
        return None if state is None else state.residual

    def set_residual(self, context: str, residual: tuple[torch.Tensor, ...] | None) -> None:
        self.head.state._state_cache.setdefault(context, _ResidualState()).residual = residual

    def reset(self) -> None:
        for state in self.head.state._state_cache.values():
            state.reset()


def install_stack(transformer: torch.nn.Module, adapter: BlockStackAdapter, controller: StackController) -> StackHooks:
    """Register the head and pass hooks on `transformer`'s blocks (replacing earlier ones)."""
    remove_stack(transformer, adapter)
    blocks = adapter.blocks(transformer)
    if len(blocks) == 0:
        raise ValueError(f"{type(transformer).__name__} has no blocks in `{adapter.blocks_attr}`")
    shared = _Shared()
    head = _HeadHook(adapter, blocks, controller, shared)
    HookRegistry.check_if_exists_or_initialize(blocks[0]).register_hook(head, HEAD_HOOK)
    for block in blocks[1:]:
        HookRegistry.check_if_exists_or_initialize(block).register_hook(_PassHook(adapter, shared), PASS_HOOK)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    return StackHooks(transformer, adapter, head)


def remove_stack(transformer: torch.nn.Module, adapter: BlockStackAdapter) -> None:
    """Remove the stack hooks; the blocks' forwards are exactly the originals again."""
    for block in adapter.blocks(transformer):
        registry = getattr(block, "_diffusers_hook", None)
        if registry is not None:
            registry.remove_hook(HEAD_HOOK, recurse=False)
            registry.remove_hook(PASS_HOOK, recurse=False)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
