"""The recorder behind `calibration.recording.recording`: what it measures at each forward.

`_Recorder` is the state of one recording and the `StackController` of the installed block
stack. The model hook hands it every forward of the transformer; on the conditional branch it
lets the real forward run untouched, then measures (see `calibration.recording` for the rows):
one batched extra forward per step whose rows are [g; bypass rows], where the g rows run the
blocks at (x_i, t_{i+1}) and the bypass rows take `input + R̃` at (x_i, t_i): one per lag k and
reuse mode, R̃ being what that mode would reuse from the computed step i − k.

The reuse modes are `REUSE_MODES`, one measurement function each: given the computed step r
(`_Seen`), the computed step before it and the timestep t of the step being skipped, it returns
the residual the runtime would add (or None when the mode cannot be measured this way). A mode
whose reuse is "input + a residual built from what the cache holds" (a forecast of any order)
is added by adding its function; its errors land in `reuse_errors` under its name, no schema
change. A mode that forecasts inside the blocks (per attention / feed-forward output) needs its
own forward instead of a bypass row and is measured outside this table of functions.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from calibration.signals import modulated_input, ratio, relative_l1
from policies.errors import InputError
from sencache.adapters import BlockStackAdapter
from sencache.norms import rms, rms_diff
from sencache.stack import DEFAULT_CONTEXT, StackHooks
from calibration.taylor_probe import TaylorProbe

__all__ = ["ESTIMATORS", "REUSE_MODES", "ReferenceLatents", "Sink"]

logger = logging.getLogger(__name__)

ESTIMATORS = ("trajectory", "reference")


class Sink(Protocol):
    def add(self, table: str, row: dict[str, Any]) -> None: ...


@dataclass
class ReferenceLatents:
    """Clean latents z0 [rows, ...] in the transformer's layout and the noise that makes x_t."""

    clean: torch.Tensor
    noise: torch.Tensor


@dataclass
class _Seen:
    step: int
    t: float
    x: torch.Tensor
    f: torch.Tensor
    residual: tuple[torch.Tensor, ...]


def _reuse_plain(seen: _Seen, before: _Seen | None, t: float) -> tuple[torch.Tensor, ...]:
    """Mode "none": the residual R_r as it is (the paper's reuse)."""
    return seen.residual


def _reuse_linear(seen: _Seen, before: _Seen | None, t: float) -> tuple[torch.Tensor, ...]:
    """Mode "linear": ``R_r + w·(R_r − R_r')``, ``w = (t − t_r)/(t_r − t_r')`` in timestep units, as
    `sencache.runtime.forecast_weights` and `sencache.stack._reuse` do; R_r as it is when r is the
    first computed step (w = 0 there, as in the runtime)."""
    if before is None or abs(seen.t - before.t) <= 1e-12:
        return seen.residual
    w = (t - seen.t) / (seen.t - before.t)
    return tuple(r + w * (r - p) for r, p in zip(seen.residual, before.residual))


#: reuse mode → measurement function (see the module docstring); keys are `policies` FORECASTS
REUSE_MODES: dict[str, Any] = {"none": _reuse_plain, "linear": _reuse_linear}


def _output(out: Any) -> torch.Tensor:
    if isinstance(out, tuple):
        return out[0]
    return out.sample if hasattr(out, "sample") else out


def _take(named: dict[str, Any], index: torch.Tensor | None, batch: int) -> dict[str, Any]:
    """The call's arguments restricted to rows `index` (tensors whose first dim is the batch)."""
    if index is None:
        return dict(named)
    return {
        k: v.index_select(0, index.to(v.device)) if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == batch else v
        for k, v in named.items()
    }


def _at_timestep(t: Any, value: float) -> Any:
    if not isinstance(t, torch.Tensor):
        return type(t)(value) if isinstance(t, (int, float)) else value
    first = t.flatten()[0]
    if bool((t == first).all()) or float(first) == 0.0:
        return torch.full_like(t, value)
    return (t.double() * (value / float(first))).to(t.dtype)  # per-token timesteps (Wan 2.2 ti2v)


class _Recorder:
    """The state of one recording; also the `StackController` of the installed stack."""

    def __init__(self, pipe: Any, transformer: torch.nn.Module, adapter: BlockStackAdapter, sink: Sink,
                 k_max: int, estimator: str, latents: bool, reference: ReferenceLatents | None) -> None:
        self.pipe, self.transformer, self.adapter, self.sink = pipe, transformer, adapter, sink
        self.k_max, self.estimator, self.keep_latents, self.reference = k_max, estimator, latents, reference
        self.hooks: StackHooks | None = None
        self.signature = inspect.signature(type(transformer).forward)
        self.mask: torch.Tensor | None = None
        self.busy = False
        self.probing = False
        self.probe: dict[str, Any] = {}
        self.stack_rows = 0
        self.call = -1
        self.last_step = 10**9
        self.taylor: TaylorProbe | None = None  # set by `recording` (hooks on the forecast modules)
        self._reset_trajectory()

    def _reset_trajectory(self) -> None:
        # k_max + 1: a forecast from step i − k_max also needs the computed step before it
        self.window: deque[_Seen] = deque(maxlen=self.k_max + 1)
        self.pending_g: torch.Tensor | None = None
        self.prev_signals: dict[str, torch.Tensor] = {}
        self.step_rows: dict[tuple[int, int], dict[str, Any]] = {}
        self.last_x: tuple[int, torch.Tensor] | None = None
        if getattr(self, "taylor", None) is not None:
            self.taylor.reset()

    # --- StackController ----------------------------------------------------------------------
    def compute_mask(self, context: str, batch: int) -> torch.Tensor | None:
        return self.mask if self.mask is not None and self.mask.shape[0] == batch else None

    def stack_ran(self, context: str, rows: int, batch: int) -> None:
        self.stack_rows += rows

    # --- helpers ------------------------------------------------------------------------------
    def schedule(self) -> np.ndarray:
        return np.asarray(torch.as_tensor(self.pipe.scheduler.timesteps).detach().double().cpu())

    def _cond_rows(self, context: str, batch: int) -> torch.Tensor | None:
        if context != "cond_uncond":
            return None
        if not self.adapter.batched_cfg(self.pipe) or batch % 2:
            return None
        return torch.arange(batch // 2, batch)  # diffusers batches [uncond; cond]

    def _forward(self, fn: Any, named: dict[str, Any], context: str, x: torch.Tensor, t: Any,
                 bypass: tuple[torch.Tensor, ...] | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """One extra forward at (x, t); rows outside `mask` (default: all, when `bypass` is given)
        take `input + bypass` instead of running the blocks."""
        saved = self.hooks.residual(context)
        call = dict(named)
        call[self.adapter.latent_arg] = x.to(named[self.adapter.latent_arg].dtype)
        call[self.adapter.timestep_arg] = t
        if "return_dict" in self.signature.parameters:
            call["return_dict"] = False
        try:
            if bypass is not None:
                self.hooks.set_residual(context, bypass)
                self.mask = mask if mask is not None else torch.zeros(x.shape[0], dtype=torch.bool)
            return _output(fn(**call)).float()
        finally:
            self.mask = None
            self.hooks.set_residual(context, saved)

    def _extras(self, fn: Any, named: dict[str, Any], context: str, x: torch.Tensor, t: Any, g_t: Any,
                residuals: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """g = f(x, g_t) with the blocks computed (if `g_t`), and f(x, t) with the blocks bypassed
        by each of `residuals`, as one forward whose rows are [g; bypass_1; ...; bypass_L]: the
        head hook runs the blocks on the g rows only (a sub-batch) and gives the others input + R."""
        rows = x.shape[0]
        parts = (1 if g_t is not None else 0) + len(residuals)
        if parts == 0:
            return None, []
        batched = isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[0] == rows
        if not batched or parts == 1:  # a scalar timestep cannot differ per row: one forward each
            g = self._forward(fn, named, context, x, g_t) if g_t is not None else None
            return g, [self._forward(fn, named, context, x, t, bypass=r) for r in residuals]
        call = {k: torch.cat([v] * parts) if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == rows else v
                for k, v in named.items()}
        times = ([g_t] if g_t is not None else []) + [t] * len(residuals)
        stacked = tuple(
            torch.cat(([torch.zeros_like(residuals[0][s])] if g_t is not None else []) + [r[s] for r in residuals])
            for s in range(len(residuals[0]))
        ) if residuals else None
        mask = torch.zeros(rows * parts, dtype=torch.bool)
        if g_t is not None:
            mask[:rows] = True
        out = self._forward(fn, call, context, torch.cat([x] * parts), torch.cat(times), bypass=stacked, mask=mask)
        chunks = list(out.split(rows))
        return (chunks.pop(0) if g_t is not None else None), chunks

    # --- the model hook's work ----------------------------------------------------------------
    def forward(self, module: torch.nn.Module, fn: Any, state_context: Any, args: tuple, kwargs: dict) -> Any:
        context = state_context.name if state_context is not None else DEFAULT_CONTEXT
        if self.busy or context == "uncond":
            return fn(*args, **kwargs)
        named = dict(self.signature.bind(module, *args, **kwargs).arguments)
        named.pop(next(iter(self.signature.parameters)))  # self
        x_all, t_all = named[self.adapter.latent_arg], named[self.adapter.timestep_arg]
        batch = x_all.shape[0]
        schedule = self.schedule()
        step = getattr(state_context, "step_index", None)
        t_row = float(torch.as_tensor(t_all).detach().double().flatten()[0])
        if step is None:
            step = int(np.abs(schedule - t_row).argmin())
        if step <= self.last_step:
            self._start_call()
        self.last_step = step
        self.probing, self.probe = True, {}
        if self.taylor is not None:
            self.taylor.start_record(self._cond_rows(context, batch))
        try:
            out = fn(*args, **kwargs)
        finally:
            self.probing = False
            if self.taylor is not None:
                self.taylor.end_record()
        self.busy = True
        try:
            self._measure(fn, named, context, batch, step, t_row, schedule, out)
        finally:
            self.busy = False
        return out

    def _start_call(self) -> None:
        self.finish(None)
        self.call += 1
        self._reset_trajectory()

    def _measure(self, fn: Any, named: dict[str, Any], context: str, batch: int, step: int, t: float,
                 schedule: np.ndarray, out: Any) -> None:
        index = self._cond_rows(context, batch)
        pick = (lambda v: v) if index is None else (lambda v: v.index_select(0, index.to(v.device)))
        sub = _take(named, index, batch)
        x = pick(named[self.adapter.latent_arg]).float()
        t_sub = sub[self.adapter.timestep_arg]
        f = pick(_output(out)).float()
        residual = tuple(pick(r) for r in self.hooks.residual(context))
        rows = x.shape[0]
        t_next = float(schedule[step + 1]) if step + 1 < len(schedule) else None

        # steps row of step i−1 gets its ‖x_i − x_{i−1}‖; the trajectory J of step i−1 completes
        prev = self.window[-1] if self.window else None
        if prev is not None and prev.step == step - 1:
            dx = rms_diff(x, prev.x)
            for b, v in enumerate(dx.tolist()):
                self.step_rows[(prev.step, b)]["dx_norm"] = v
            if self.pending_g is not None:
                j_t = ratio(rms_diff(self.pending_g, prev.f), torch.full((rows,), abs(t - prev.t), dtype=torch.float64))
                j_x = ratio(rms_diff(f, self.pending_g), dx)
                for b in range(rows):
                    self._emit("sensitivities", prev.step, b, estimator="trajectory", J_x=j_x[b], J_t=j_t[b])
        self.pending_g = None

        signals = self._signals(index, residual)
        change = [None] * rows
        if prev is not None and prev.step == step - 1 and prev.residual[0].shape == residual[0].shape:
            change = rms_diff(residual[0].float(), prev.residual[0].float()).tolist()
        for b in range(rows):
            self.step_rows[(step, b)] = {
                "call": self.call, "sample": b, "step": step, "timestep": t, "t_next": t_next, "dx_norm": None,
                "x_norm": float(rms(x)[b]), "out_norm": float(rms(f)[b]), "residual_change": change[b],
                **{k: v[b] for k, v in signals.items()},
            }
            if self.keep_latents:
                self._latent(step, b, x[b])

        # measured caching errors: reuse R_i (i = step − k) at this step, and reuse f_i; and
        # g = f(x_i, t_{i+1}) for the trajectory estimator: all in one batched forward
        reused = [seen for seen in self.window if 1 <= step - seen.step <= self.k_max]
        g_t = _at_timestep(t_sub, t_next) if t_next is not None and self.estimator == "trajectory" else None
        before = {seen.step: seen for seen in self.window}
        bypass: list[tuple[str, _Seen, tuple[torch.Tensor, ...]]] = []
        for mode, measure in REUSE_MODES.items():
            for seen in reused:
                residual_k = measure(seen, before.get(seen.step - 1), t)
                if residual_k is not None:
                    bypass.append((mode, seen, residual_k))
        g, bypassed = self._extras(fn, sub, context, x, t_sub, g_t, [r for _, _, r in bypass])
        for (mode, seen, _), out_k in zip(bypass, bypassed):
            err = rms_diff(f, out_k)
            for b in range(rows):
                self._emit("reuse_errors", seen.step, b, lag=step - seen.step, mode=mode, error=float(err[b]))
            if mode != "none":
                continue
            out_err, dx = rms_diff(f, seen.f), rms_diff(x, seen.x)
            for b in range(rows):
                self._emit("cache_errors", seen.step, b, lag=step - seen.step, dx=float(dx[b]), dt=abs(t - seen.t),
                           residual_error=float(err[b]), output_error=float(out_err[b]))
        self.pending_g = g
        self._taylor(fn, sub, context, step, x, t_sub, f)
        if t_next is not None and self.estimator == "reference":
            self._reference(fn, sub, context, step, t_sub, t, t_next, x)
        self.window.append(_Seen(step, t, x, f, residual))

    def _taylor(self, fn: Any, sub: dict[str, Any], context: str, step: int, x: torch.Tensor, t_sub: Any,
                f: torch.Tensor) -> None:
        """Mode "taylor": f(x_i, t_i) with the forecast modules returning their order-1 step-unit
        forecast from r and r − 1 (`calibration.taylor_probe`), one stacked copy of the rows per
        lag k = i − r: one forward per step for all lags."""
        probe = self.taylor
        if probe is None or not probe.active:
            return
        refs = probe.lags(step, self.k_max)
        if refs:
            rows, parts = x.shape[0], len(refs)
            call = {k: torch.cat([v] * parts) if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == rows else v
                    for k, v in sub.items()}
            t_all = torch.cat([t_sub] * parts) if isinstance(t_sub, torch.Tensor) and t_sub.ndim and t_sub.shape[0] == rows else t_sub
            probe.start_measure(step, refs)
            try:
                out = self._forward(fn, call, context, torch.cat([x] * parts), t_all)
            finally:
                probe.end_measure()
            for r, out_k in zip(refs, out.split(rows)):
                err = rms_diff(f, out_k)
                for b in range(rows):
                    self._emit("reuse_errors", r, b, lag=step - r, mode="taylor", error=float(err[b]))
        probe.commit(step)

    def _reference(self, fn: Any, sub: dict[str, Any], context: str, step: int, t_sub: Any, t: float,
                   t_next: float, x: torch.Tensor) -> None:
        ref = self.reference
        if ref is None:
            raise ValueError("estimator 'reference' needs clean latents: recording(..., reference=ReferenceLatents(...))")
        if tuple(ref.clean.shape[1:]) != tuple(x.shape[1:]):
            raise InputError(
                f"--estimator reference: the clean clip's latent {tuple(ref.clean.shape[1:])} does not match the "
                f"model's latent {tuple(x.shape[1:])}; call the model at the zoo's clip size, or use --estimator trajectory"
            )
        if ref.clean.shape[0] != x.shape[0]:
            ref = ReferenceLatents(ref.clean[:1].expand_as(x), ref.noise[:1].expand_as(x))
        scheduler = self.pipe.scheduler
        t_tensor = torch.as_tensor(scheduler.timesteps[step])
        if hasattr(scheduler, "sigmas") and not hasattr(scheduler, "alphas_cumprod"):  # flow matching
            sigma = float(scheduler.sigmas[step])
            x_t = (1.0 - sigma) * ref.clean + sigma * ref.noise
        else:
            x_t = scheduler.add_noise(ref.clean, ref.noise, t_tensor.reshape(1).long())
        x_t = x_t.float()
        f_t = self._forward(fn, sub, context, x_t, t_sub)
        x_next = copy.deepcopy(scheduler).step(f_t, t_tensor, x_t, return_dict=False)[0].float()
        f_next_x = self._forward(fn, sub, context, x_next, t_sub)
        f_next_t = self._forward(fn, sub, context, x_t, _at_timestep(t_sub, t_next))
        j_x = ratio(rms_diff(f_next_x, f_t), rms_diff(x_next, x_t))
        j_t = ratio(rms_diff(f_next_t, f_t), torch.full((x_t.shape[0],), abs(t_next - t), dtype=torch.float64))
        for b in range(x_t.shape[0]):
            self._emit("sensitivities", step, b, estimator="reference", J_x=j_x[b], J_t=j_t[b])

    def _signals(self, index: torch.Tensor | None, residual: tuple[torch.Tensor, ...]) -> dict[str, list]:
        pick = (lambda v: v) if index is None else (lambda v: v.index_select(0, index.to(v.device)))
        rows = residual[0].shape[0]
        now: dict[str, torch.Tensor] = {"mag": residual[0]}
        block0 = self.probe.get("block0")
        if block0 is not None:
            m = modulated_input(self.adapter, self.adapter.blocks(self.transformer)[0], block0)
            if m is not None:
                now["tea"] = pick(m)
            after0 = self.probe.get("block1_hidden")
            if after0 is not None:
                now["fb"] = pick(after0 - block0["hidden_states"])
        if "fb" not in now and len(self.adapter.blocks(self.transformer)) == 1:
            now["fb"] = residual[0]
        prev = self.prev_signals
        out: dict[str, list] = {
            "teacache_signal": relative_l1(now["tea"], prev["tea"]) if "tea" in now and "tea" in prev else [None] * rows,
            "first_block_change": relative_l1(now["fb"], prev["fb"]) if "fb" in now and "fb" in prev else [None] * rows,
            "mag_ratio": ratio(rms(now["mag"]), rms(prev["mag"])) if "mag" in prev else [None] * rows,
        }
        self.prev_signals = now
        return out

    def _emit(self, table: str, step: int, sample: int, **values: Any) -> None:
        self.sink.add(table, {"call": self.call, "sample": sample, "step": step, **values})

    def _latent(self, step: int, sample: int, x: torch.Tensor) -> None:
        self._emit("latents", step, sample, value=x.detach().to(torch.float16).cpu().numpy())

    def finish(self, final: torch.Tensor | None) -> None:
        """Close the current trajectory: the last step's ‖x_N − x_{N−1}‖ and x_N from `final`."""
        if not self.step_rows:
            return
        if final is not None and self.window:
            last = self.window[-1]
            final = final.detach().float()
            if final.shape == last.x.shape:
                dx = rms_diff(final, last.x)
                for b in range(final.shape[0]):
                    self.step_rows[(last.step, b)]["dx_norm"] = float(dx[b])
                    if self.keep_latents:
                        self._latent(last.step + 1, b, final[b])
            else:
                logger.warning("final latents %s do not match the transformer's %s: no x_N recorded",
                               tuple(final.shape), tuple(last.x.shape))
        for key in sorted(self.step_rows):
            self.sink.add("steps", self.step_rows[key])
        self.step_rows = {}
