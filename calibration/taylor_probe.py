"""Measuring reuse mode "taylor" while recording: hooks on every block's forecast modules.

The runtime's taylor mode (`sencache.taylor`) runs every block on a skipped row's current input
and replaces only the outputs of the adapter's `forecast_modules` by an order-1 Taylor forecast
in step units from the row's last two computed steps r' < r: ``F(r) + (F(r) − F(r'))·(i − r)/(r − r')``
(``F(r)`` alone when r is the row's first computed step). A recording computes every step, so
r' = r − 1; to know what the runtime would give at step i after last computing at r = i − k, the
recorder needs each module's output at r and r − 1, and one forward at (x_i, t_i) in which those
modules return the forecast instead of running.

`TaylorProbe` does both with one hook per forecast module (diffusers' hook registry, as the
runtime does): in "record" it lets the module run and keeps its output (the conditional rows
only) for the current step; in "measure" it returns a precomputed forecast for a batch that
stacks one copy of the rows per lag, so all lags of a step cost one forward. Memory is bounded
by a window of k_max + 1 steps of module outputs.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from sencache.adapters import BlockStackAdapter

__all__ = ["PROBE_TAYLOR_HOOK", "TaylorProbe"]

PROBE_TAYLOR_HOOK = "sencache_record_taylor"


def _tensors(out: Any) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _like(out: Any, parts: tuple[torch.Tensor, ...]) -> Any:
    return parts if isinstance(out, tuple) else parts[0]


class _ModuleProbe(ModelHook):
    """One forecast module's hook; the `TaylorProbe` says what it does at each call."""

    _is_stateful = False

    def __init__(self, owner: "TaylorProbe", key: int) -> None:
        super().__init__()
        self.owner, self.key = owner, key

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        owner = self.owner
        if owner.mode == "measure":
            return owner.forecast(self.key)
        out = self.fn_ref.original_forward(*args, **kwargs)
        if owner.mode == "record":
            owner.keep(self.key, out)
        return out


class TaylorProbe:
    """Per step: each forecast module's outputs (cond rows), and the forecasts for a measurement."""

    def __init__(self, transformer: torch.nn.Module, adapter: BlockStackAdapter, k_max: int, span: int = 1) -> None:
        """`span`: the forecast's second point lies at r − span (1, as the store measures; more in
        `benchmarks/forecast_span.py`, which asks what the previous *computed* step changes)."""
        self.transformer, self.adapter = transformer, adapter
        self.span = int(span)
        self.mode = "idle"
        self.index: torch.Tensor | None = None
        self.current: dict[int, list[Any]] = {}
        self.window: deque[tuple[int, dict[int, list[Any]]]] = deque(maxlen=k_max + self.span)
        self.pending: dict[int, list[Any]] = {}
        self.modules: list[torch.nn.Module] = []
        for block in adapter.blocks(transformer):
            for name in adapter.forecast_module_names(block):
                module = getattr(block, name)
                HookRegistry.check_if_exists_or_initialize(module).register_hook(
                    _ModuleProbe(self, len(self.modules)), PROBE_TAYLOR_HOOK)
                self.modules.append(module)
        HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()

    @property
    def active(self) -> bool:
        return bool(self.modules)

    def remove(self) -> None:
        for module in self.modules:
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None and PROBE_TAYLOR_HOOK in registry.hooks:
                registry.remove_hook(PROBE_TAYLOR_HOOK, recurse=False)
        HookRegistry.check_if_exists_or_initialize(self.transformer).invalidate_child_registries_cache()
        self.modules = []

    def reset(self) -> None:
        """A new trajectory: forget every kept output."""
        self.window.clear()
        self.current, self.pending = {}, {}

    # --- record -------------------------------------------------------------------------------
    def start_record(self, index: torch.Tensor | None) -> None:
        self.mode, self.index, self.current = "record", index, {}

    def keep(self, key: int, out: Any) -> None:
        parts = _tensors(out)
        if self.index is not None:
            parts = tuple(p.index_select(0, self.index.to(p.device)) for p in parts)
        self.current.setdefault(key, []).append(_like(out, tuple(p.detach() for p in parts)))

    def end_record(self) -> None:
        self.mode, self.index = "idle", None

    def commit(self, step: int) -> None:
        """The recorded outputs belong to computed `step` (after its measurement used the window)."""
        self.window.append((step, self.current))
        self.current = {}

    # --- measure ------------------------------------------------------------------------------
    def lags(self, step: int, k_max: int) -> list[int]:
        """The computed steps r (newest first) that a skip at `step` could have last computed at."""
        return [r for r, _ in reversed(self.window) if 1 <= step - r <= k_max]

    def start_measure(self, step: int, refs: list[int]) -> None:
        """Forecasts at `step` from each r in `refs`, stacked along the batch in that order."""
        seen = dict(self.window)
        self.pending = {}
        for key in range(len(self.modules)):
            calls = len(seen[refs[0]].get(key, []))
            stacked = []
            for c in range(calls):
                per_ref = [self._forecast_one(seen, r, step, key, c, self.span) for r in refs]
                stacked.append(tuple(torch.cat(ps) for ps in zip(*per_ref)))
            self.pending[key] = stacked
        self.mode = "measure"
        self._calls = {key: 0 for key in self.pending}
        self._shape = {key: seen[refs[0]][key] for key in self.pending}

    @staticmethod
    def _forecast_one(seen: dict, r: int, step: int, key: int, call: int, span: int = 1) -> tuple[torch.Tensor, ...]:
        now = _tensors(seen[r][key][call])
        if r - span not in seen:  # the row's first computed step: F(r) as it is (the runtime's order 0)
            return now
        before = _tensors(seen[r - span][key][call])
        w = float(step - r) / span  # step units: (i − r)/(r − r'), r' = r − span
        return tuple((a.float() + w * (a.float() - b.float())).to(a.dtype) for a, b in zip(now, before))

    def forecast(self, key: int) -> Any:
        c = self._calls[key]
        self._calls[key] = c + 1
        return _like(self._shape[key][c], self.pending[key][c])

    def end_measure(self) -> None:
        self.mode, self.pending = "idle", {}
