"""`apply` and `remove`: the public runtime of SenCache.

`apply(pipe, policy)` registers three kinds of diffusers hooks on the pipeline's transformer (a
model hook that sees x and t, a head hook on the first block, pass hooks on the others) and
returns a handle whose `report()` says what the last call did. `remove(pipe)` unregisters them,
after which the pipeline is bit-identical to one that never had SenCache.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
from diffusers.hooks import HookRegistry

from policies import Policy, config_fingerprint
from policies.errors import InputError
from sencache.adapters import adapter_for
from sencache.report import RunReport
from sencache.rule import RuleParams
from sencache.runtime import MODEL_HOOK, _ModelHook, _Runtime
from sencache.stack import StackHooks, install_stack, remove_stack

__all__ = ["SenCacheHandle", "apply", "remove", "rule_params"]

logger = logging.getLogger("sencache")

_HANDLE_ATTR = "_sencache_handle"


def rule_params(policy: Policy, operating_point: str | None = None, speedup: float | None = None,
                num_steps: int | None = None) -> tuple[RuleParams, str]:
    """Resolve a policy and one of its operating points into the rule's parameters (scored with
    the point's own reuse mode's predictor; `speedup` picks by `num_steps` where points state it)."""
    point = policy.operating_point(name=operating_point, speedup=speedup, num_steps=num_steps)
    params = RuleParams.from_parts(policy.predictor_for(point), policy.sensitivity, point)
    return params, point.name


class SenCacheHandle:
    """What `apply` returns: the report of the last call, and the way back (`remove`)."""

    def __init__(self, transformer: torch.nn.Module, runtime: _Runtime, stack: StackHooks, policy: Policy) -> None:
        self.transformer = transformer
        self.policy = policy
        self._runtime = runtime
        self._stack = stack

    @property
    def operating_point(self) -> str:
        return self._runtime.point_name

    def set_timesteps(self, timesteps: Any) -> None:
        """Give the schedule when SenCache is applied to a bare transformer (no pipeline)."""
        self._runtime.schedule = np.asarray(torch.as_tensor(timesteps).float().cpu(), dtype=np.float64)

    def report(self) -> RunReport:
        """The last (or current) call's computed mask, scores, thresholds and per-sample NFE."""
        report = self._runtime.report()
        if report is None:
            raise RuntimeError("no denoising call has run under SenCache yet: call the pipeline first")
        return report

    def remove(self) -> None:
        _remove_transformer(self.transformer)


def _transformer_of(target: Any) -> tuple[torch.nn.Module, Any | None]:
    if isinstance(target, torch.nn.Module):
        return target, None
    transformer = getattr(target, "transformer", None)
    if not isinstance(transformer, torch.nn.Module):
        raise InputError(f"{type(target).__name__} has no `transformer`: pass a diffusers pipeline or a transformer")
    return transformer, target


def apply(
    target: Any,
    policy: Policy,
    operating_point: str | None = None,
    speedup: float | None = None,
    strict: bool = True,
    num_steps: int | None = None,
) -> SenCacheHandle:
    """Apply `policy` to a pipeline (or a bare transformer); returns a handle with `report()`.

    Args:
        target: a diffusers pipeline with a supported `transformer`, or the transformer itself.
        policy: a `policies.Policy` fitted for this model (`sencache-calibrate export`).
        operating_point: name of the policy's operating point (default: the policy's default).
        speedup: alternatively, the wanted speedup; picks the closest operating point.
        strict: refuse a policy fitted for another model (fingerprint mismatch); with False, warn.
        num_steps: with `speedup`, the step count the calls will use: points that state their
            compute per step count (`expected_nfe_by_steps`) are compared at it.

    Applying again replaces the earlier SenCache hooks; it never stacks.
    """
    transformer, pipe = _transformer_of(target)
    adapter = adapter_for(transformer)
    policy.check_model(config_fingerprint(dict(transformer.config)), strict=strict)
    if operating_point is not None and speedup is not None:
        raise InputError("pass operating_point or speedup, not both")
    params, point_name = rule_params(policy, operating_point, speedup, num_steps)
    _remove_transformer(transformer)
    runtime = _Runtime(params, adapter, pipe, point_name)
    stack = install_stack(transformer, adapter, runtime)
    runtime.reset_residuals = stack.reset
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_ModelHook(runtime), MODEL_HOOK)
    handle = SenCacheHandle(transformer, runtime, stack, policy)
    setattr(transformer, _HANDLE_ATTR, handle)
    logger.debug("SenCache applied to %s at operating point %r", type(transformer).__name__, point_name)
    return handle


def _remove_transformer(transformer: torch.nn.Module) -> bool:
    handle = getattr(transformer, _HANDLE_ATTR, None)
    if handle is None:
        return False
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None:
        registry.remove_hook(MODEL_HOOK, recurse=False)
    remove_stack(transformer, handle._stack.adapter)
    delattr(transformer, _HANDLE_ATTR)
    return True


def remove(target: Any) -> None:
    """Remove SenCache from a pipeline or transformer: back to the exact original behaviour."""
    transformer, _ = _transformer_of(target)
    if not _remove_transformer(transformer):
        warnings.warn("sencache.remove: SenCache was not applied to this model", stacklevel=2)
