"""Forecast "taylor": a skipped row still runs every block, with its heavy modules forecast.

Plain reuse adds one cached residual for the whole stack; the "linear" forecast extrapolates that
one residual. Here, at a step a sample skips, every block runs on the sample's *current* input
(its norms, timestep modulation and gates see the current timestep), while the outputs of the
modules the adapter lists in `forecast_modules` (attention, feed-forward: nearly all of a block's
multiply-accumulates) come from a per-sample Taylor forecast of their last computed values.

State is kept per cache context (``cond``, ``uncond``, ``cond_uncond``), per module and per row
of the batch, unlike diffusers' TaylorSeer hook, which keeps one state for the whole batch and
refreshes on a fixed step interval. The forecast runs along step indices (``units="step"``, as
TaylorSeer; measured closer to full compute on toy-wan's shifted schedule) or along the model's
timesteps (``units="timestep"``, as the linear residual forecast). With the row's updates at
``t_2`` (last), ``t_1``, ``t_0`` (in those units) it is the Newton form of the interpolating
polynomial:

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
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from policies.errors import InputError
from sencache.adapters import BlockStackAdapter
from sencache.stack import _slice, report_residual

__all__ = ["FORECAST_HOOK", "ORDERS", "UNITS", "ModuleForecast", "install_forecast", "remove_forecast"]

logger = logging.getLogger(__name__)

FORECAST_HOOK = "sencache_taylor"
ORDERS = (1, 2)
UNITS = ("timestep", "step")
_HALF = (torch.float16, torch.bfloat16)


@dataclass
class _Rows:
    """Per cache context, per row: the highest valid order (-1: never computed) and the last two
    update timesteps (NaN where none). One record for all the context's modules, which always
    update together, kept on the CPU so that choosing orders never waits on the accelerator."""

    depth: torch.Tensor
    t_last: torch.Tensor
    t_prev: torch.Tensor

    @classmethod
    def fresh(cls, batch: int) -> _Rows:
        nan = torch.full((batch,), float("nan"), dtype=torch.float64)
        return cls(torch.full((batch,), -1, dtype=torch.long), nan, nan.clone())


@dataclass
class _Pass:
    """What the head asks of the forecast modules while it runs the stack on one sub-batch.

    `scales[j]` is per row: in an update, ``1 / span`` of the order-(j+1) divided difference (0
    where the row has no such order yet); in a forecast, the Newton weight of order j+1, i.e.
    ``t − t_last`` and ``(t − t_last)(t − t_prev)`` (0 where the row lacks that order).
    """

    context: str
    update: bool  # True: run, and update these rows' factors; False: return their forecast
    rows: torch.Tensor  # long [n] on the CPU: the sub-batch's rows in the full batch, sorted
    batch: int  # rows of the full batch
    scales: list[torch.Tensor]
    used: list[bool]  # per order: whether any row of the sub-batch has it
    had_history: bool  # some row of this context computed before
    restart: bool = False  # a module had to start its factors afresh: every order restarts
    _shaped: dict = field(default_factory=dict)

    @property
    def whole(self) -> bool:
        return self.rows.numel() == self.batch  # rows are sorted: every row, no gather or scatter

    def scale(self, j: int, like: torch.Tensor) -> torch.Tensor:
        """`scales[j]` shaped, placed and typed to multiply `like` [n, ...] (made once per pass)."""
        key = (j, like.device, like.dtype, like.ndim)
        if key not in self._shaped:
            self._shaped[key] = self.scales[j].view(-1, *([1] * (like.ndim - 1))).to(device=like.device, dtype=like.dtype)
        return self._shaped[key]


class _Factors(BaseState):
    """One module's factors in one cache context: `values[k][j]` is output k's order-j divided
    difference for every row of the batch, [batch, ...], on the module's device."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.values: list[list[torch.Tensor]] | None = None
        self.dtypes: tuple[torch.dtype, ...] = ()

    def fits(self, batch: int) -> bool:
        return self.values is not None and self.values[0][0].shape[0] == batch

    @torch.compiler.disable
    def update(self, outputs: tuple[torch.Tensor, ...], p: _Pass, order: int, dtype: torch.dtype | None) -> None:
        fits = self.fits(p.batch) and len(self.values) == len(outputs) \
            and all(v[0].shape[1:] == o.shape[1:] for v, o in zip(self.values, outputs))
        if not fits:
            self.values = []
            for out in outputs:
                kind = dtype or (torch.float32 if out.dtype in _HALF else out.dtype)
                self.values.append([out.new_zeros((p.batch, *out.shape[1:]), dtype=kind) for _ in range(order + 1)])
            self.dtypes = tuple(out.dtype for out in outputs)
            p.restart = p.restart or p.had_history
        for k, (values, out) in enumerate(zip(self.values, outputs)):
            new = [out.detach().to(values[0].dtype)]
            for j in range(order):
                if not p.used[j]:
                    new.append(torch.zeros_like(new[j]))
                    continue
                old = values[j] if p.whole else values[j].index_select(0, p.rows.to(values[j].device))
                new.append((new[j] - old) * p.scale(j, new[j]))
            if p.whole:
                self.values[k] = new
            else:
                for j, value in enumerate(new):
                    values[j].index_copy_(0, p.rows.to(value.device), value)

    @torch.compiler.disable
    def forecast(self, p: _Pass) -> tuple[torch.Tensor, ...]:
        outs = []
        for values, kind in zip(self.values, self.dtypes):
            picked = values if p.whole else [v.index_select(0, p.rows.to(v.device)) for v in values]
            out = picked[0]
            for j in range(1, len(picked)):
                if p.used[j - 1]:
                    out = out + p.scale(j - 1, out) * picked[j]
            outs.append(out.to(kind))
        return tuple(outs)


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
        units: what the forecast extrapolates along: ``"timestep"`` (the model's timesteps, as
            the linear residual forecast does) or ``"step"`` (step indices, as diffusers'
            TaylorSeer does; the controller's `row_steps`).
    """

    def __init__(self, adapter: BlockStackAdapter, hooks: list[_ForecastHook], order: int,
                 factors_dtype: torch.dtype | None, units: str = "step") -> None:
        self.adapter = adapter
        self.hooks = hooks
        self.order = order
        self.dtype = factors_dtype
        self.units = units
        self.active: _Pass | None = None
        self.rows: dict[str, _Rows] = {}

    def ready(self, context: str, batch: int) -> torch.Tensor:
        """Bool [batch]: rows that have computed in `context` (and whose modules kept factors)."""
        rows = self.rows.get(context)
        if rows is None or rows.depth.shape[0] != batch or not all(h.factors(context).fits(batch) for h in self.hooks):
            return torch.zeros(batch, dtype=torch.bool)  # also after diffusers reset the hooks' state
        return rows.depth >= 0

    def reset(self) -> None:
        self.rows.clear()
        for hook in self.hooks:
            hook.state.reset()

    def _begin(self, context: str, update: bool, rows: torch.Tensor, t: torch.Tensor, batch: int) -> _Pass:
        record = self.rows.get(context)
        if record is None or record.depth.shape[0] != batch:
            record = self.rows[context] = _Rows.fresh(batch)
        depth, t_last, t_prev = record.depth[rows], record.t_last[rows], record.t_prev[rows]
        if update:
            span1, span2 = t - t_last, t - t_prev
            ok1 = (depth >= 0) & (span1.abs() > 1e-12)  # NaN compares False: no earlier update
            ok2 = ok1 & (depth >= 1) & (span2.abs() > 1e-12)
            oks = (ok1, ok2)[: self.order]
            scales = [torch.where(ok, 1.0 / torch.where(ok, span, 1.0), 0.0) for ok, span in zip(oks, (span1, span2))]
            used = [bool(ok.any()) for ok in oks]
        else:
            scales = [torch.where(depth >= 1, t - t_last, 0.0), torch.where(depth >= 2, (t - t_last) * (t - t_prev), 0.0)]
            scales = scales[: self.order]
            used = [bool((w != 0).any()) for w in scales]
        return _Pass(context, update, rows, batch, scales, used, had_history=bool((record.depth >= 0).any()))

    def _commit(self, p: _Pass, t: torch.Tensor) -> None:
        """After an update pass: the updated rows' orders and timesteps move on; no other row's."""
        if p.restart:
            logger.debug("taylor factors of context %r restarted (a module's output changed shape)", p.context)
            self.rows[p.context] = _Rows.fresh(p.batch)
        record = self.rows[p.context]
        depth, t_last = record.depth[p.rows], record.t_last[p.rows]
        ok1 = (depth >= 0) & ((t - t_last).abs() > 1e-12)
        record.depth[p.rows] = torch.where(ok1, torch.clamp(depth + 1, max=self.order), torch.zeros_like(depth))
        record.t_prev[p.rows] = torch.where(ok1, t_last, float("nan"))
        record.t_last[p.rows] = t

    def run(self, head: Any, module: torch.nn.Module, named: dict[str, Any], streams_in: tuple[torch.Tensor, ...],
            batch: int, context: str, mask: torch.Tensor | None) -> Any:
        """The stack's output under "taylor": computing rows run for real, skipping rows forecast.

        `head` is the stack's head hook (its `_run_stack`, adapter and controller), `module` the
        head block it wraps. A row that has
        not computed yet in this context computes whatever the mask says; without the rows'
        timesteps (no decision this call) every row computes and no factor changes.
        """
        where = getattr(head.controller, "row_steps" if self.units == "step" else "row_timesteps", None)
        t_all = where(context, batch) if where is not None else None
        if t_all is None:
            streams = head._run_stack(module, named)
            head.controller.stack_ran(context, batch, batch)
            return head.adapter.as_output(streams)
        t_all = t_all.detach().cpu().double()
        compute = torch.ones(batch, dtype=torch.bool) if mask is None else mask.detach().cpu().bool()
        compute = compute | ~self.ready(context, batch)
        parts = []
        for rows, update in ((compute.nonzero().flatten(), True), ((~compute).nonzero().flatten(), False)):
            if rows.numel() == 0:
                continue
            sub = named if rows.numel() == batch else {
                k: (v if k in head.adapter.unbatched_block_args else _slice(v, rows, batch)) for k, v in named.items()}
            self.active = p = self._begin(context, update, rows, t_all[rows], batch)
            try:
                parts.append((rows, head._run_stack(module, sub)))
            finally:
                self.active = None
            if update:
                self._commit(p, t_all[rows])
                if getattr(head.controller, "tracks_residual_change", False):
                    fresh = parts[-1][1][0] - head.adapter.stream_inputs(sub)[0]
                    report_residual(head.controller, context, None if rows.numel() == batch else rows, batch, fresh)
        head.controller.stack_ran(context, int(compute.sum()), batch)
        if len(parts) == 1:
            return head.adapter.as_output(parts[0][1])
        out = [torch.empty_like(s) for s in streams_in]
        for rows, streams in parts:
            out = [o.index_copy(0, rows.to(o.device), s) for o, s in zip(out, streams)]
        return head.adapter.as_output(tuple(out))


def install_forecast(transformer: torch.nn.Module, adapter: BlockStackAdapter, order: int = 1,
                     factors_dtype: torch.dtype | None = None, units: str = "step") -> ModuleForecast:
    """Register a forecast hook on every block's `adapter.forecast_modules` (replacing earlier ones)."""
    if order not in ORDERS:
        raise InputError(f"taylor forecast order must be one of {ORDERS}, got {order!r}")
    if units not in UNITS:
        raise InputError(f"taylor forecast units must be one of {UNITS}, got {units!r}")
    if not adapter.forecast_modules:
        raise InputError(
            f"forecast 'taylor' needs the modules a block may forecast, and the {adapter.class_name} adapter "
            "lists none: add `forecast_modules` to its file in sencache/adapters/, or use forecast 'linear'"
        )
    remove_forecast(transformer, adapter)
    owner = ModuleForecast(adapter, [], order, factors_dtype, units)
    for index, block in enumerate(adapter.blocks(transformer)):
        names = adapter.forecast_module_names(block)
        if not names:
            raise InputError(f"block {index} of {adapter.class_name} has none of its description's "
                             f"forecast_modules {adapter.forecast_modules}: add its modules to its file in "
                             "sencache/adapters/, or use forecast 'linear'")
        for name in names:
            module = getattr(block, name)
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
