"""Hooks that let a controller run the block stack on a sub-batch and replay cached residuals.

The first block carries a *head* hook: it asks the controller which rows of the batch compute,
runs the whole stack itself on that sub-batch, and returns `input + R` for the other rows, where
`R` is the residual (stack output minus stack input, in token space) of the last step at which
that row computed, kept per cache context (`cond`, `uncond`, `cond_uncond`). Every later block
carries a *pass* hook that returns its input unchanged, because the head already produced the
stack's output. The blocks' own forwards are untouched, so they stay compilable.

Regional compilation (`transformer.compile_repeated_blocks()`) compiles each block's call, hooks
included. So that the head's compiled frame does not absorb the stack (and guard on Python state
the decisions change), the head's work runs in a frame dynamo skips
(`torch.compiler.disable(recursive=False)`) and calls every block, itself included, through the
block's own `__call__`: each block then runs its own compiled graph, with the hooks reduced to
"run the original forward" (the stack is running) or "return the input" (the transformer's own
loop, after the head produced the stack's output). The state those frames read is one bool,
changed only outside traced code.

Partial batches update the kept residual buffers in place (`index_copy_`), so a step where some
rows compute allocates one output per stream on top of the sub-batch's own activations. The
residuals handed to `set_residual` may therefore be written in place.

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

__all__ = ["HEAD_HOOK", "PASS_HOOK", "StackController", "StackHooks", "install_stack", "remove_stack", "report_residual"]

logger = logging.getLogger(__name__)

HEAD_HOOK = "sencache_stack_head"
PASS_HOOK = "sencache_stack_pass"
DEFAULT_CONTEXT = "default"

_HALF = (torch.float16, torch.bfloat16)
#: the half-precision forecast is summed in float32 in this many slices along the token axis
_FP32_PIECES = 16


class StackController(Protocol):
    """Decides which rows run the blocks; told what ran."""

    def compute_mask(self, context: str, batch: int) -> torch.Tensor | None:
        """Bool [batch] of rows that run the blocks, or None for all of them."""

    def stack_ran(self, context: str, rows: int, batch: int) -> None:
        """Called after the blocks ran on `rows` of `batch` rows in `context`."""

    # Optional: `forecasting` (bool attribute) and `forecast_weights(context, batch) -> Tensor |
    # None`, float [batch]: a skipped row reuses `R + w·ΔR` instead of `R` (see `_reuse`), where
    # ΔR is the row's last residual minus the one before. Without `forecasting` no difference is
    # kept (on a large model, one more residual per context is hundreds of MB) and every skipped
    # row reuses `R` as it is. Optional `end_call()`: the pipeline call ended (its stateful hooks
    # are being reset).
    # Optional: `module_forecast` (a `sencache.taylor.ModuleForecast`, or None) and
    # `row_timesteps` / `row_steps(context, batch) -> Tensor | None` (the rows' timesteps or step
    # index; None: compute every row, touch no factor): forecast "taylor", where skipped rows run
    # the blocks with their attention / feed-forward outputs forecast; no residual is kept.
    # Optional: `tracks_residual_change` (bool attribute) and `residual_computed(context, rows,
    # batch, residual)`: each computing row's fresh residual (first stream; `rows` None: all of
    # `batch`), for the score's residual-change term (`sencache.residual_change`).


class _ResidualState(BaseState):
    def __init__(self) -> None:
        self.residual: tuple[torch.Tensor, ...] | None = None
        #: per row, its last residual minus the one before (forecasting only; zero rows: one compute)
        self.delta: tuple[torch.Tensor, ...] | None = None

    def reset(self) -> None:
        self.residual = None
        self.delta = None


@dataclass
class _Shared:
    """State the head and pass hooks share: whether the head is running the stack right now."""

    running: bool = False


_SIGNATURES: dict[type, inspect.Signature] = {}


@torch.compiler.disable
def _bind(module: torch.nn.Module, fn: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    sig = _SIGNATURES.get(type(module))
    if sig is None:
        sig = _SIGNATURES[type(module)] = inspect.signature(fn)
    return dict(sig.bind(*args, **kwargs).arguments)


@torch.compiler.disable
def _reuse(streams_in: tuple[torch.Tensor, ...], cached: tuple[torch.Tensor, ...],
           delta: tuple[torch.Tensor, ...] | None, weights: torch.Tensor | None) -> list[torch.Tensor]:
    """The skipped rows' stack output: `input + R`, or `input + R + w·ΔR` (a linear forecast).

    The one place that turns cached state into a reused output: a new reuse mode plugs in here.
    In half precision the forecast is summed in float32 and rounded once, since `w·ΔR` is small
    next to `input + R` and would be rounded away.
    """
    if weights is None or delta is None:
        return [s + r for s, r in zip(streams_in, cached)]
    out = []
    for s, r, d in zip(streams_in, cached, delta):
        w = weights.to(device=r.device, dtype=torch.float32).view(-1, *([1] * (r.ndim - 1)))
        if r.dtype not in _HALF:
            out.append((s + r).add_(d * w.to(r.dtype)))
            continue
        # float32 a slice of tokens at a time: the transient stays ~1/4 of a residual, not 4x one
        result = torch.empty_like(r)
        pieces = min(_FP32_PIECES, r.shape[1]) if r.ndim > 1 else 1
        for s_, r_, d_, o_ in zip(*(torch.tensor_split(v, pieces, dim=min(1, r.ndim - 1)) for v in (s, r, d, result))):
            acc = s_.float()
            acc.add_(r_).add_(d_.float().mul_(w))
            o_.copy_(acc)
        out.append(result)
    return out


@torch.compiler.disable
def _difference(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """`new − old` taken in float32 and stored in the residual's dtype (ΔR keeps its own precision)."""
    return (new.float() - old.float()).to(new.dtype) if new.dtype in _HALF else new - old


def _slice(value: Any, index: torch.Tensor, batch: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index.to(value.device)) if value.ndim and value.shape[0] == batch else value
    if isinstance(value, tuple):
        return tuple(_slice(v, index, batch) for v in value)
    return value


@dataclass
class _Plan:
    """What the head does this call: which rows compute (None: all), with the cached state."""

    named: dict[str, Any]
    streams_in: tuple[torch.Tensor, ...]
    batch: int
    context: str
    state: _ResidualState
    mask: torch.Tensor | None
    weights: torch.Tensor | None
    forecasting: bool


@torch.compiler.disable
def report_residual(controller: Any, context: str, rows: torch.Tensor | None, batch: int,
                    residual: torch.Tensor) -> None:
    """Hand the computing rows' fresh residual to a controller that tracks its change."""
    if getattr(controller, "tracks_residual_change", False):
        controller.residual_computed(context, rows, batch, residual)


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
        if self.shared.running:  # the stack is being run from `_cached_forward`: be block 0
            return self.fn_ref.original_forward(*args, **kwargs)
        return self._cached_forward(module, args, kwargs)

    @torch.compiler.disable(recursive=False)
    def _cached_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        module_forecast = getattr(self.controller, "module_forecast", None)
        if module_forecast is not None:  # forecast "taylor" (sencache/taylor.py): skipping rows run the blocks
            return self._module_forecast_forward(module_forecast, module, args, kwargs)
        plan = self._plan(module, args, kwargs)
        if plan.mask is not None and not bool(plan.mask.any()):
            return self._skip_all(plan)
        index = None if plan.mask is None or bool(plan.mask.all()) else plan.mask.nonzero().flatten()
        sub = plan.named if index is None else self._sub_batch(plan, index)
        self._drop_unneeded(plan, index)
        return self._store(plan, sub, index, self._run_stack(module, sub))

    @torch.compiler.disable(recursive=False)
    def _run_stack(self, head: torch.nn.Module, named: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """Every block through its own `__call__` (so through its own compiled graph, if any)."""
        self.shared.running = True
        try:
            streams = self.adapter.stream_outputs(head(**named))
            for block in self.blocks[1:]:
                streams = self.adapter.stream_outputs(block(**self._block_kwargs(block, named, streams)))
        finally:
            self.shared.running = False
        return streams

    @torch.compiler.disable
    def _block_kwargs(self, block: torch.nn.Module, named: dict[str, Any], streams: tuple[torch.Tensor, ...]) -> dict:
        # the description's `block_kwargs` renames per block class (HunyuanVideo's two kinds)
        return self.adapter.block_kwargs(block, named, streams)

    @torch.compiler.disable
    def _module_forecast_forward(self, module_forecast: Any, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        """Forecast "taylor": no residual is kept; the forecast runs both sub-batches itself."""
        named = _bind(module, self.fn_ref.original_forward, args, kwargs)
        streams_in = self.adapter.stream_inputs(named)
        batch = streams_in[0].shape[0]
        context = self.context_name()
        mask = self.controller.compute_mask(context, batch)
        return module_forecast.run(self, module, named, streams_in, batch, context, mask)

    @torch.compiler.disable
    def _plan(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> _Plan:
        named = _bind(module, self.fn_ref.original_forward, args, kwargs)
        streams_in = self.adapter.stream_inputs(named)
        batch = streams_in[0].shape[0]
        context = self.context_name()
        state = self.residual_state()
        mask = self.controller.compute_mask(context, batch)
        cached = state.residual
        if mask is not None and not bool(mask.all()):
            if cached is None or cached[0].shape != streams_in[0].shape:
                logger.debug("no cached residual for context %r: computing every row", context)
                mask = None
        forecasting = bool(getattr(self.controller, "forecasting", False))
        weights = None
        if forecasting and mask is not None and hasattr(self.controller, "forecast_weights"):
            weights = self.controller.forecast_weights(context, batch)
        return _Plan(named, streams_in, batch, context, state, mask, weights, forecasting)

    @torch.compiler.disable
    def _skip_all(self, plan: _Plan) -> Any:
        self.controller.stack_ran(plan.context, 0, plan.batch)
        return self.adapter.as_output(tuple(_reuse(plan.streams_in, plan.state.residual, plan.state.delta,
                                                   plan.weights)))

    @torch.compiler.disable
    def _sub_batch(self, plan: _Plan, index: torch.Tensor) -> dict[str, Any]:
        unbatched = self.adapter.unbatched_block_args
        return {k: (v if k in unbatched else _slice(v, index, plan.batch)) for k, v in plan.named.items()}

    @torch.compiler.disable
    def _drop_unneeded(self, plan: _Plan, index: torch.Tensor | None) -> None:
        """When every row computes and nothing forecasts, the old residual is dead: free it first."""
        if index is None and not plan.forecasting:
            plan.state.reset()

    @torch.compiler.disable
    def _store(self, plan: _Plan, sub: dict[str, Any], index: torch.Tensor | None,
               streams_out: tuple[torch.Tensor, ...]) -> Any:
        state = plan.state
        sub_in = self.adapter.stream_inputs(sub)
        cached = state.residual
        if index is None:
            residual = tuple(o - i for o, i in zip(streams_out, sub_in))
            same = cached is not None and cached[0].shape == residual[0].shape
            if plan.forecasting and same:
                state.delta = tuple(_difference(r, c) for r, c in zip(residual, cached))
            elif plan.forecasting:
                state.delta = None
            state.residual = residual
            report_residual(self.controller, plan.context, None, plan.batch, residual[0])
            self.controller.stack_ran(plan.context, plan.batch, plan.batch)
            return self.adapter.as_output(streams_out)
        out = _reuse(plan.streams_in, cached, state.delta, plan.weights)
        if plan.forecasting and state.delta is None:
            state.delta = tuple(torch.zeros_like(c) for c in cached)
        for k, (o_sub, i_sub) in enumerate(zip(streams_out, sub_in)):
            rows = index.to(o_sub.device)
            fresh = o_sub - i_sub
            if k == 0:
                report_residual(self.controller, plan.context, index, plan.batch, fresh)
            if plan.forecasting:  # the computing rows' difference: new residual minus their last one
                state.delta[k].index_copy_(0, rows, _difference(fresh, cached[k].index_select(0, rows)))
            cached[k].index_copy_(0, rows, fresh)
            out[k].index_copy_(0, rows, o_sub)
        self.controller.stack_ran(plan.context, int(index.numel()), plan.batch)
        return self.adapter.as_output(tuple(out))

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        end_call = getattr(self.controller, "end_call", None)
        if end_call is not None:
            end_call()
        return module


class _PassHook(ModelHook):
    """On every block after the first: run for real only while the head runs the stack."""

    def __init__(self, adapter: BlockStackAdapter, shared: _Shared) -> None:
        super().__init__()
        self.adapter = adapter
        self.shared = shared
        self._positions: dict[str, int] = {}

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        # argument positions, read once here rather than bound inside a (possibly traced) call
        names = list(inspect.signature(module.forward).parameters)
        self._positions = {name: names.index(name) for name in ("hidden_states", "encoder_hidden_states")
                           if name in names}
        return module

    def _arg(self, name: str, args: tuple, kwargs: dict) -> Any:
        if name in kwargs:
            return kwargs[name]
        return args[self._positions[name]]

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.shared.running:
            return self.fn_ref.original_forward(*args, **kwargs)
        if self.adapter.text_stream:
            return self.adapter.as_output((self._arg("hidden_states", args, kwargs),
                                           self._arg("encoder_hidden_states", args, kwargs)))
        return self.adapter.as_output((self._arg("hidden_states", args, kwargs),))


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
