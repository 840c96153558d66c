"""How a candidate operating point is scored: final-output error and fraction of steps computed.

Two evaluators with one interface, ``evaluate(predictor, point) -> Evaluation``:

* `ReplayObjective` (cheap, for large models) simulates the rule on stored trajectories. Each
  step's decision is taken by `sencache.rule.decide` itself, fed the stored latent and timestep
  changes from the reference step, so replay and the runtime cannot disagree about *what* is
  skipped. The final error is estimated as ``Σ_skipped G(p_i)·e(r, i − r)``: the measured
  residual-reuse error of each skipped step, weighted by the measured propagation gain of its
  position when the store has one (1 otherwise). A linear sum, because the errors of one
  reference reused over consecutive steps point the same way.
* `RerunObjective` (the default for small models) applies the candidate policy to the real
  pipeline, runs the calibration prompts (one batched call: every sample decides on its own,
  as at inference), and measures the RMS difference of the final latents against full compute.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from policies import ModelInfo, OperatingPoint, Policy, Predictor, SchedulerInfo, SensitivityTable
from sencache.rule import RuleParams, decide

__all__ = ["Evaluation", "Objective", "RerunObjective", "ReplayObjective", "RunSpec", "rule_params_for"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """Mean final error and mean fraction of steps computed over the evaluated runs."""

    error: float
    nfe_fraction: float
    per_run_error: list[float] = field(default_factory=list)
    per_run_nfe: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        spread = float(np.std(self.per_run_error)) if self.per_run_error else 0.0
        return {"error": self.error, "error_std": spread, "nfe_fraction": self.nfe_fraction, "runs": len(self.per_run_error)}


class Objective(Protocol):
    kind: str

    def evaluate(self, predictor: Predictor, point: OperatingPoint) -> Evaluation: ...


def rule_params_for(predictor: Predictor, table: SensitivityTable, point: OperatingPoint) -> RuleParams:
    """The rule's parameters for a predictor, a sensitivity table and an operating point."""
    return RuleParams.from_parts(predictor, table, point)


# --- replay -----------------------------------------------------------------------------------


@dataclass
class _ReplayGroup:
    """Runs of one step count, as arrays: timesteps [B, N], dx/dt/err [B, N, L+1] by (ref, lag)."""

    num_steps: int
    run_ids: list[Any]
    timesteps: np.ndarray
    dx: np.ndarray
    dt: np.ndarray
    err: np.ndarray
    gain: np.ndarray


class ReplayObjective:
    """Simulate the rule on stored trajectories (see the module docstring)."""

    kind = "replay"

    def __init__(
        self,
        table: SensitivityTable,
        steps: pd.DataFrame,
        cache_errors: pd.DataFrame,
        gains: np.ndarray | None = None,
        gain_positions: np.ndarray | None = None,
    ) -> None:
        """`steps`: ``run_id, step, timestep``; `cache_errors`: ``run_id, step, lag, dx, dt,
        residual_error``; `gains` at `gain_positions` (normalised p), interpolated per step."""
        self.table = table
        if cache_errors.empty:
            raise ValueError("replay needs stored cache errors")
        self.max_lag = int(cache_errors["lag"].max())
        self.groups = self._groups(steps, cache_errors, gains, gain_positions)

    def _groups(self, steps, errors, gains, gain_positions) -> list[_ReplayGroup]:
        n_of = steps.groupby("run_id")["step"].max() + 1
        groups: list[_ReplayGroup] = []
        lags = self.max_lag + 1
        by_run = {run: df for run, df in errors.groupby("run_id")}
        t_by_run = {run: df.sort_values("step")["timestep"].to_numpy(np.float64) for run, df in steps.groupby("run_id")}
        for n, runs in n_of.groupby(n_of):
            run_ids = [r for r in runs.index if r in by_run and len(t_by_run[r]) == n]
            if not run_ids:
                continue
            b = len(run_ids)
            dx = np.full((b, n, lags), np.nan)
            dt = np.full((b, n, lags), np.nan)
            err = np.full((b, n, lags), np.nan)
            for j, run in enumerate(run_ids):
                df = by_run[run]
                s = df["step"].to_numpy(int)
                k = df["lag"].to_numpy(int)
                ok = (s >= 0) & (s < n) & (k >= 1) & (k < lags)
                dx[j, s[ok], k[ok]] = df["dx"].to_numpy(np.float64)[ok]
                dt[j, s[ok], k[ok]] = df["dt"].to_numpy(np.float64)[ok]
                err[j, s[ok], k[ok]] = df["residual_error"].to_numpy(np.float64)[ok]
            timesteps = np.stack([t_by_run[r] for r in run_ids])
            p = np.arange(n) / max(n - 1, 1)
            gain = np.ones(n) if gains is None else np.interp(p, gain_positions, gains)
            groups.append(_ReplayGroup(int(n), run_ids, timesteps, dx, dt, err, gain))
        if not groups:
            raise ValueError("no run has both per-step timesteps and cache errors")
        return groups

    def evaluate(self, predictor: Predictor, point: OperatingPoint) -> Evaluation:
        params = rule_params_for(predictor, self.table, point)
        errors: list[float] = []
        nfes: list[float] = []
        for g in self.groups:
            e, f = _replay_group(params, g)
            errors.extend(e.tolist())
            nfes.extend(f.tolist())
        return Evaluation(float(np.mean(errors)), float(np.mean(nfes)), errors, nfes)


def _replay_group(params: RuleParams, g: _ReplayGroup) -> tuple[np.ndarray, np.ndarray]:
    """Run `decide` step by step for every run of the group; returns (error, nfe) per run.

    The rule sees ``x = [dx]`` against ``ref_x = [0]``, whose RMS difference is exactly the stored
    ``‖x_i − x_r‖``; the timesteps are the stored ones. A lag the store does not cover gives a NaN
    score, which never passes ``S ≤ ε``, so the step computes.
    """
    b, n = g.timesteps.shape
    rows = np.arange(b)
    ref = np.zeros(b, dtype=int)
    computed = np.zeros(b)
    error = np.zeros(b)
    ref_t = skips = None
    zeros = torch.zeros(b, 1, dtype=torch.float64)
    for i in range(n):
        lag = i - ref
        in_range = (lag >= 1) & (lag < g.dx.shape[2])
        safe = np.where(in_range, lag, 0)
        dx = np.where(in_range, g.dx[rows, ref, safe], np.nan)
        t_now = torch.from_numpy(g.timesteps[:, i].copy())
        x = torch.from_numpy(dx.reshape(b, 1))
        decision = decide(params, i, n, x, t_now, None if ref_t is None else zeros, ref_t, skips)
        compute = decision.compute.numpy()
        skipped = ~compute
        if skipped.any():
            local = np.where(skipped, g.err[rows, ref, safe], 0.0)
            error += np.nan_to_num(local, nan=0.0) * g.gain[i]
        computed += compute
        ref = np.where(compute, i, ref)
        ref_t = torch.from_numpy(g.timesteps[rows, ref].copy())
        prev = np.zeros(b, dtype=np.int64) if skips is None else skips.numpy()
        skips = torch.from_numpy(np.where(compute, 0, prev + 1).astype(np.int64))
    return error, computed / n


# --- rerun ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One calibration prompt: what to call the pipeline with."""

    prompt: str
    seed: int
    steps: int
    call_args: dict[str, Any] = field(default_factory=dict)

    def group_key(self) -> tuple:
        return (self.steps, tuple(sorted((k, repr(v)) for k, v in self.call_args.items())))


class RerunObjective:
    """Apply the candidate to the real pipeline and compare final latents with full compute."""

    kind = "rerun"

    def __init__(self, pipe: Any, table: SensitivityTable, runs: list[RunSpec], model_name: str = "model",
                 batch_size: int = 16) -> None:
        import sencache  # noqa: F401  (fail early if the runtime cannot load this pipeline)
        from policies import config_fingerprint

        if not runs:
            raise ValueError("rerun needs at least one run")
        self.pipe = pipe
        self.table = table
        self.runs = runs
        self.batch_size = batch_size
        transformer = pipe.transformer
        self.model = ModelInfo(type(transformer).__name__, config_fingerprint(dict(transformer.config)), model_name)
        self.scheduler = SchedulerInfo(type(pipe.scheduler).__name__, {})
        self._batches = self._make_batches()
        self._reference = [self._call(batch) for batch in self._batches]

    def _make_batches(self) -> list[list[RunSpec]]:
        groups: dict[tuple, list[RunSpec]] = {}
        for run in self.runs:
            groups.setdefault(run.group_key(), []).append(run)
        out = []
        for group in groups.values():
            for start in range(0, len(group), self.batch_size):
                out.append(group[start : start + self.batch_size])
        return out

    @torch.no_grad()
    def _call(self, batch: list[RunSpec]) -> torch.Tensor:
        generators = [torch.Generator().manual_seed(int(r.seed)) for r in batch]
        kwargs = dict(batch[0].call_args)
        kwargs["num_inference_steps"] = batch[0].steps
        out = self.pipe(prompt=[r.prompt for r in batch], generator=generators, output_type="latent", **kwargs)
        latents = out.frames if hasattr(out, "frames") else out[0]
        return torch.as_tensor(latents).float().cpu()

    def policy_for(self, predictor: Predictor | Mapping[str, Predictor], point: OperatingPoint) -> Policy:
        """A one-point policy; `predictor` may be a mapping reuse mode → predictor (format 2)."""
        if isinstance(predictor, Mapping):
            one = predictor.get(point.forecast, predictor.get("none"))
            return Policy(self.model, self.scheduler, self.table, one, (point,), point.name, {},
                          predictors=dict(predictor))
        return Policy(self.model, self.scheduler, self.table, predictor, (point,), point.name, {})

    def evaluate(self, predictor: Predictor, point: OperatingPoint) -> Evaluation:
        import sencache

        policy = self.policy_for(predictor, point)
        errors: list[float] = []
        nfes: list[float] = []
        runtime_log = logging.getLogger("sencache")
        level = runtime_log.level
        runtime_log.setLevel(max(level, logging.WARNING))  # a summary per trial call is noise here
        handle = sencache.apply(self.pipe, policy)
        try:
            for batch, reference in zip(self._batches, self._reference):
                latents = self._call(batch)
                diff = (latents - reference).flatten(1)
                errors.extend(diff.pow(2).mean(dim=1).sqrt().tolist())
                nfe = handle.report().nfe_fraction
                nfes.extend(np.broadcast_to(nfe, (len(batch),)).tolist() if np.size(nfe) != len(batch) else nfe.tolist())
        finally:
            sencache.remove(self.pipe)
            runtime_log.setLevel(level)
        return Evaluation(float(np.mean(errors)), float(np.mean(nfes)), errors, nfes)
