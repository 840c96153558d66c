"""What every baseline shares: the handle it returns, where the denoising loop is, the blocks.

A baseline is `apply_<method>(pipe, knob, ...) -> BaselineHandle`. The handle's `reset()` is
called before every pipeline call (diffusers' cache hooks keep their state across calls: a
TaylorSeer step counter would otherwise carry on from the last video), `remove()` restores the
pipeline, and `computed_mask()` returns the per-sample computed mask when the method can say.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from policies.errors import InputError, SenCacheError
from sencache.adapters import BlockStackAdapter, adapter_for

__all__ = [
    "BaselineHandle",
    "MethodUnavailable",
    "MethodUnsupported",
    "StepTracker",
    "architecture",
    "transformer_of",
]

class MethodUnsupported(SenCacheError):
    """The peer method cannot run on this architecture: the bench records it with the reason."""


class MethodUnavailable(InputError):
    """A requested method lacks an input it needs (a policy file, a package): the bench refuses."""


def transformer_of(pipe: Any) -> torch.nn.Module:
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, torch.nn.Module):
        raise InputError(f"{type(pipe).__name__} has no `transformer`: the baselines need a diffusers video pipeline")
    return transformer


def architecture(pipe: Any) -> str:
    """The short name of the pipeline's architecture (an InputError names the supported classes otherwise)."""
    return adapter_for(transformer_of(pipe)).name


class BaselineHandle:
    """A method installed on a pipeline: `reset()` before each call, `remove()` when done."""

    def __init__(
        self,
        method: str,
        knob: Any,
        remove: Callable[[], None],
        reset: Callable[[], None] | None = None,
        computed_mask: Callable[[], np.ndarray | None] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.knob = knob
        self.config = dict(config or {})
        self._remove = remove
        self._reset = reset
        self._mask = computed_mask
        self.removed = False

    def reset(self) -> None:
        if self._reset is not None:
            self._reset()

    def computed_mask(self) -> np.ndarray | None:
        """bool [samples, steps] of the last call where the method reports one (SenCache)."""
        return self._mask() if self._mask is not None else None

    def remove(self) -> None:
        if not self.removed:
            self._remove()
            self.removed = True

    def __repr__(self) -> str:
        return f"BaselineHandle({self.method!r}, knob={self.knob!r})"


_SIGNATURES: dict[type, inspect.Signature] = {}


def report_mask(handle: Any) -> Callable[[], np.ndarray | None]:
    """A `computed_mask` for a SenCache handle: the last call's mask, None before any call."""

    def mask() -> np.ndarray | None:
        try:
            return handle.report().computed
        except RuntimeError:
            return None

    return mask


def bind_args(module: torch.nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A module call's arguments by name (positional ones included)."""
    sig = _SIGNATURES.get(type(module))
    if sig is None:
        sig = _SIGNATURES[type(module)] = inspect.signature(type(module).forward)
    return dict(sig.bind(module, *args, **kwargs).arguments)


class StepTracker:
    """Which denoising step each transformer call belongs to, and its latent x and timestep t.

    The step is the position of t in the pipeline scheduler's `timesteps` (every supported
    pipeline passes a timestep from that list); a call whose step is not after the previous
    call's step of the same cache context starts a new trajectory (`on_new_trajectory`).
    """

    def __init__(self, pipe: Any, adapter: BlockStackAdapter | None = None) -> None:
        self.pipe = pipe
        self.transformer = transformer_of(pipe)
        self.adapter = adapter or adapter_for(self.transformer)
        self.step = -1
        self.num_steps = 0
        self.x: torch.Tensor | None = None
        self.t: torch.Tensor | None = None
        self._handle = self.transformer.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        x, t = self.adapter.latent_and_timestep(module, args, kwargs)
        t = torch.as_tensor(t)
        schedule = np.asarray(torch.as_tensor(self.pipe.scheduler.timesteps).detach().float().cpu(), dtype=np.float64)
        if schedule.size == 0:
            raise SenCacheError("the pipeline's scheduler has no timesteps: call the pipeline, not the transformer")
        t0 = float(t.detach().float().flatten()[0])
        self.step = int(np.abs(schedule - t0).argmin())
        self.num_steps = int(schedule.size)
        self.x, self.t = x, t

    def remove(self) -> None:
        self._handle.remove()


def evenly_spaced(num_steps: int, fraction: float) -> set[int]:
    """`round(fraction x N)` steps (at least 2) evenly spaced from the first to the last step."""
    count = int(min(num_steps, max(2, round(fraction * num_steps))))
    return {int(round(v)) for v in np.linspace(0, num_steps - 1, count)}
