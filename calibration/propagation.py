"""Propagation gain G(p): how far a unit error injected at step p moves the final latent.

For each chosen step p the trajectory is rerun with a small perturbation δ added to the model
output at step p, the same δ on every CFG branch so the guided output moves by exactly δ
(`u + s(c − u)` with u, c both shifted by δ moves by δ). δ is a seeded Gaussian direction
scaled to RMS `scale · ‖f_p‖`. Then `G(p) = ‖x_N' − x_N‖ / ‖δ‖` (RMS), the factor that turns a
local output error at step p into a final-latent error (docs/design.md,
"What an experiment found").

Which direction δ points matters as much as its size. A seeded Gaussian direction
(``direction="random"``, the first stores) is noise, and a denoiser removes noise: on toy-wan
replay with those gains put the final error of re-runs 25× too low (`benchmarks/replay_vs_rerun.py`).
A cache's error is not noise: reusing step p − 1's output at step p errs by f_{p−1} − f_p, the
direction the output is moving. ``direction="trajectory"`` points δ there: the
first call of step p takes the difference between the same call's output at step p − 1 and its
own (the mean over the call's rows, so every CFG branch moves alike); step 0, which has no
earlier output, keeps the Gaussian direction.

Even that direction is not the cache's error: a residual reused at step p errs through the
blocks, not along the output's change. ``direction="cache"`` (`skip_gains`, the default of
`collect`) measures G(p) by *doing* it: the run is repeated with step p skipped by the runtime
(plain reuse of step p − 1's residual, every other step computed), and G(p) is that run's final
error over the local error the store measured for the same skip, e(p − 1, lag 1). Replay of a
single skip is then exact by construction, and what is left between replay and re-runs is how
skips compound. On toy-cogvideox a skip at step 2 moved the final latents 32× more than
e·G(trajectory direction) said; at step 20, 1.25×.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from sencache.adapters import adapter_for
from sencache.norms import rms, rms_diff

__all__ = ["DELTA_DIRECTIONS", "DIRECTIONS", "PERTURB_HOOK", "lag_one_errors", "measure_gains", "propagation_gains",
           "propagation_steps", "run_point", "skip_gains"]

PERTURB_HOOK = "sencache_perturb"
#: what perturbs step p: the cache's own error (step p really skipped, `skip_gains`; the default),
#: a small δ along the output's change from the step before, or a seeded Gaussian δ (the first
#: stores'); see the module docstring
DIRECTIONS = ("cache", "trajectory", "random")
#: the directions a perturbation δ can take (`propagation_gains`); "cache" perturbs nothing
DELTA_DIRECTIONS = ("trajectory", "random")


def propagation_steps(num_steps: int, count: int = 6) -> list[int]:
    """`count` steps where G(p) is worth measuring: spread evenly over 1..N−2, and the last step.

    Step 0 always computes (every policy's first step), so its gain is never used, and it has no
    earlier output to point a trajectory perturbation along. The last step is apart: its gain is
    the Euler update's own σ_{N−1}, several times the steps before it (toy-cogvideox: 0.18 at
    step 29 against 0.058 at 28 and 0.036 at 24), so a curve interpolated from step 25 straight
    to 29 put 2–3× too much weight on skips at 26–28; N−2 is measured for that reason.
    """
    if num_steps <= 2:
        return list(range(1, num_steps)) or [0]
    inner = np.linspace(1, num_steps - 2, max(1, min(count, num_steps) - 1))
    return sorted({int(round(v)) for v in inner} | {num_steps - 1})


class _State(BaseState):
    def reset(self) -> None:
        pass


class _PerturbHook(ModelHook):
    _is_stateful = True

    def __init__(self, pipe: Any, step: int, scale: float, seed: int, direction: str = "trajectory") -> None:
        super().__init__()
        if direction not in DELTA_DIRECTIONS:
            raise ValueError(f"direction must be one of {DELTA_DIRECTIONS}, got {direction!r}")
        self.pipe, self.step, self.scale, self.seed, self.direction = pipe, step, scale, seed, direction
        self.state = StateManager(_State)
        self.delta: torch.Tensor | None = None
        #: the outputs of step − 1, one per transformer call (cond, uncond when called apart)
        self.previous: list[torch.Tensor] = []
        self.used_direction: str | None = None

    def _unit_direction(self, sample: torch.Tensor) -> torch.Tensor:
        """A unit-RMS direction [*sample.shape[1:]] (see the module docstring)."""
        if self.direction == "trajectory" and self.previous:
            change = (self.previous[0].float() - sample.float()).mean(dim=0)
            if float(rms(change.unsqueeze(0))[0]) > 0:
                self.used_direction = "trajectory"
                return change / rms(change.unsqueeze(0))[0]
        self.used_direction = "random"
        generator = torch.Generator().manual_seed(self.seed)
        u = torch.randn(sample.shape[1:], generator=generator)
        return u / rms(u.unsqueeze(0))[0]

    def _step_of(self, t: Any) -> int:
        context = self.state._context
        step = getattr(context, "step_index", None)
        if step is not None:
            return int(step)
        schedule = np.asarray(torch.as_tensor(self.pipe.scheduler.timesteps).double().cpu())
        return int(np.abs(schedule - float(torch.as_tensor(t).double().flatten()[0])).argmin())

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        out = self.fn_ref.original_forward(*args, **kwargs)
        t = adapter_for(module).latent_and_timestep(module, args, kwargs)[1]
        step = self._step_of(t)
        sample = out[0] if isinstance(out, tuple) else out.sample
        if step == self.step - 1 and self.direction == "trajectory":
            self.previous.append(sample.detach().float().cpu().clone())
        if step != self.step:
            return out
        if self.delta is None:
            u = self._unit_direction(sample.detach().cpu())
            self.delta = (self.scale * float(rms(sample.float()).mean())) * u
        shifted = sample + self.delta.to(device=sample.device, dtype=sample.dtype)
        return (shifted, *out[1:]) if isinstance(out, tuple) else type(out)(sample=shifted)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module


def propagation_gains(
    pipe: Any,
    run: Callable[[], torch.Tensor],
    baseline_final: torch.Tensor,
    steps: list[int],
    seed: int = 0,
    scale: float = 0.01,
    direction: str = "trajectory",
) -> list[dict[str, Any]]:
    """Rows (step, gain, local_error, final_error) of the `propagation` table.

    Args:
        run: calls the pipeline once with the run's fixed generator and returns the final latents.
        baseline_final: the unperturbed final latents of the same call.
        scale (`float`, defaults to 0.01): RMS of δ relative to the output's RMS; small enough to
            stay in the linear regime, large enough to stay above float32 noise.
        direction (`str`, defaults to "trajectory"): where δ points (`DELTA_DIRECTIONS`, module docstring).
    """
    rows = []
    transformer = pipe.transformer
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    for p in steps:
        hook = _PerturbHook(pipe, p, scale, seed * 1000 + p, direction)
        registry.register_hook(hook, PERTURB_HOOK)
        try:
            final = run()
        finally:
            registry.remove_hook(PERTURB_HOOK, recurse=False)
        if hook.delta is None:
            continue
        local = float(rms(hook.delta.unsqueeze(0))[0])
        final_error = float(rms_diff(final, baseline_final).mean())
        rows.append({"step": p, "gain": final_error / local if local > 0 else None,
                     "local_error": local, "final_error": final_error})
    return rows


def skip_gains(
    pipe: Any,
    run: Callable[[], torch.Tensor],
    baseline_final: torch.Tensor,
    steps: list[int],
    num_steps: int,
    local_errors: Mapping[str, Mapping[int, float]],
) -> list[dict[str, Any]]:
    """Rows (step, mode, gain, local_error, final_error) of the `propagation` table, each from a
    run that skips step p alone under the runtime with reuse mode `mode`: gain = final error /
    `local_errors[mode][p]` (the store's e(p − 1, lag 1) of that mode for this run). A step
    without a positive local error is left out.

    One gain per mode, because a mode's error points its own way: on toy-wan a "taylor" skip
    replayed with plain reuse's gain came to 0.43–0.76 of its re-run (`benchmarks/replay_masks.py`),
    a plain skip to 1.00–1.05.
    """
    from policies import EpsSchedule, OperatingPoint

    rows = []
    for mode, errors in local_errors.items():
        for p in steps:
            local = float(errors.get(p, 0.0) or 0.0)
            if p <= 0 or p >= num_steps or not local > 0:
                continue
            # thresholds, not a static schedule: a schedule always computes the last step
            values = tuple(1e30 if i == p else 0.0 for i in range(num_steps))
            point = OperatingPoint("skip-one", EpsSchedule(tuple(i / (num_steps - 1) for i in range(num_steps)), values),
                                   max_skips=num_steps, forecast=mode)
            final, computed = run_point(pipe, run, point)
            if bool(computed[:, p].any()) or not bool(computed[:, [i for i in range(num_steps) if i != p]].all()):
                raise AssertionError(f"the run meant to skip step {p} alone computed {computed.tolist()}")
            final_error = float(rms_diff(final, baseline_final).mean())
            rows.append({"step": p, "mode": mode, "gain": final_error / local, "local_error": local,
                         "final_error": final_error})
    return rows


def run_point(pipe: Any, run: Callable[[], torch.Tensor], point: Any) -> tuple[torch.Tensor, Any]:
    """`run()` under the runtime with `point` alone, then the runtime removed: the final latents and
    the computed mask [samples, steps]. The policy's predictor and table are the constant ones:
    the points run here decide by thresholds at 0 and 1e30, or by a schedule."""
    import sencache
    from policies import Policy, config_fingerprint, constant_policy

    base = constant_policy(0.0, fingerprint=config_fingerprint(dict(pipe.transformer.config))).to_dict()
    policy = Policy.from_dict({**base, "operating_points": [point.to_dict()], "default_operating_point": point.name})
    handle = sencache.apply(pipe, policy)
    try:
        final = run()
        return final, handle.report().computed
    finally:
        sencache.remove(pipe)


def lag_one_errors(cache_errors: Any, reuse_errors: Any = None) -> dict[str, dict[int, float]]:
    """Per reuse mode, e(p − 1, lag 1) keyed by the skipped step p: plain reuse's from a run's
    `cache_errors` rows, every other mode's from its `reuse_errors` rows (None: left out)."""
    out: dict[str, dict[int, float]] = {}
    if cache_errors is not None:
        out["none"] = {int(r) + 1: float(e) for r, k, e in zip(cache_errors["step"], cache_errors["lag"],
                                                               cache_errors["residual_error"]) if int(k) == 1 and e == e}
    if reuse_errors is not None and len(reuse_errors):
        for mode, rows in reuse_errors.groupby("mode"):
            if str(mode) == "none":
                continue
            out[str(mode)] = {int(r) + 1: float(e) for r, k, e in zip(rows["step"], rows["lag"], rows["error"])
                              if int(k) == 1 and e == e}
    return out


def measure_gains(pipe: Any, run: Callable[[], torch.Tensor], baseline_final: torch.Tensor, steps: list[int],
                  num_steps: int, direction: str, seed: int, cache_errors: Any,
                  reuse_errors: Any = None) -> list[dict[str, Any]]:
    """The `propagation` rows of one run by `direction` (`DIRECTIONS`): real skips of every reuse
    mode the run measured, against its own `cache_errors` / `reuse_errors` rows, or a
    perturbation δ (mode "none")."""
    if direction == "cache":
        return skip_gains(pipe, run, baseline_final, steps, num_steps, lag_one_errors(cache_errors, reuse_errors))
    rows = propagation_gains(pipe, run, baseline_final, steps, seed=seed, direction=direction)
    return [dict(row, mode="none") for row in rows]
