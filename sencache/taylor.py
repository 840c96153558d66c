"""Forecast "taylor": a skipped row still runs every block, with its heavy modules forecast.

Plain reuse adds one cached residual for the whole stack; the "linear" forecast extrapolates that
one residual. Here, at a step a sample skips, every block runs on the sample's *current* input
(its norms, timestep modulation and gates see the current timestep), while the outputs of the
modules the adapter lists in `forecast_modules` (attention, feed-forward: nearly all of a block's
multiply-accumulates) come from a per-sample Taylor forecast of their last computed values.

State is kept per cache context (``cond``, ``uncond``, ``cond_uncond``), per module and per row
of the batch, unlike diffusers' TaylorSeer hook, which keeps one state for the whole batch and
refreshes on a fixed step interval. The forecast is in timestep units, as the linear residual
forecast is, because shifted schedules space their steps unevenly. With the row's updates at
``t_2`` (last), ``t_1``, ``t_0`` it is the Newton form of the interpolating polynomial:

    F(t) ≈ F(t_2) + F[t_2, t_1]·(t − t_2)                      (order 1)
                  + F[t_2, t_1, t_0]·(t − t_2)·(t − t_1)        (order 2)

with divided differences ``F[t_2, t_1] = (F(t_2) − F(t_1)) / (t_2 − t_1)``: exact when the module
output is a polynomial of that order in t. A row with fewer updates uses the orders it has.

Rows that compute run the modules for real and update only their own rows of the factors; rows
that skip only read theirs. The stack's head hook drives this (`ModuleForecast.run`): it runs the
stack once on the computing sub-batch (modules in "update" mode) and once on the skipping
sub-batch (modules in "forecast" mode). Memory: `sencache.taylor_memory`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from policies.errors import InputError
from sencache.adapters import BlockStackAdapter
from sencache.stack import _slice

__all__ = ["FORECAST_HOOK", "ORDERS", "ModuleForecast", "install_forecast", "remove_forecast"]

logger = logging.getLogger(__name__)

FORECAST_HOOK = "sencache_taylor"
ORDERS = (1, 2)
_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class _Pass:
    """What the head asks of the forecast modules while it runs the stack on one sub-batch."""

    context: str
    update: bool  # True: run, and update these rows' factors; False: return their forecast
    rows: torch.Tensor  # long [n]: the sub-batch's rows in the full batch
    t: torch.Tensor  # float [n]: their timesteps
    batch: int  # rows of the full batch


class _Factors(BaseState):
    """One module's factors in one cache context, for every row of the batch.

    `values[k][j]` is output k's order-j divided difference, [batch, ...]; `depth[r]` the highest
    valid order of row r (-1: never computed); `t_last`/`t_prev` the rows' last two update
    timesteps (NaN where none).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.values: list[list[torch.Tensor]] | None = None
        self.dtypes: tuple[torch.dtype, ...] = ()
        self.depth: torch.Tensor | None = None
        self.t_last: torch.Tensor | None = None
        self.t_prev: torch.Tensor | None = None

    def ready(self, batch: int) -> torch.Tensor:
        """Bool [batch]: rows that have computed at least once in this context."""
        if self.depth is None or self.depth.shape[0] != batch:
            return torch.zeros(batch, dtype=torch.bool)
        return (self.depth >= 0).cpu()

    def _allocate(self, outputs: tuple[torch.Tensor, ...], batch: int, order: int, dtype: torch.dtype | None) -> None:
        device = outputs[0].device
        self.values = []
        for out in outputs:
            kind = dtype or (torch.float32 if out.dtype in _HALF else out.dtype)
            self.values.append([out.new_zeros((batch, *out.shape[1:]), dtype=kind) for _ in range(order + 1)])
        self.dtypes = tuple(out.dtype for out in outputs)
        self.depth = torch.full((batch,), -1, dtype=torch.long, device=device)
        self.t_last = torch.full((batch,), float("nan"), device=device)
        self.t_prev = torch.full((batch,), float("nan"), device=device)

    @torch.compiler.disable
    def update(self, outputs: tuple[torch.Tensor, ...], p: _Pass, order: int, dtype: torch.dtype | None) -> None:
        fits = self.values is not None and self.depth.shape[0] == p.batch and len(self.values) == len(outputs) \
            and all(v[0].shape[1:] == o.shape[1:] for v, o in zip(self.values, outputs))
        if not fits:
            self._allocate(outputs, p.batch, order, dtype)
        device = self.depth.device
        rows, t = p.rows.to(device), p.t.to(device=device, dtype=torch.float32)
        depth, t_last, t_prev = self.depth[rows], self.t_last[rows], self.t_prev[rows]
        span1, span2 = t - t_last, t - t_prev
        ok1 = (depth >= 0) & (span1.abs() > 1e-12)  # NaN compares False: no earlier update
        ok2 = ok1 & (depth >= 1) & (span2.abs() > 1e-12)
        for values, out in zip(self.values, outputs):
            new = [out.detach().to(values[0].dtype)]
            for j, (ok, span) in enumerate(((ok1, span1), (ok2, span2))[:order]):
                old = values[j].index_select(0, rows)
                span_ok = _rows(torch.where(ok, span, torch.ones_like(span)), new[j]).to(old.dtype)
                diff = (new[j] - old) / span_ok
                new.append(torch.where(_rows(ok, diff), diff, torch.zeros_like(diff)))
            for j, value in enumerate(new):
                values[j].index_copy_(0, rows, value)
        new_depth = torch.where(ok1, torch.clamp(depth + 1, max=order), torch.zeros_like(depth))
        self.depth.index_copy_(0, rows, new_depth)
        self.t_prev.index_copy_(0, rows, torch.where(ok1, t_last, torch.full_like(t, float("nan"))))
        self.t_last.index_copy_(0, rows, t)

    @torch.compiler.disable
    def forecast(self, p: _Pass) -> tuple[torch.Tensor, ...]:
        device = self.depth.device
        rows, t = p.rows.to(device), p.t.to(device=device, dtype=torch.float32)
        depth, t_last, t_prev = self.depth[rows], self.t_last[rows], self.t_prev[rows]
        if bool((depth < 0).any()):
            raise RuntimeError(f"taylor forecast asked for rows {rows[depth < 0].tolist()} that never computed")
        zero = torch.zeros_like(t)
        weights = [torch.where(depth >= 1, t - t_last, zero), torch.where(depth >= 2, (t - t_last) * (t - t_prev), zero)]
        outs = []
        for values, kind in zip(self.values, self.dtypes):
            out = values[0].index_select(0, rows)
            for j in range(1, len(values)):
                out = out + _rows(weights[j - 1], out).to(out.dtype) * values[j].index_select(0, rows)
            outs.append(out.to(kind))
        return tuple(outs)


def _rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-row vector [n] shaped to broadcast against `like` [n, ...]."""
    return v.view(-1, *([1] * (like.ndim - 1)))


class _ForecastHook(ModelHook):
    """On one forecast module: runs it (and updates factors) or returns its forecast, as the head asks."""

    _is_stateful = True

    def __init__(self, owner: ModuleForecast) -> None:
        super().__init__()
        self.owner = owner
        self.state = StateManager(_Factors)

    def factors(self, context: str) -> _Factors:
        # keyed by the head's context name, so that head and modules always agree on it
        return self.state._state_cache.setdefault(context, _Factors())

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        p = self.owner.active
        if p is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        state = self.factors(p.context)
        if p.update:
            output = self.fn_ref.original_forward(*args, **kwargs)
            state.update(output if isinstance(output, tuple) else (output,), p, self.owner.order, self.owner.dtype)
            return output
        outs = state.forecast(p)
        return outs if len(outs) > 1 else outs[0]

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module


class ModuleForecast:
    """The installed forecast hooks of one transformer, and the head's third path (`run`).

    Args:
        order: 1 or 2 (`ORDERS`); 2 keeps one more factor per module.
        factors_dtype: dtype of the kept factors and of the forecast arithmetic; None (default)
            is float32 where a module's output is float16/bfloat16 (half-precision factors drift
            over long extrapolations, as TaylorSeer's `taylor_factors_dtype` warns), else the
            output's own dtype.
    """

    def __init__(self, adapter: BlockStackAdapter, hooks: list[_ForecastHook], order: int,
                 factors_dtype: torch.dtype | None) -> None:
        self.adapter = adapter
        self.hooks = hooks
        self.order = order
        self.dtype = factors_dtype
        self.active: _Pass | None = None

    def ready(self, context: str, batch: int) -> torch.Tensor:
        """Bool [batch]: rows whose every forecast module has computed in `context`."""
        ready = torch.ones(batch, dtype=torch.bool)
        for hook in self.hooks:
            ready &= hook.factors(context).ready(batch)
        return ready

    def reset(self) -> None:
        for hook in self.hooks:
            hook.state.reset()

    def run(self, head: Any, named: dict[str, Any], streams_in: tuple[torch.Tensor, ...], batch: int,
            context: str, mask: torch.Tensor | None) -> Any:
        """The stack's output under "taylor": computing rows run for real, skipping rows forecast.

        `head` is the stack's head hook (its `_run_stack`, adapter and controller). A row that has
        not computed yet in this context computes whatever the mask says; without the rows'
        timesteps (no decision this call) every row computes and no factor changes.
        """
        timesteps = getattr(head.controller, "row_timesteps", None)
        t = timesteps(context, batch) if timesteps is not None else None
        if t is None:
            streams = head._run_stack(None, named)
            head.controller.stack_ran(context, batch, batch)
            return head.adapter.as_output(streams)
        compute = torch.ones(batch, dtype=torch.bool) if mask is None else mask.detach().cpu().bool()
        compute = compute | ~self.ready(context, batch)
        parts = []
        for rows, update in ((compute.nonzero().flatten(), True), ((~compute).nonzero().flatten(), False)):
            if rows.numel() == 0:
                continue
            sub = named if rows.numel() == batch else {
                k: (v if k in head.adapter.unbatched_block_args else _slice(v, rows, batch)) for k, v in named.items()}
            self.active = _Pass(context, update, rows, t.detach().float().cpu()[rows], batch)
            try:
                parts.append((rows, head._run_stack(None, sub)))
            finally:
                self.active = None
        head.controller.stack_ran(context, int(compute.sum()), batch)
        if len(parts) == 1:
            return head.adapter.as_output(parts[0][1])
        out = [torch.empty_like(s) for s in streams_in]
        for rows, streams in parts:
            out = [o.index_copy(0, rows.to(o.device), s) for o, s in zip(out, streams)]
        return head.adapter.as_output(tuple(out))


def install_forecast(transformer: torch.nn.Module, adapter: BlockStackAdapter, order: int = 1,
                     factors_dtype: torch.dtype | None = None) -> ModuleForecast:
    """Register a forecast hook on every block's `adapter.forecast_modules` (replacing earlier ones)."""
    if order not in ORDERS:
        raise InputError(f"taylor forecast order must be one of {ORDERS}, got {order!r}")
    if not adapter.forecast_modules:
        raise InputError(
            f"forecast 'taylor' needs the modules a block may forecast, and the {adapter.class_name} adapter "
            "lists none: add `forecast_modules` to its file in sencache/adapters/, or use forecast 'linear'"
        )
    remove_forecast(transformer, adapter)
    owner = ModuleForecast(adapter, [], order, factors_dtype)
    for index, block in enumerate(adapter.blocks(transformer)):
        for name in adapter.forecast_modules:
            module = getattr(block, name, None)
            if not isinstance(module, torch.nn.Module):
                raise InputError(f"block {index} of {adapter.class_name} has no module {name!r} "
                                 f"(its adapter's forecast_modules: {adapter.forecast_modules})")
            hook = _ForecastHook(owner)
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, FORECAST_HOOK)
            owner.hooks.append(hook)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    return owner


def remove_forecast(transformer: torch.nn.Module, adapter: BlockStackAdapter) -> None:
    """Remove every forecast hook under `transformer`'s blocks; their modules run as before."""
    for block in adapter.blocks(transformer):
        for module in block.modules():
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None:
                registry.remove_hook(FORECAST_HOOK, recurse=False)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
