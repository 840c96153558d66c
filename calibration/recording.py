"""`with recording(pipe, sink) as rec: pipe(...)`: observe a full-compute trajectory.

Hooks registered on enter, removed on exit (quanto's `Calibration()` pattern): the block-stack
head/pass hooks of `sencache.stack` driven by a recording controller, a model-level hook that sees
every forward's latent x and timestep t, and two probe hooks on blocks 0 and 1 for the peers'
signals. The pipeline's own forwards run unchanged (full compute); the extra forwards the
measurements need run from inside the model hook on the *conditional branch* only (Wan's "cond"
call; the second half of a batched `cond_uncond` call; the whole batch without CFG), so a
recorded call returns exactly what an unrecorded one does.

Per step i and sample b it sends rows to `sink.add(table, row)`:

- `steps`: t_i, t_{i+1}, ‖x_{i+1} − x_i‖, ‖x_i‖, ‖f_i‖ and the peer signals (`calibration.signals`).
- `sensitivities`, estimator "trajectory": with g_i = f(x_i, t_{i+1}) (one extra forward),
  J_t = ‖g_i − f_i‖/|t_{i+1} − t_i| and J_x = ‖f_{i+1} − g_i‖/‖x_{i+1} − x_i‖.
  Estimator "reference" (the paper's): from a clean latent z0 noised to x_t at t_i, one solver
  step to x_next, J_x = ‖f(x_next,t_i) − f(x_t,t_i)‖/‖x_next − x_t‖, J_t = ‖f(x_t,t_{i+1}) − f(x_t,t_i)‖/|t_{i+1} − t_i|.
- `cache_errors` at step i+k for k = 1..K: ‖f_{i+k} − f̃‖ where f̃ is a forward at
  (x_{i+k}, t_{i+k}) with the blocks bypassed by `input + R_i` (embeddings and head only: cheap),
  and the plain output-reuse error ‖f_{i+k} − f_i‖.
- `latents`: x_i as a float16 array under `value` (and x_N through `rec.finish(final_latents)`).

Norms are RMS per row (`sencache.norms`); a zero denominator gives None, never inf/NaN. Rows
carry `call` (the pipeline call within this recording) and `sample` (the row of the batch).
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from calibration.signals import modulated_input, ratio, relative_l1
from policies.errors import InputError
from sencache.adapters import BlockStackAdapter, adapter_for
from sencache.norms import rms, rms_diff
from sencache.stack import DEFAULT_CONTEXT, StackHooks, install_stack, remove_stack

__all__ = ["ESTIMATORS", "RECORD_HOOK", "Recording", "ReferenceLatents", "Sink", "TableSink", "recording"]

logger = logging.getLogger(__name__)

RECORD_HOOK = "sencache_record"
PROBE_HOOK = "sencache_record_probe"
ESTIMATORS = ("trajectory", "reference")


class Sink(Protocol):
    def add(self, table: str, row: dict[str, Any]) -> None: ...


@dataclass
class TableSink:
    """Keeps rows in memory per table; `frame(table)` gives a DataFrame."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, table: str, row: dict[str, Any]) -> None:
        self.rows[table].append(row)

    def frame(self, table: str) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows.get(table, []))


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
        self._reset_trajectory()

    def _reset_trajectory(self) -> None:
        self.window: deque[_Seen] = deque(maxlen=self.k_max)
        self.pending_g: torch.Tensor | None = None
        self.prev_signals: dict[str, torch.Tensor] = {}
        self.step_rows: dict[tuple[int, int], dict[str, Any]] = {}
        self.last_x: tuple[int, torch.Tensor] | None = None

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
        cfg = getattr(self.pipe, "do_classifier_free_guidance", None)
        if cfg is None:  # CogVideoX keeps only the scale
            cfg = float(getattr(self.pipe, "_guidance_scale", 1.0) or 1.0) > 1.0
        if not cfg or batch % 2:
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
        try:
            out = fn(*args, **kwargs)
        finally:
            self.probing = False
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
        for b in range(rows):
            self.step_rows[(step, b)] = {
                "call": self.call, "sample": b, "step": step, "timestep": t, "t_next": t_next, "dx_norm": None,
                "x_norm": float(rms(x)[b]), "out_norm": float(rms(f)[b]),
                **{k: v[b] for k, v in signals.items()},
            }
            if self.keep_latents:
                self._latent(step, b, x[b])

        # measured caching errors: reuse R_i (i = step − k) at this step, and reuse f_i; and
        # g = f(x_i, t_{i+1}) for the trajectory estimator: all in one batched forward
        reused = [seen for seen in self.window if 1 <= step - seen.step <= self.k_max]
        g_t = _at_timestep(t_sub, t_next) if t_next is not None and self.estimator == "trajectory" else None
        g, bypassed = self._extras(fn, sub, context, x, t_sub, g_t, [seen.residual for seen in reused])
        for seen, out_k in zip(reused, bypassed):
            res_err, out_err, dx = rms_diff(f, out_k), rms_diff(f, seen.f), rms_diff(x, seen.x)
            for b in range(rows):
                self._emit("cache_errors", seen.step, b, lag=step - seen.step, dx=float(dx[b]), dt=abs(t - seen.t),
                           residual_error=float(res_err[b]), output_error=float(out_err[b]))
        self.pending_g = g
        if t_next is not None and self.estimator == "reference":
            self._reference(fn, sub, context, step, t_sub, t, t_next, x)
        self.window.append(_Seen(step, t, x, f, residual))

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
            m = modulated_input(self.adapter.blocks(self.transformer)[0], block0)
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


class _ContextState(BaseState):
    def reset(self) -> None:
        pass


class _RecordHook(ModelHook):
    """Model-level hook: every forward of the transformer goes through `_Recorder.forward`."""

    _is_stateful = True

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder
        self.state = StateManager(_ContextState)  # so that `cache_context(...)` reaches us

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.recorder.forward(module, self.fn_ref.original_forward, self.state._context, args, kwargs)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module


class _ProbeHook(ModelHook):
    """On blocks 0 and 1: keeps block 0's arguments and block 1's input during a recorded forward."""

    def __init__(self, recorder: _Recorder, which: str) -> None:
        super().__init__()
        self.recorder, self.which = recorder, which
        self.signature: inspect.Signature | None = None

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        rec = self.recorder
        if rec.probing and not rec.busy:
            if self.signature is None:
                self.signature = inspect.signature(type(module).forward)
            named = self.signature.bind(module, *args, **kwargs).arguments
            if self.which == "block0":
                rec.probe["block0"] = {k: v for k, v in named.items() if k != "self"}
            else:
                rec.probe["block1_hidden"] = named["hidden_states"]
        return args, kwargs


@dataclass
class Recording:
    """What `recording(...)` yields: call `finish(final_latents)` after each pipeline call."""

    recorder: _Recorder

    @property
    def sink(self) -> Sink:
        return self.recorder.sink

    @property
    def stack_rows(self) -> int:
        """Rows that went through the block stack so far (all forwards, extra ones included)."""
        return self.recorder.stack_rows

    def finish(self, final_latents: torch.Tensor | None = None) -> None:
        self.recorder.finish(final_latents)


@contextmanager
def recording(pipe: Any, sink: Sink, *, k_max: int = 4, estimator: str = "trajectory", latents: bool = True,
              reference: ReferenceLatents | None = None) -> Iterator[Recording]:
    """Record full-compute trajectories of `pipe` into `sink` while inside the block.

    Args:
        pipe: a diffusers Wan, CogVideoX or LTX pipeline (its `transformer` is hooked).
        sink: anything with `add(table, row)`; `TableSink()` keeps rows in memory.
        k_max (`int`, defaults to 4): largest lag k at which caching errors are measured; each
            lag costs one bypassed forward per step (embeddings and head only).
        estimator (`str`): "trajectory" (one extra forward per step) or "reference" (three extra
            forwards per step from `reference`'s clean latents; the paper's estimator).
        latents (`bool`): also send x_i as float16 bytes to the `latents` table.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if k_max < 1:
        raise ValueError(f"k_max must be >= 1, got {k_max}")
    transformer = pipe.transformer
    adapter = adapter_for(transformer)
    recorder = _Recorder(pipe, transformer, adapter, sink, k_max, estimator, latents, reference)
    recorder.hooks = install_stack(transformer, adapter, recorder)
    blocks = adapter.blocks(transformer)
    probes = [(blocks[0], _ProbeHook(recorder, "block0"))]
    if len(blocks) > 1:
        probes.append((blocks[1], _ProbeHook(recorder, "block1")))
    try:
        for block, hook in probes:
            HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, PROBE_HOOK)
        HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_RecordHook(recorder), RECORD_HOOK)
        yield Recording(recorder)
        recorder.finish(None)
    finally:
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        if RECORD_HOOK in registry.hooks:
            registry.remove_hook(RECORD_HOOK, recurse=False)
        for block, _ in probes:
            block_registry = getattr(block, "_diffusers_hook", None)
            if block_registry is not None and PROBE_HOOK in block_registry.hooks:
                block_registry.remove_hook(PROBE_HOOK, recurse=False)
        remove_stack(transformer, adapter)
        recorder.hooks.reset()
