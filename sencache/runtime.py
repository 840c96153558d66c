"""The per-call state machine: which step we are at, each sample's reference, the decisions.

One `_Runtime` per applied transformer. A model-level hook hands it every forward's latent and
timestep (`begin_forward`); the stack's head hook then asks it which rows compute
(`compute_mask`). A step's decision is taken by the first forward of that step and reused by
every other cache context of the same step (Wan calls cond and uncond separately), so all CFG
branches of a step always share it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from policies.errors import SenCacheError
from sencache.adapters import BlockStackAdapter
from sencache.report import RunReport
from sencache.rule import Decision, RuleParams, decide

__all__ = ["MODEL_HOOK"]

logger = logging.getLogger("sencache")

MODEL_HOOK = "sencache_model"


@dataclass
class _Trajectory:
    """State of one denoising trajectory (one pipeline call)."""

    num_steps: int
    timesteps: np.ndarray
    step: int = -1
    ref_x: torch.Tensor | None = None
    ref_t: torch.Tensor | None = None
    #: each row's timestep at the computed step before its last one (NaN: none yet)
    prev_t: torch.Tensor | None = None
    skips_in_row: torch.Tensor | None = None
    decisions: dict[int, Decision] = field(default_factory=dict)
    #: per step, the skipped rows' forecast weights (forecast "linear" only)
    weights: dict[int, torch.Tensor] = field(default_factory=dict)
    step_t: dict[int, float] = field(default_factory=dict)
    block_rows: dict[str, int] = field(default_factory=dict)
    samples_halved: bool = False


class _Runtime:
    """Owns the decisions of one transformer; implements `stack.StackController`."""

    def __init__(self, params: RuleParams, adapter: BlockStackAdapter, pipe: Any | None, point_name: str) -> None:
        self.params = params
        self.adapter = adapter
        self.pipe = pipe
        self.point_name = point_name
        self.schedule: np.ndarray | None = None
        self._schedule_source: Any = None
        self._schedule_array: np.ndarray | None = None
        self.trajectory: _Trajectory | None = None
        self.mask: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None
        #: forecast "taylor": the module forecast `apply` installed, and this call's row timesteps
        #: (see `row_timesteps`, `row_steps`)
        self.module_forecast: Any = None
        self.t_rows: torch.Tensor | None = None
        self.last_report: RunReport | None = None
        self.reset_residuals = lambda: None

    # --- the schedule -------------------------------------------------------------------------
    def _current_schedule(self) -> np.ndarray:
        if self.pipe is not None and getattr(self.pipe, "scheduler", None) is not None:
            ts = getattr(self.pipe.scheduler, "timesteps", None)
            if ts is not None and len(ts):
                if ts is not self._schedule_source:  # convert once per `set_timesteps`, not per call
                    self._schedule_source = ts
                    self._schedule_array = np.asarray(torch.as_tensor(ts).detach().float().cpu(), dtype=np.float64)
                return self._schedule_array
        if self.schedule is not None:
            return self.schedule
        raise SenCacheError(
            "SenCache needs the denoising schedule to place each step: apply it to the pipeline "
            "(sencache.apply(pipe, policy)), or call handle.set_timesteps(scheduler.timesteps) before denoising"
        )

    def _locate(self, t: torch.Tensor, context: Any) -> tuple[int, int, np.ndarray]:
        step = getattr(context, "step_index", None)
        total = getattr(context, "num_inference_steps", None)
        schedule = self._current_schedule()
        if step is not None and total:
            return int(step), int(total), schedule
        t0 = float(t.detach().flatten()[0])
        return int(np.abs(schedule - t0).argmin()), len(schedule), schedule

    # --- called by the model-level hook -------------------------------------------------------
    @torch.compiler.disable
    def begin_forward(self, x: torch.Tensor, t: torch.Tensor, context: Any) -> None:
        step, total, schedule = self._locate(t, context)
        traj = self.trajectory
        if traj is None or step < traj.step or total != traj.num_steps:
            traj = self._new_trajectory(total, schedule)
        if step == traj.step and step in traj.decisions and traj.decisions[step].compute.shape[0] == x.shape[0]:
            self.mask = traj.decisions[step].compute
            self.weights = traj.weights.get(step)
            return
        if step == traj.step and step in traj.decisions:
            self.mask = None  # another batch size in this step: compute every row, decide nothing
            self.weights = None
            self.t_rows = None
            return
        t_rows = t.detach().float().reshape(-1)
        if t_rows.numel() != x.shape[0]:
            t_rows = t_rows.reshape(x.shape[0], -1).mean(dim=1) if t_rows.numel() % x.shape[0] == 0 else t_rows[:1].expand(x.shape[0])
        decision = decide(self.params, step, total, x, t_rows, traj.ref_x, traj.ref_t, traj.skips_in_row)
        self.t_rows = t_rows
        compute = decision.compute
        if traj.ref_x is None or traj.ref_x.shape[0] != x.shape[0]:
            traj.ref_x, traj.ref_t = x.detach().clone(), t_rows.clone()
            traj.prev_t = torch.full_like(t_rows, float("nan"))
            traj.skips_in_row = torch.zeros(x.shape[0], dtype=torch.long)
        else:
            rows = compute.to(x.device)
            traj.ref_x = torch.where(rows.view(-1, *([1] * (x.ndim - 1))), x.detach(), traj.ref_x)
            traj.prev_t = torch.where(compute.to(t_rows.device), traj.ref_t, traj.prev_t)
            traj.ref_t = torch.where(compute.to(t_rows.device), t_rows, traj.ref_t)
            traj.skips_in_row = torch.where(compute, torch.zeros_like(traj.skips_in_row), traj.skips_in_row + 1)
        self.weights = None
        if self.forecasting and not bool(compute.all()):
            self.weights = traj.weights[step] = forecast_weights(t_rows, traj.ref_t, traj.prev_t, compute)
        traj.step = step
        traj.decisions[step] = decision
        traj.step_t[step] = float(t_rows[0])
        traj.samples_halved = traj.samples_halved or self._batched_cfg(context)
        self.mask = compute
        if step == total - 1:
            self._finish()

    def _batched_cfg(self, context: Any) -> bool:
        if getattr(context, "name", None) != "cond_uncond" or self.pipe is None:
            return False
        return self.adapter.batched_cfg(self.pipe)

    def _new_trajectory(self, total: int, schedule: np.ndarray) -> _Trajectory:
        self.reset_residuals()
        self.trajectory = _Trajectory(num_steps=total, timesteps=schedule)
        return self.trajectory

    # --- StackController ----------------------------------------------------------------------
    def compute_mask(self, context: str, batch: int) -> torch.Tensor | None:
        mask = self.mask
        if mask is None or mask.shape[0] != batch:
            return None
        return mask

    @property
    def forecasting(self) -> bool:
        """Whether skipped rows extrapolate their residual (the stack then keeps the previous one)."""
        return self.params.forecast == "linear"

    def row_timesteps(self, context: str, batch: int) -> torch.Tensor | None:
        """Each row's timestep in this call (forecast "taylor"); None when no decision was taken."""
        t = self.t_rows
        if t is None or self.mask is None or t.shape[0] != batch:
            return None
        return t

    def row_steps(self, context: str, batch: int) -> torch.Tensor | None:
        """Each row's step index in this call, as floats (forecast "taylor" in step units)."""
        if self.row_timesteps(context, batch) is None or self.trajectory is None:
            return None
        return torch.full((batch,), float(self.trajectory.step), dtype=torch.float64)

    def forecast_weights(self, context: str, batch: int) -> torch.Tensor | None:
        weights = self.weights
        if weights is None or self.mask is None or weights.shape[0] != batch:
            return None
        return weights

    def stack_ran(self, context: str, rows: int, batch: int) -> None:
        if self.trajectory is not None:
            self.trajectory.block_rows[context] = self.trajectory.block_rows.get(context, 0) + rows

    # --- the report ---------------------------------------------------------------------------
    def report(self) -> RunReport | None:
        if self.trajectory is None or not self.trajectory.decisions:
            return self.last_report
        return self._build_report(self.trajectory)

    def _finish(self) -> None:
        self.last_report = self._build_report(self.trajectory)
        logger.info(self.last_report.summary())

    def _build_report(self, traj: _Trajectory) -> RunReport:
        steps = sorted(traj.decisions)
        n = traj.num_steps
        rows = traj.decisions[steps[0]].compute.shape[0]
        samples = rows // 2 if traj.samples_halved and rows % 2 == 0 else rows
        computed = np.ones((samples, n), dtype=bool)
        scores = np.full((samples, n), np.nan)
        thresholds = np.full(n, np.nan)
        reasons = [["not run"] * n for _ in range(samples)]
        for i in steps:
            d = traj.decisions[i]
            if d.compute.shape[0] != rows:
                continue
            computed[:, i] = d.compute.numpy()[:samples]
            scores[:, i] = d.scores[:samples]
            thresholds[i] = d.threshold
            for b in range(samples):
                reasons[b][i] = d.reasons[b]
        timesteps = np.array([traj.step_t.get(i, np.nan) for i in range(n)])
        return RunReport(computed, scores, thresholds, reasons, timesteps, dict(traj.block_rows), self.point_name)


def forecast_weights(t: torch.Tensor, ref_t: torch.Tensor, prev_t: torch.Tensor, compute: torch.Tensor) -> torch.Tensor:
    """Per row, how far along the line through its last two computed residuals step t lies.

    ``w = (t − t_r) / (t_r − t_r')`` with ``t_r`` the row's last computed timestep and ``t_r'`` the
    one before: the skipped step reuses ``R_r + w·(R_r − R_r')``. Timesteps rather than step
    indices, because shifted schedules space their steps unevenly. 0 where a row has computed
    only once, where the two timesteps coincide, and on computing rows.
    """
    span = ref_t - prev_t
    ok = torch.isfinite(span) & (span.abs() > 1e-12) & ~compute.to(span.device)
    w = torch.where(ok, (t - ref_t) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(span))
    return w.float()


class _ContextState(BaseState):
    def reset(self) -> None:
        pass


class _ModelHook(ModelHook):
    """On the transformer: hands each forward's latent, timestep and cache context to the runtime."""

    _is_stateful = True

    def __init__(self, runtime: _Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.state = StateManager(_ContextState)  # only so that `cache_context(...)` reaches us

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        x, t = self.runtime.adapter.latent_and_timestep(module, args, kwargs)
        if not isinstance(t, torch.Tensor):
            t = torch.tensor([float(t)])
        self.runtime.begin_forward(x, t, self.state._context)
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module

