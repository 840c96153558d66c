"""`easycache`: EasyCache's runtime-adaptive rule (Zhou et al., 2025), written from the paper.

EasyCache works on the whole transformer call. At a computed step i it keeps the
*transformation vector* Δ = o_i − x_i (output minus input) and the *transformation rate*
k = ‖o_i − o_j‖ / ‖x_i − x_j‖ between the last two computed steps j < i (mean absolute norms).
At a later step t it predicts the relative output change from the input change alone,

    ε_t = k · ‖x_t − x_{t−1}‖ / ‖o_{t−1}‖,    E ← E + ε_t,

and skips the transformer (returns x_t + Δ) while E < τ; otherwise it computes, resets E and
refreshes k and Δ. The first `warmup` steps (10% of them, at least 2, so that k exists)
always compute. One decision per call for the whole batch, separately per cache context.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from calibration.baselines._common import BaselineHandle, MethodUnsupported, StepTracker, bind_args, transformer_of
from sencache.adapters import adapter_for

__all__ = ["EASYCACHE_HOOK", "apply_easycache"]

EASYCACHE_HOOK = "bench_easycache"
WARMUP_FRACTION = 0.1


def _mean_abs(v: torch.Tensor) -> float:
    return float(v.float().abs().mean())


class _State(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.step = -1
        self.prev_x: torch.Tensor | None = None
        self.prev_out: torch.Tensor | None = None
        self.last_x: torch.Tensor | None = None
        self.last_out: torch.Tensor | None = None
        self.delta: torch.Tensor | None = None
        self.rate: float | None = None
        self.accumulated = 0.0


class _EasyCacheHook(ModelHook):
    _is_stateful = True

    def __init__(self, tracker: StepTracker, latent_arg: str, threshold: float) -> None:
        super().__init__()
        self.tracker = tracker
        self.latent_arg = latent_arg
        self.threshold = threshold
        self.state = StateManager(_State)

    def _get_state(self) -> _State:
        if self.state._context is None:
            return self.state._state_cache.setdefault("default", _State())
        return self.state.get_state()

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        named = bind_args(module, args, kwargs)
        x = named[self.latent_arg]
        state = self._get_state()
        step, total = self.tracker.step, self.tracker.num_steps
        if step <= state.step:
            state.reset()
        warmup = max(2, round(WARMUP_FRACTION * total))
        compute = True
        if step >= warmup and state.rate is not None and state.prev_x is not None and state.delta is not None:
            norm = _mean_abs(state.prev_out)
            if norm > 0:
                state.accumulated += state.rate * _mean_abs(x - state.prev_x) / norm
                compute = state.accumulated >= self.threshold
        state.step = step
        state.prev_x = x.detach()
        if not compute:
            out = x + state.delta
            state.prev_out = out
            return (out,) if not named.get("return_dict", True) else Transformer2DModelOutput(sample=out)
        output = self.fn_ref.original_forward(*args, **kwargs)
        out = output[0] if isinstance(output, tuple) else output.sample
        if state.last_x is not None:
            dx = _mean_abs(x - state.last_x)
            state.rate = _mean_abs(out - state.last_out) / dx if dx > 0 else state.rate
        state.last_x, state.last_out = x.detach(), out.detach()
        state.delta = (out - x).detach()
        state.prev_out = out.detach()
        state.accumulated = 0.0
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module


def apply_easycache(pipe: Any, knob: float) -> BaselineHandle:
    """EasyCache with threshold τ = `knob` on the accumulated predicted relative change."""
    transformer = transformer_of(pipe)
    adapter = adapter_for(transformer)
    cfg = transformer.config
    in_ch = cfg.get("in_channels")
    out_ch = cfg.get("out_channels") or in_ch
    if in_ch != out_ch:
        raise MethodUnsupported(f"EasyCache reuses output − input, which needs out_channels == in_channels; "
                                f"{type(transformer).__name__} has {in_ch} in and {out_ch} out")
    tracker = StepTracker(pipe, adapter)
    hook = _EasyCacheHook(tracker, adapter.latent_arg, float(knob))
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(hook, EASYCACHE_HOOK)

    def remove() -> None:
        registry.remove_hook(EASYCACHE_HOOK, recurse=False)
        tracker.remove()

    return BaselineHandle("easycache", float(knob), remove, reset=lambda: hook.reset_state(transformer),
                          config={"threshold": float(knob), "warmup_fraction": WARMUP_FRACTION, "level": "whole transformer"})
