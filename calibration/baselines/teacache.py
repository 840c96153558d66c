"""`teacache`: TeaCache (Liu et al., 2024), written from the paper's description.

Per cache context, at every step the first block's timestep-modulated input m_i (the normalised
tokens after the attention branch's shift/scale: `calibration.signals.modulated_input`, the
same signal `collect` stores) is compared with the previous step's:

    Δ_i = mean|m_i − m_{i−1}| / mean|m_{i−1}|,    A ← A + poly(Δ_i)

The block stack is skipped (its last residual reused) while A < threshold; when A reaches the
threshold the stack runs and A resets to 0. The first and last steps always run. One decision
per forward for the whole batch, as in TeaCache.

`poly` rescales the input change into an estimate of the output change: its coefficients are
fitted with `np.polyfit` (degree 4, as the paper), from a calibration store when one is given
(`coefficients_from_store`: the stored signal Δ_i against the measured error of reusing the
residual of step i−1 at step i, relative to the output's RMS, calibration runs only), else on
full-compute calibration runs (`fit_coefficients`: the model output's relative L1 change).
Without enough points it is the identity. Negative values of the fitted polynomial
(possible at the edge of the fitted range) are clipped to 0 so the accumulator never decreases.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from calibration.baselines._common import BaselineHandle, StepTracker, bind_args, transformer_of
from calibration.signals import modulated_input
from sencache.adapters import adapter_for
from sencache.stack import install_stack, remove_stack

__all__ = ["IDENTITY", "TeaCacheController", "apply_teacache", "coefficients_from_store", "fit_coefficients"]

logger = logging.getLogger(__name__)

#: poly(x) = x, highest degree first (np.polyval order)
IDENTITY = (1.0, 0.0)
DEGREE = 4


def _rel_l1(current: torch.Tensor, previous: torch.Tensor) -> float | None:
    den = float(previous.float().abs().mean())
    if den == 0.0:
        return None
    value = float((current.float() - previous.float()).abs().mean()) / den
    return value if np.isfinite(value) else None


@dataclass
class _State:
    step: int = -1
    previous: torch.Tensor | None = None
    accumulated: float = 0.0


class TeaCacheController:
    """`StackController` implementing the TeaCache accumulator (one decision per batch)."""

    def __init__(self, tracker: StepTracker, block0: torch.nn.Module, threshold: float, coefficients: tuple[float, ...]) -> None:
        self.tracker = tracker
        self.threshold = float(threshold)
        self.coefficients = np.asarray(coefficients, dtype=np.float64)
        self.states: dict[str, _State] = {}
        self.pending: torch.Tensor | None = None
        self._handle = block0.register_forward_pre_hook(self._grab, with_kwargs=True)

    def _grab(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.pending = modulated_input(self.tracker.adapter, module, bind_args(module, args, kwargs))

    def compute_mask(self, context: str, batch: int) -> torch.Tensor | None:
        step, total = self.tracker.step, self.tracker.num_steps
        state = self.states.get(context)
        if state is None or step <= state.step:
            state = self.states[context] = _State()
        current = self.pending
        compute = True
        if 0 < step < total - 1 and state.previous is not None and current is not None:
            change = _rel_l1(current, state.previous)
            if change is not None:
                state.accumulated += max(float(np.polyval(self.coefficients, change)), 0.0)
                compute = state.accumulated >= self.threshold
        if compute:
            state.accumulated = 0.0
        state.previous = None if current is None else current.detach()
        state.step = step
        return None if compute else torch.zeros(batch, dtype=torch.bool)

    def stack_ran(self, context: str, rows: int, batch: int) -> None:
        pass

    def reset(self) -> None:
        self.states.clear()

    def remove(self) -> None:
        self._handle.remove()


def fit_coefficients(pipe: Any, call_kwargs: dict[str, Any], prompts: list[str], seed: int = 0,
                     degree: int = DEGREE) -> tuple[tuple[float, ...], dict[str, Any]]:
    """Fit poly(Δ modulated input) ≈ Δ model output (relative L1) on full-compute runs of `prompts`.

    Returns the coefficients (highest degree first) and a note on the fit (points, R²); falls
    back to the identity when fewer than `degree + 2` usable points were seen.
    """
    transformer = transformer_of(pipe)
    adapter = adapter_for(transformer)
    block0 = adapter.blocks(transformer)[0]
    xs, ys = [], []
    for prompt in prompts:
        tracker = StepTracker(pipe, adapter)
        calls: list[tuple[int, torch.Tensor | None, torch.Tensor]] = []
        pending: list[torch.Tensor | None] = [None]

        def grab_input(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            pending[0] = modulated_input(adapter, module, bind_args(module, args, kwargs))

        def grab_output(module: torch.nn.Module, args: tuple, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
            calls.append((tracker.step, pending[0], out.detach()))

        handles = [block0.register_forward_pre_hook(grab_input, with_kwargs=True),
                   transformer.register_forward_hook(grab_output)]
        try:
            pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **call_kwargs)
        finally:
            for handle in handles:
                handle.remove()
            tracker.remove()
        by_branch: dict[int, list[tuple[torch.Tensor | None, torch.Tensor]]] = {}
        counts: dict[int, int] = {}
        for step, mod, out in calls:  # k-th call of a step = k-th CFG branch (Wan: cond, uncond)
            k = counts.get(step, 0)
            counts[step] = k + 1
            by_branch.setdefault(k, []).append((mod, out))
        for seq in by_branch.values():
            for (m0, o0), (m1, o1) in zip(seq, seq[1:]):
                if m0 is None or m1 is None:
                    continue
                x, y = _rel_l1(m1, m0), _rel_l1(o1, o0)
                if x is not None and y is not None:
                    xs.append(x)
                    ys.append(y)
    return _polyfit(xs, ys, degree, f"{len(prompts)} full-compute calibration run(s)")


def _polyfit(xs: list[float], ys: list[float], degree: int, source: str) -> tuple[tuple[float, ...], dict[str, Any]]:
    if len(xs) < degree + 2:
        logger.warning("teacache: only %d calibration points: using the identity polynomial", len(xs))
        return IDENTITY, {"source": f"identity (too few points from {source})", "points": len(xs)}
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    coefficients = np.polyfit(x, y, degree)
    ss = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - np.polyval(coefficients, x)) ** 2)) / ss if ss > 0 else None
    note = {"source": f"np.polyfit degree {degree} on {source}", "points": len(xs), "r2": r2,
            "input_change_range": [float(x.min()), float(x.max())]}
    return tuple(float(c) for c in coefficients), note


def coefficients_from_store(store_path: str, model_fingerprint: str | None = None,
                            degree: int = DEGREE) -> tuple[tuple[float, ...], dict[str, Any]]:
    """Fit poly(stored TeaCache signal at step i) ≈ residual-reuse error (lag 1, at step i) / output RMS.

    With `model_fingerprint`, a store of another model is refused (`InputError`).
    """
    from store import CalibrationStore

    with CalibrationStore(store_path, read_only=True, model_fingerprint=model_fingerprint) as store:
        calib = store.runs(split="calib")["run_id"].tolist()
        steps = store.steps(calib)
        errors = store.cache_errors(calib)
    errors = errors[errors["lag"] == 1].assign(step=lambda d: d["step"] + 1)  # reuse R_{i-1} at step i
    table = steps.merge(errors[["run_id", "step", "residual_error"]], on=["run_id", "step"])
    table = table[(table["out_norm"] > 0) & table["teacache_signal"].notna() & table["residual_error"].notna()]
    xs = table["teacache_signal"].astype(float).tolist()
    ys = (table["residual_error"] / table["out_norm"]).astype(float).tolist()
    return _polyfit(xs, ys, degree, f"store {store_path} ({len(calib)} calibration runs)")


def apply_teacache(pipe: Any, knob: float, coefficients: tuple[float, ...] = IDENTITY) -> BaselineHandle:
    """TeaCache with accumulator threshold `knob` (higher is faster and less faithful)."""
    transformer = transformer_of(pipe)
    adapter = adapter_for(transformer)
    tracker = StepTracker(pipe, adapter)
    controller = TeaCacheController(tracker, adapter.blocks(transformer)[0], float(knob), coefficients)
    stack = install_stack(transformer, adapter, controller)

    def reset() -> None:
        stack.reset()
        controller.reset()

    def remove() -> None:
        remove_stack(transformer, adapter)
        controller.remove()
        tracker.remove()

    return BaselineHandle("teacache", float(knob), remove, reset=reset,
                          config={"threshold": float(knob), "coefficients": list(coefficients)})
