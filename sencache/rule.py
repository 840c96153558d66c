"""The SenCache rule, as a pure function of one denoising step (docs/design.md, "The rule").

    S_i = a·J_x(t_r)·‖x_i − x_r‖ + b·J_t(t_r)·|t_i − t_r| + d·J_t(t_r)·|t_i − t_r|²
          + e·‖R_r − R_r'‖ / (r − r')·(i − r) + c
    skip iff  warmup ≤ i < N − final,  S_i ≤ ε(i / (N − 1)),  and fewer than K skips in a row.

The e term is the sample's own residual change between its last two computed steps r' < r,
per step, carried over the gap: what a forecast extrapolates, and what the runtime knows at no
cost (`sencache.residual_change`). It is the one term that moves with the sample rather than
with the timestep alone; a row that has computed only once has no change yet, scores NaN where
e > 0, and computes.

The coefficients are those of the point's own reuse mode (policy format version 2 stores one
predictor per mode: the error of plain reuse and of a forecast are different quantities). A
static point (`policies.schedule`) is not scored: it computes exactly its scheduled steps.

Kept free of hooks and pipelines so that it can be tested by hand and replayed offline on
stored trajectories (calibration's replay objective uses the same function).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sencache.norms import rms_diff

__all__ = ["Decision", "RuleParams", "decide", "step_position"]

# Why a row computed (or not): stored in the report so a user can see what the cache did.
FIRST, WARMUP, FINAL, SCORE, MAX_SKIPS, SKIPPED = "first", "warmup", "final", "score", "max_skips", "skipped"
#: a static point's scheduled compute
SCHEDULE = "schedule"


def _predictor_for(predictor: Any, mode: str) -> Any:
    """`predictor` itself, or, for a mapping mode → predictor, the mode's (else the "none" one)."""
    if isinstance(predictor, Mapping):
        return predictor[mode] if mode in predictor else predictor["none"]
    return predictor


@dataclass(frozen=True)
class RuleParams:
    """Everything the rule needs, resolved from a policy and one of its operating points.

    `sens_t` must be ascending; `J_x`/`J_t` are interpolated linearly in t and clamped at the ends.
    """

    a: float
    b: float
    c: float
    sens_t: np.ndarray
    sens_jx: np.ndarray
    sens_jt: np.ndarray
    eps: Callable[[float], float]
    max_skips: int
    zones: Callable[[int], tuple[int, int]]
    forecast: str = "none"
    #: weight of J_t(t_r)·|t − t_r|² (version-2 predictors; 0 for version 1)
    d: float = 0.0
    #: a static point's compute steps for an N-step run (None: score-driven)
    schedule: Callable[[int], frozenset[int]] | None = None
    #: weight of the residual-change term (0: the runtime does not track the change)
    e: float = 0.0

    @classmethod
    def from_parts(cls, predictor: Any, table: Any, point: Any) -> RuleParams:
        """From a `Predictor` (or a mapping reuse mode → `Predictor`, of which the point's own
        mode is used), a `SensitivityTable` and one `OperatingPoint`."""
        forecast = str(getattr(point, "forecast", "none"))
        predictor = _predictor_for(predictor, forecast)
        schedule = getattr(point, "schedule", None)
        t = np.asarray(table.timesteps, dtype=np.float64)
        order = np.argsort(t)
        return cls(
            a=float(predictor.a),
            b=float(predictor.b),
            c=float(predictor.c),
            sens_t=t[order],
            sens_jx=np.asarray(table.J_x, dtype=np.float64)[order],
            sens_jt=np.asarray(table.J_t, dtype=np.float64)[order],
            eps=point.eps if schedule is None else (lambda p: float("nan")),
            max_skips=int(point.max_skips),
            zones=point.zones,
            forecast=forecast,
            d=float(getattr(predictor, "d", 0.0) or 0.0),
            schedule=None if schedule is None else schedule.steps,
            e=float(getattr(predictor, "e", 0.0) or 0.0),
        )

    def sensitivities(self, t_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.interp(t_ref, self.sens_t, self.sens_jx), np.interp(t_ref, self.sens_t, self.sens_jt)


@dataclass
class Decision:
    """One step's decision for every row: compute mask, scores (NaN where not scored), ε, reasons."""

    compute: torch.Tensor
    scores: np.ndarray
    threshold: float
    reasons: list[str]


def step_position(step: int, num_steps: int) -> float:
    """Normalised position p_i = i / (N − 1), so one ε(p) curve serves every step count."""
    return 0.0 if num_steps <= 1 else step / (num_steps - 1)


def decide(
    params: RuleParams,
    step: int,
    num_steps: int,
    x: torch.Tensor,
    t: torch.Tensor,
    ref_x: torch.Tensor | None,
    ref_t: torch.Tensor | None,
    skips_in_row: torch.Tensor | None,
    change: torch.Tensor | np.ndarray | None = None,
) -> Decision:
    """Decide, per row, whether step `step` of `num_steps` runs the block stack.

    `x`, `t` are this step's latent [B, ...] and timestep [B]; `ref_x`, `ref_t` the latent and
    timestep of each row's last computed step (None before the first one); `skips_in_row` the
    number of consecutive skips of each row so far; `change` [B], when ``params.e > 0``, each row's
    residual change per step times the steps since its reference (NaN: not known yet; None: none
    known for any row).
    """
    batch = x.shape[0]
    threshold = float(params.eps(step_position(step, num_steps)))
    if ref_x is None or ref_t is None or skips_in_row is None or ref_x.shape[0] != batch:
        return Decision(torch.ones(batch, dtype=torch.bool), np.full(batch, np.nan), threshold, [FIRST] * batch)
    if params.schedule is not None:
        run = step in params.schedule(num_steps)
        return Decision(torch.full((batch,), run, dtype=torch.bool), np.full(batch, np.nan), threshold,
                        [SCHEDULE if run else SKIPPED] * batch)
    warmup, final = params.zones(num_steps)
    if step < warmup or step >= num_steps - final:
        reason = WARMUP if step < warmup else FINAL
        return Decision(torch.ones(batch, dtype=torch.bool), np.full(batch, np.nan), threshold, [reason] * batch)
    dx = rms_diff(x, ref_x).cpu().numpy().astype(np.float64)
    t_now = t.detach().float().cpu().numpy().astype(np.float64)
    t_ref = ref_t.detach().float().cpu().numpy().astype(np.float64)
    jx, jt = params.sensitivities(t_ref)
    gap = np.abs(t_now - t_ref)
    scores = params.a * jx * dx + params.b * jt * gap + params.d * jt * gap**2 + params.c
    if params.e > 0:
        known = np.full(batch, np.nan) if change is None else np.asarray(
            change.detach().cpu() if isinstance(change, torch.Tensor) else change, dtype=np.float64)
        scores = scores + params.e * known
    under = scores <= threshold
    capped = skips_in_row.cpu().numpy() >= params.max_skips
    skip = under & ~capped
    reasons = [SKIPPED if s else (MAX_SKIPS if u else SCORE) for s, u in zip(skip, under)]
    return Decision(torch.from_numpy(~skip), scores, threshold, reasons)
