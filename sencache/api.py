"""`apply` and `remove`: the public runtime of SenCache.

`apply(pipe, policy)` caches every denoiser of the pipeline (`transformer`, and Wan 2.2 A14B's
low-noise expert `transformer_2`): on each it registers the stack's diffusers hooks (a head hook on
the first block, pass hooks on the others) and two torch module hooks that hand the runtime each
forward's latent and timestep (`sencache.runtime`). It returns a handle whose `report()` says what
the last call did. `remove(pipe)` unregisters everything and frees the cached tensors, after
which the pipeline is bit-identical to one that never had SenCache.

SenCache marks each transformer with a `_cache_config` (`SenCacheConfig`), the attribute diffusers'
own caches use, so `transformer.enable_cache(...)` refuses to stack another cache on top, and
`apply` refuses a transformer on which a diffusers cache is enabled.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from policies import Policy, config_fingerprint
from policies.errors import InputError
from sencache.adapters import adapter_for
from sencache.report import RunReport
from sencache.rule import RuleParams
from sencache.runtime import CaptureHooks, _Runtime
from sencache.stack import StackHooks, install_stack, remove_stack
from sencache.taylor import install_forecast, remove_forecast

__all__ = ["EXPERTS", "SenCacheConfig", "SenCacheHandle", "apply", "remove", "rule_params"]

logger = logging.getLogger("sencache")

_HANDLE_ATTR = "_sencache_handle"
#: default order of forecast "taylor" (benchmarks/reuse_modes.py measures 1 against 2)
TAYLOR_ORDER = 1
#: default units of forecast "taylor": step indices measured 1.8 dB closer to full compute than
#: timesteps on toy-wan (shifted flow-matching schedule; benchmarks/reuse_modes.py)
TAYLOR_UNITS = "step"

#: the pipeline attributes that hold a denoiser SenCache caches, in the order the pipeline runs them
EXPERTS = ("transformer", "transformer_2")


class _NamesTheRemedy(type):
    """diffusers' refusal prints `type(config)`: make that say what to do."""

    def __repr__(cls) -> str:
        return "SenCache (applied by sencache.apply; undo it with sencache.remove(pipe) first)"


@dataclass(frozen=True)
class SenCacheConfig(metaclass=_NamesTheRemedy):
    """The `_cache_config` marker SenCache leaves on a transformer it caches.

    With it, `transformer.is_cache_enabled` is True and diffusers' `enable_cache` refuses to add
    a second cache ("Caching has already been enabled with SenCache (...; undo it with
    sencache.remove(pipe) first)"). `disable_cache()` cannot remove SenCache: `sencache.remove` does.
    """

    operating_point: str
    expert: str


def rule_params(policy: Policy, operating_point: str | None = None, speedup: float | None = None,
                num_steps: int | None = None) -> tuple[RuleParams, str]:
    """Resolve a policy and one of its operating points into the rule's parameters (scored with
    the point's own reuse mode's predictor; `speedup` picks by `num_steps` where points state it)."""
    point = policy.operating_point(name=operating_point, speedup=speedup, num_steps=num_steps)
    params = RuleParams.from_parts(policy.predictor_for(point), policy.sensitivity, point)
    return params, point.name


@dataclass
class _Expert:
    """One cached denoiser: its hooks and its runtime."""

    name: str
    transformer: torch.nn.Module
    runtime: _Runtime
    stack: StackHooks
    capture: CaptureHooks
    policy: Policy


class SenCacheHandle:
    """What `apply` returns: the report of the last call, and the way back (`remove`)."""

    def __init__(self, experts: list[_Expert]) -> None:
        self.experts = experts
        self.transformer = experts[0].transformer
        self.policy = experts[0].policy
        self._runtime = experts[0].runtime
        self._stack = experts[0].stack

    @property
    def operating_point(self) -> str:
        return self._runtime.point_name

    def set_timesteps(self, timesteps: Any) -> None:
        """Give the schedule when SenCache is applied to a bare transformer (no pipeline)."""
        schedule = np.asarray(torch.as_tensor(timesteps).float().cpu(), dtype=np.float64)
        for expert in self.experts:
            expert.runtime.schedule = schedule

    def report(self, expert: str | None = None) -> RunReport:
        """The last (or current) call's computed mask, scores, thresholds and per-sample NFE.

        With two experts (Wan 2.2 A14B) the report covers every step, each from the expert that
        ran it; `expert="transformer_2"` gives one expert's own (its other steps read "not run").
        """
        chosen = [e for e in self.experts if expert is None or e.name == expert]
        if not chosen:
            raise InputError(f"no expert {expert!r} is cached; cached: {', '.join(e.name for e in self.experts)}")
        reports = [r for r in (e.runtime.report() for e in chosen) if r is not None]
        if not reports:
            raise RuntimeError("no denoising call has run under SenCache yet: call the pipeline first")
        return reports[0] if len(reports) == 1 else RunReport.combine(reports)

    def reset(self) -> None:
        """Drop the current call's decisions and cached residuals now (e.g. after an interrupted call)."""
        for expert in self.experts:
            expert.runtime.clear()

    def remove(self) -> None:
        for expert in self.experts:
            _remove_transformer(expert.transformer)


def _denoisers(target: Any) -> tuple[list[tuple[str, torch.nn.Module]], Any | None]:
    if isinstance(target, torch.nn.Module):
        return [("transformer", target)], None
    found = [(name, getattr(target, name, None)) for name in EXPERTS]
    found = [(name, module) for name, module in found if isinstance(module, torch.nn.Module)]
    if not found:
        raise InputError(f"{type(target).__name__} has no `transformer`: pass a diffusers pipeline or a transformer")
    return found, target


def _refuse_other_cache(name: str, transformer: torch.nn.Module) -> None:
    config = getattr(transformer, "_cache_config", None)
    if config is not None and not isinstance(config, SenCacheConfig):
        raise InputError(
            f"{name} ({type(transformer).__name__}) already has a diffusers cache enabled "
            f"({type(config).__name__}); two caches on one model would each skip blocks the other "
            f"relies on. Disable it first: pipe.{name}.disable_cache(), then sencache.apply(pipe, policy)"
        )


def _policy_for(policy: Policy | Mapping[str, Policy], name: str) -> Policy:
    if isinstance(policy, Mapping):
        if name not in policy:
            raise InputError(f"no policy for {name!r}: pass one per cached expert ({', '.join(EXPERTS)}) or a single one")
        return policy[name]
    return policy


def apply(
    target: Any,
    policy: Policy | Mapping[str, Policy],
    operating_point: str | None = None,
    speedup: float | None = None,
    strict: bool = True,
    factors_dtype: torch.dtype | None = None,
    taylor_order: int = TAYLOR_ORDER,
    taylor_units: str = TAYLOR_UNITS,
    num_steps: int | None = None,
) -> SenCacheHandle:
    """Apply `policy` to a pipeline (or a bare transformer); returns a handle with `report()`.

    Args:
        target: a diffusers pipeline with a supported `transformer`, or the transformer itself.
        policy: a `policies.Policy` fitted for this model (`sencache-calibrate export`), or a
            mapping from expert name to policy. Wan 2.2 A14B: one policy serves both experts by
            default, because its sensitivity table is indexed by timestep and the experts split
            the timesteps (high-noise `transformer` above the boundary, `transformer_2` below), and
            ε(p) is read at the step's position in the whole schedule; pass
            `{"transformer": p1, "transformer_2": p2}` to give each expert its own fit. Each expert
            keeps its own references and residuals (one expert's residual says nothing about the
            other's), so its first step always computes.
        operating_point: name of the policy's operating point (default: the policy's default).
        speedup: alternatively, the wanted speedup; picks the closest operating point.
        strict: refuse a policy fitted for another model (fingerprint mismatch); with False, warn.
        factors_dtype: under forecast "taylor" only, the dtype of the kept Taylor factors and of
            the forecast arithmetic. None (default): float32 where the model runs in float16 or
            bfloat16, else the model's dtype. bfloat16 halves the memory
            (`sencache.taylor_memory`) at the cost of rounding in long extrapolations.
        taylor_order: under forecast "taylor" only, 1 (default) or 2; 2 keeps one more factor
            per module (1.5x the memory).
        taylor_units: under forecast "taylor" only, what the forecast extrapolates along:
            "step" (step indices, the default, as diffusers' TaylorSeer) or "timestep" (the
            model's timesteps, as the linear residual forecast).
        num_steps: with `speedup`, the step count the calls will use: points that state their
            compute per step count (`expected_nfe_by_steps`) are compared at it.

    Applying again replaces the earlier SenCache hooks; it never stacks, and it refuses a model on
    which a diffusers cache (`enable_cache`) is enabled. When the pipeline's scheduler is not the
    one the policy was fitted under, one warning says so.
    """
    if operating_point is not None and speedup is not None:
        raise InputError("pass operating_point or speedup, not both")
    denoisers, pipe = _denoisers(target)
    resolved = []
    for name, transformer in denoisers:
        _refuse_other_cache(name, transformer)
        adapter = adapter_for(transformer)
        chosen = _policy_for(policy, name)
        chosen.check_model(config_fingerprint(dict(transformer.config)), strict=strict)
        resolved.append((name, transformer, adapter, chosen, *rule_params(chosen, operating_point, speedup, num_steps)))
    warned: set[str] = set()
    experts = []
    for name, transformer, adapter, chosen, params, point_name in resolved:
        _remove_transformer(transformer)
        runtime = _Runtime(params, adapter, pipe, point_name, chosen.scheduler.class_name, warned)
        stack = install_stack(transformer, adapter, runtime)
        runtime.reset_residuals = stack.reset
        if params.forecast == "taylor":  # --- forecast "taylor" (sencache/taylor.py)
            forecast = install_forecast(transformer, adapter, order=taylor_order, factors_dtype=factors_dtype,
                                        units=taylor_units)
            runtime.module_forecast = forecast
            runtime.reset_residuals = lambda stack=stack, forecast=forecast: (stack.reset(), forecast.reset())
        runtime.context = lambda head=stack.head: head.state._context
        expert = _Expert(name, transformer, runtime, stack, CaptureHooks(transformer, runtime), chosen)
        transformer._cache_config = SenCacheConfig(point_name, name)
        experts.append(expert)
    handle = SenCacheHandle(experts)
    for expert in experts:
        setattr(expert.transformer, _HANDLE_ATTR, handle)
        expert.runtime._check_scheduler()
    logger.debug("SenCache applied to %s at operating point %r", ", ".join(e.name for e in experts), handle.operating_point)
    return handle


def _remove_transformer(transformer: torch.nn.Module) -> bool:
    handle = getattr(transformer, _HANDLE_ATTR, None)
    if handle is None:
        return False
    for expert in handle.experts:
        if expert.transformer is not transformer:
            continue
        expert.capture.remove()
        remove_stack(transformer, expert.stack.adapter)
        remove_forecast(transformer, expert.stack.adapter)
        expert.runtime.clear()  # frees the references and the cached residuals now
    if isinstance(getattr(transformer, "_cache_config", None), SenCacheConfig):
        transformer._cache_config = None
    delattr(transformer, _HANDLE_ATTR)
    return True


def remove(target: Any) -> None:
    """Remove SenCache from a pipeline or transformer: back to the exact original behaviour."""
    denoisers, _ = _denoisers(target)
    removed = [_remove_transformer(transformer) for _, transformer in denoisers]
    if not any(removed):
        warnings.warn("sencache.remove: SenCache was not applied to this model", stacklevel=2)
