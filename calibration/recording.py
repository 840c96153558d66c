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
- `reuse_errors` at step i+k for k = 1..K and every reuse mode (`calibration.recorder.REUSE_MODES`):
  the same bypassed forward with what that mode reuses from step i — "none" R_i (the
  `cache_errors.residual_error` again), "linear" R_i + w·(R_i − R_{i−1}) — against f_{i+k}.
- `steps.residual_change`: ‖R_i − R_{i−1}‖, what a forecasting runtime knows at no cost.
- `latents`: x_i as a float16 array under `value` (and x_N through `rec.finish(final_latents)`).

Norms are RMS per row (`sencache.norms`); a zero denominator gives None, never inf/NaN. Rows
carry `call` (the pipeline call within this recording) and `sample` (the row of the batch).
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from calibration.recorder import ESTIMATORS, ReferenceLatents, Sink, _Recorder
from sencache.adapters import adapter_for
from calibration.taylor_probe import TaylorProbe
from sencache.stack import install_stack, remove_stack

__all__ = ["ESTIMATORS", "RECORD_HOOK", "Recording", "ReferenceLatents", "Sink", "TableSink", "recording"]

RECORD_HOOK = "sencache_record"
PROBE_HOOK = "sencache_record_probe"


@dataclass
class TableSink:
    """Keeps rows in memory per table; `frame(table)` gives a DataFrame."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, table: str, row: dict[str, Any]) -> None:
        self.rows[table].append(row)

    def frame(self, table: str) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows.get(table, []))


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
    recorder.taylor = TaylorProbe(transformer, adapter, k_max)
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
        recorder.taylor.remove()
        remove_stack(transformer, adapter)
        recorder.hooks.reset()
