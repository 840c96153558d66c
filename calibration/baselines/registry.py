"""`METHODS`: every benchmarked method, its knob sweep, and what it needs prepared once per model.

A method's `prepare(ctx)` does the per-model work its authors prescribe (MagCache's calibrate
run, TeaCache's polynomial fit, the paper rule's sensitivity estimate) and returns the keyword
arguments of its `apply`; `apply(pipe, knob, **prepared)` installs it for one knob value.
Calibration always uses calibration prompts, never the held-out ones the bench scores on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from calibration.baselines._common import BaselineHandle, MethodUnavailable
from calibration.baselines.dbcache import apply_dbcache
from calibration.baselines.easycache import apply_easycache
from calibration.baselines.fbcache import apply_fbcache
from calibration.baselines.magcache import apply_magcache, calibrate_ratios
from calibration.baselines.none import apply_none
from calibration.baselines.sencache_paper import apply_sencache_paper, quick_sensitivity
from calibration.baselines.sencache_policy import apply_sencache, policy_knobs
from calibration.baselines.sencache_static import apply_sencache_static, static_knobs
from calibration.baselines.taylorseer import apply_taylorseer
from calibration.baselines.teacache import apply_teacache, coefficients_from_store, fit_coefficients
from calibration.baselines.uniform import apply_uniform

__all__ = ["METHODS", "Method", "MethodContext", "method_names", "resolve_methods"]


@dataclass
class MethodContext:
    """What `prepare` may use: the pipeline, its call arguments, the policy, calibration prompts,
    and a calibration store of the same model (`store`: a DuckDB path) when there is one."""

    pipe: Any
    call_kwargs: dict[str, Any]
    policy: Any | None = None
    calibration_prompts: list[str] = field(default_factory=list)
    seed: int = 0
    store: str | None = None

    @property
    def steps(self) -> int:
        return int(self.call_kwargs["num_inference_steps"])


@dataclass(frozen=True)
class Method:
    """One benchmarked method.

    Attributes:
        name: the name used on the command line and in `bench.json`.
        apply: `apply(pipe, knob, **prepared) -> BaselineHandle`.
        knobs: the default sweep (None: derived from the context, e.g. the policy's points).
        knob_meaning: what the knob is, for the summary.
        prepare: per-model preparation returning (apply kwargs, JSON notes); None if none.
        needs_policy: the method cannot run without `--policy`.
    """

    name: str
    apply: Callable[..., BaselineHandle]
    knobs: tuple[Any, ...] | None
    knob_meaning: str
    prepare: Callable[[MethodContext], tuple[dict[str, Any], dict[str, Any]]] | None = None
    needs_policy: bool = False
    #: the sweep from the policy when `knobs` is None (default: its points and scaled ε)
    knobs_of: Callable[[Any], list[Any]] = policy_knobs

    def sweep(self, ctx: MethodContext) -> list[Any]:
        if self.knobs is not None:
            return list(self.knobs)
        return self.knobs_of(ctx.policy)

    def setup(self, ctx: MethodContext) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.needs_policy and ctx.policy is None:
            raise MethodUnavailable(
                f"method {self.name!r} needs a fitted policy: pass --policy FILE "
                "(make one with `sencache-calibrate fit` then `sencache-calibrate export`)"
            )
        return self.prepare(ctx) if self.prepare is not None else ({}, {})


def _prep_sencache(ctx: MethodContext) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"policy": ctx.policy}, {"policy": ctx.policy.source, "operating_points": list(ctx.policy.operating_point_names)}


def _prep_static(ctx: MethodContext) -> tuple[dict[str, Any], dict[str, Any]]:
    return ({"policy": ctx.policy, "num_inference_steps": ctx.steps},
            {"policy": ctx.policy.source, "twins": "policy provenance metrics.static_twins, else evenly spaced"})


def _prep_paper(ctx: MethodContext) -> tuple[dict[str, Any], dict[str, Any]]:
    if ctx.policy is not None:
        return {"sensitivity": ctx.policy.sensitivity}, {"sensitivity": f"from the policy's table ({ctx.policy.source})"}
    table = quick_sensitivity(ctx.pipe, ctx.call_kwargs, ctx.calibration_prompts[:1], ctx.seed)
    return {"sensitivity": table}, {"sensitivity": "quick trajectory estimate on 1 calibration prompt"}


def _prep_teacache(ctx: MethodContext) -> tuple[dict[str, Any], dict[str, Any]]:
    if ctx.store is not None:
        from policies import config_fingerprint

        fingerprint = config_fingerprint(dict(ctx.pipe.transformer.config))
        coefficients, note = coefficients_from_store(ctx.store, fingerprint)
    else:
        coefficients, note = fit_coefficients(ctx.pipe, ctx.call_kwargs, ctx.calibration_prompts[:2], ctx.seed)
    note["coefficients"] = list(coefficients)
    return {"coefficients": coefficients}, note


def _prep_magcache(ctx: MethodContext) -> tuple[dict[str, Any], dict[str, Any]]:
    ratios = calibrate_ratios(ctx.pipe, ctx.call_kwargs, ctx.calibration_prompts[0], ctx.seed)
    return ({"mag_ratios": ratios, "num_inference_steps": ctx.steps},
            {"mag_ratios": ratios, "source": "diffusers MagCacheConfig(calibrate=True), 1 calibration prompt"})


def _prep_steps(ctx: MethodContext) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"num_inference_steps": ctx.steps}, {}


_THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("none", apply_none, (None,), "full compute"),
    Method("uniform", apply_uniform, (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3), "fraction of steps computed, evenly spaced"),
    Method("sencache-paper", apply_sencache_paper, (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8),
           "late ε (early ε = half), a=b=1, c=0, K=3", prepare=_prep_paper),
    Method("sencache", apply_sencache, None, "operating point [*ε scale] of the fitted policy",
           prepare=_prep_sencache, needs_policy=True),
    Method("sencache-static", apply_sencache_static, None, "operating point of the fitted policy, run as its static twin",
           prepare=_prep_static, needs_policy=True, knobs_of=static_knobs),
    Method("teacache", apply_teacache, (0.05, 0.1, 0.2, 0.4, 0.8, 1.6), "accumulated rescaled change threshold",
           prepare=_prep_teacache),
    Method("magcache", apply_magcache, (0.01, 0.03, 0.06, 0.12, 0.25, 0.5, 1.0), "accumulated magnitude error threshold",
           prepare=_prep_magcache),
    Method("fbcache", apply_fbcache, _THRESHOLDS, "first-block residual change threshold"),
    Method("taylorseer", apply_taylorseer, (2, 3, 4, 6), "cache interval (one refresh every N steps)"),
    Method("easycache", apply_easycache, _THRESHOLDS, "accumulated predicted change threshold τ"),
    Method("dbcache", apply_dbcache, _THRESHOLDS, "F1B0 residual-diff threshold", prepare=_prep_steps),
)}


def method_names() -> list[str]:
    return list(METHODS)


def resolve_methods(names: list[str] | str | None, have_policy: bool) -> list[str]:
    """Validate requested names (an InputError lists the known ones); default: all that can run.

    `none` is always run first: every other method is measured against it.
    """
    from policies.errors import InputError

    if names is None:
        chosen = [n for n in METHODS if have_policy or not METHODS[n].needs_policy]
    else:
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in names if n not in METHODS]
        if unknown:
            raise InputError(f"unknown method(s) {', '.join(map(repr, unknown))}; known methods: {', '.join(METHODS)}")
        if not names:
            raise InputError(f"no method given; known methods: {', '.join(METHODS)}")
        chosen = list(dict.fromkeys(names))
        missing = [n for n in chosen if METHODS[n].needs_policy and not have_policy]
        if missing:
            raise InputError(f"method(s) {', '.join(missing)} need a fitted policy: pass --policy FILE "
                             "(make one with `sencache-calibrate fit` then `sencache-calibrate export`)")
    return ["none"] + [n for n in chosen if n != "none"]
