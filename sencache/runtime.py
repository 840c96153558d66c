"""The per-call state machine: which step we are at, each sample's reference, the decisions.

One `_Runtime` per cached transformer (Wan 2.2 A14B: one per expert). Two torch module hooks on
the transformer feed it: a forward pre-hook hands it every forward's latent and timestep
(`begin_forward`), and an always-called forward hook tells it when a forward raised (`abort`).
They are torch hooks, not `HookRegistry` hooks, on purpose: a `HookRegistry` hook lives in
`module.forward`, which `enable_model_cpu_offload` replaces at the end of every call (accelerate
restores the `forward` it saw when it was installed), so a model-level registry hook silently stops
running from the second call on. `_forward_pre_hooks` are run by `Module.__call__` whatever
`forward` is. The stack's head hook then asks for the rows that compute (`compute_mask`); a
decision is handed out once, so a head that runs without a fresh decision computes every row
rather than replaying a stale one.

The step is placed from the pipeline's cache context, the scheduler's counter, or the
per-row maximum timestep (`sencache.locate`). A step's decision is taken by the first forward of
that step and reused by every other cache context of the same step (Wan calls cond and uncond
separately), so all CFG branches of a step always share it.

Lifecycle: a new call starts a new trajectory (the scheduler's `timesteps` is a new tensor,
the step went back, the step count or the latent's shape changed), which drops every reference
and cached residual of the previous one, including a call that raised half-way. At the end of a
pipeline call (`maybe_free_model_hooks` resets stateful hooks) the report is kept and the
trajectory and residuals are freed; a forward that raises frees them at once.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from policies.errors import SenCacheError
from sencache.adapters import BlockStackAdapter
from sencache.locate import locate_step, row_timesteps
from sencache.report import RunReport
from sencache.residual_change import ResidualChange
from sencache.rule import Decision, RuleParams, decide

__all__ = ["CaptureHooks", "forecast_weights"]

logger = logging.getLogger("sencache")

#: scheduler classes a policy may say it was fitted under without naming one
_UNSPECIFIED = {"", "unspecified", "any"}


@dataclass
class _Trajectory:
    """State of one denoising trajectory (one pipeline call)."""

    num_steps: int
    timesteps: np.ndarray
    source: Any = None
    step: int = -1
    ref_x: torch.Tensor | None = None
    ref_t: torch.Tensor | None = None
    #: each row's timestep at the computed step before its last one (NaN: none yet)
    prev_t: torch.Tensor | None = None
    skips_in_row: torch.Tensor | None = None
    #: each row's last computed step (the residual-change term's gap is counted in steps)
    ref_step: torch.Tensor | None = None
    decisions: dict[int, Decision] = field(default_factory=dict)
    #: per step, the skipped rows' forecast weights (forecast "linear" only)
    weights: dict[int, torch.Tensor] = field(default_factory=dict)
    step_t: dict[int, float] = field(default_factory=dict)
    block_rows: dict[str, int] = field(default_factory=dict)
    samples_halved: bool = False


class _Runtime:
    """Owns the decisions of one transformer; implements `stack.StackController`."""

    def __init__(self, params: RuleParams, adapter: BlockStackAdapter, pipe: Any | None, point_name: str,
                 scheduler_class: str = "", warned: set[str] | None = None) -> None:
        self.params = params
        self.adapter = adapter
        self.pipe = pipe
        self.point_name = point_name
        self.scheduler_class = scheduler_class
        self.warned = warned if warned is not None else set()
        self.schedule: np.ndarray | None = None
        self._schedule_source: Any = None
        self._schedule_array: np.ndarray | None = None
        self.trajectory: _Trajectory | None = None
        self.mask: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None
        self._handed_weights: torch.Tensor | None = None
        #: forecast "taylor": the module forecast `apply` installed, and this step's row timesteps
        #: (handed out with the mask, as the weights are; see `row_timesteps`, `row_steps`)
        self.module_forecast: Any = None
        self.t_rows: torch.Tensor | None = None
        self._handed_t: torch.Tensor | None = None
        self.last_report: RunReport | None = None
        #: each row's residual change between its last two computed steps (the score's e term)
        self.residual_change = ResidualChange()
        self.reset_residuals: Callable[[], None] = lambda: None
        self.context: Callable[[], Any] = lambda: None

    # --- the schedule -------------------------------------------------------------------------
    def _scheduler(self) -> Any:
        return getattr(self.pipe, "scheduler", None) if self.pipe is not None else None

    def _current_schedule(self) -> tuple[np.ndarray, Any]:
        scheduler = self._scheduler()
        ts = getattr(scheduler, "timesteps", None) if scheduler is not None else None
        if ts is not None and len(ts):
            if ts is not self._schedule_source:  # convert once per `set_timesteps`, not per forward
                self._schedule_source = ts
                self._schedule_array = np.asarray(torch.as_tensor(ts).detach().float().cpu(), dtype=np.float64)
            return self._schedule_array, ts
        if self.schedule is not None:
            return self.schedule, None
        raise SenCacheError(
            "SenCache needs the denoising schedule to place each step: apply it to the pipeline "
            "(sencache.apply(pipe, policy)), or call handle.set_timesteps(scheduler.timesteps) before denoising"
        )

    # --- called by the capture hooks ----------------------------------------------------------
    @torch.compiler.disable
    def begin_forward(self, x: torch.Tensor, t: Any) -> None:
        if not isinstance(t, torch.Tensor):
            t = torch.tensor([float(t)])
        context = self.context()
        t_rows = row_timesteps(t, x.shape[0])
        schedule, source = self._current_schedule()
        step, total, _ = locate_step(t_rows, context, self._scheduler(), schedule)
        traj = self.trajectory
        if traj is None or self._is_new_call(traj, step, total, source, x):
            traj = self._new_trajectory(total, schedule, source)
        self._handed_weights = None
        if step == traj.step and step in traj.decisions and traj.decisions[step].compute.shape[0] == x.shape[0]:
            self.mask = traj.decisions[step].compute
            self.weights = traj.weights.get(step)
            self.t_rows = t_rows
            return
        if step == traj.step and step in traj.decisions:
            self.mask = None  # another batch size in this step: compute every row, decide nothing
            self.weights = self.t_rows = None
            return
        decision = decide(self.params, step, total, x, t_rows, traj.ref_x, traj.ref_t, traj.skips_in_row,
                          self._change(traj, step, x.shape[0]))
        compute = decision.compute
        if traj.ref_x is None or traj.ref_x.shape[0] != x.shape[0]:
            traj.ref_x, traj.ref_t = x.detach().clone(), t_rows.clone()
            traj.prev_t = torch.full_like(t_rows, float("nan"))
            traj.skips_in_row = torch.zeros(x.shape[0], dtype=torch.long)
            traj.ref_step = torch.full((x.shape[0],), step, dtype=torch.long)
        else:
            traj.ref_step = torch.where(compute, torch.full_like(traj.ref_step, step), traj.ref_step)
            rows = compute.nonzero().flatten()
            traj.ref_x.index_copy_(0, rows.to(x.device), x.detach().index_select(0, rows.to(x.device)))
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
        self.t_rows = t_rows
        if step == total - 1:
            self._finish()

    def _change(self, traj: _Trajectory, step: int, batch: int) -> torch.Tensor | None:
        """Each row's residual change per step times the steps since its reference (score term e)."""
        if not self.tracks_residual_change or traj.ref_step is None or traj.ref_step.shape[0] != batch:
            return None
        per_step = self.residual_change.per_step(batch)
        return None if per_step is None else per_step * (step - traj.ref_step).double()

    def _is_new_call(self, traj: _Trajectory, step: int, total: int, source: Any, x: torch.Tensor) -> bool:
        if source is not None and source is not traj.source:
            return True  # `scheduler.set_timesteps` ran: a new pipeline call
        if step < traj.step or total != traj.num_steps:
            return True
        return traj.ref_x is not None and tuple(traj.ref_x.shape[1:]) != tuple(x.shape[1:])

    def _batched_cfg(self, context: Any) -> bool:
        if getattr(context, "name", None) != "cond_uncond" or self.pipe is None:
            return False
        return bool(self.adapter.batched_cfg(self.pipe))  # the architecture's description says how

    def _new_trajectory(self, total: int, schedule: np.ndarray, source: Any) -> _Trajectory:
        self.clear()
        self._check_scheduler()
        self.trajectory = _Trajectory(num_steps=total, timesteps=schedule, source=source)
        return self.trajectory

    def _check_scheduler(self) -> None:
        scheduler = self._scheduler()
        expected = self.scheduler_class
        if scheduler is None or expected.lower() in _UNSPECIFIED:
            return
        actual = type(scheduler).__name__
        if actual != expected and actual not in self.warned:
            self.warned.add(actual)
            warnings.warn(
                f"sencache: the pipeline's scheduler is {actual}, but the policy was fitted under {expected}; "
                "its sensitivities and thresholds may not hold (the skipped steps' errors change with the solver). "
                f"Use pipe.scheduler = {expected}.from_config(pipe.scheduler.config), or refit the policy under "
                f"{actual} (sencache-calibrate collect/fit/export).",
                stacklevel=4,
            )

    def clear(self) -> None:
        """Drop the trajectory, the pending decision and every cached residual (keeps the last report)."""
        self.trajectory = None
        self.mask = self.weights = self._handed_weights = self.t_rows = self._handed_t = None
        self.residual_change.clear()
        self.reset_residuals()

    def end_call(self) -> None:
        """The pipeline call ended (its stateful hooks are being reset): keep the report, free the rest."""
        if self.trajectory is not None and self.trajectory.decisions:
            self.last_report = self._build_report(self.trajectory)
        self.clear()

    def abort(self) -> None:
        """A forward raised: nothing of this call may be reused by the next one."""
        logger.debug("a forward raised: SenCache drops this call's decisions and residuals")
        self.clear()

    # --- StackController ----------------------------------------------------------------------
    def compute_mask(self, context: str, batch: int) -> torch.Tensor | None:
        mask, self.mask = self.mask, None  # handed out once: a later head call computes every row
        self._handed_weights, self.weights = self.weights, None
        self._handed_t, self.t_rows = self.t_rows, None
        if mask is None or mask.shape[0] != batch:
            self._handed_weights = self._handed_t = None
            return None
        return mask

    @property
    def forecasting(self) -> bool:
        """Whether skipped rows extrapolate their residual (the stack then keeps a difference)."""
        return self.params.forecast == "linear"

    @property
    def tracks_residual_change(self) -> bool:
        """Whether the stack hands over each computing row's residual (the score weighs its change)."""
        return self.params.e > 0 and self.params.schedule is None

    def residual_computed(self, context: str, rows: torch.Tensor | None, batch: int, residual: torch.Tensor) -> None:
        if self.trajectory is not None:
            self.residual_change.record(context, rows, batch, residual, self.trajectory.step)

    def row_timesteps(self, context: str, batch: int) -> torch.Tensor | None:
        """The rows' timesteps of the mask just handed out (forecast "taylor"); None: no decision."""
        t = self._handed_t
        if t is None or t.shape[0] != batch:
            return None
        return t

    def row_steps(self, context: str, batch: int) -> torch.Tensor | None:
        """The step index of the mask just handed out, per row, as floats (taylor in step units)."""
        if self.row_timesteps(context, batch) is None or self.trajectory is None:
            return None
        return torch.full((batch,), float(self.trajectory.step), dtype=torch.float64)

    def forecast_weights(self, context: str, batch: int) -> torch.Tensor | None:
        weights = self._handed_weights
        if weights is None or weights.shape[0] != batch:
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


class CaptureHooks:
    """The torch hooks on a transformer that feed its `_Runtime` (see the module docstring)."""

    def __init__(self, transformer: torch.nn.Module, runtime: _Runtime) -> None:
        self.runtime = runtime
        self._pre = transformer.register_forward_pre_hook(self._before, with_kwargs=True)
        self._post = transformer.register_forward_hook(self._after, always_call=True)

    @torch.compiler.disable
    def _before(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        x, t = self.runtime.adapter.latent_and_timestep(module, args, kwargs)
        self.runtime.begin_forward(x, t)

    @torch.compiler.disable
    def _after(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if output is None:  # torch calls always-called hooks with no result when forward raised
            self.runtime.abort()

    def remove(self) -> None:
        self._pre.remove()
        self._post.remove()
