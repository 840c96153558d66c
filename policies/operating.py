"""One operating point of a policy: an ε schedule, the skip limit K and the always-compute zones —
or a static schedule (`policies.schedule`): the compute positions themselves.

A **score-driven** point has ``eps``, ``max_skips``, ``warmup_steps`` and ``final_steps``; a
**static** point has ``schedule`` instead of all four (it computes exactly its scheduled steps, so
none of them applies). Both may state ``expected_nfe_by_steps``, the compute fraction measured at
fit time at several step counts (``{"20": 0.45, "30": 0.5, "50": 0.52}``), so that `speedup=` can
pick by the call's step count.

The warm-up and final zones are written so that one policy serves any step count:

- an **integer** (``3``) is a count of steps;
- a **float strictly between 0 and 1** (``0.1``) is a fraction of the N steps of the run, turned
  into a count by `OperatingPoint.zones` as ``ceil(f·N)`` (so any positive fraction protects at
  least one step). ``0.0`` is read as the count 0.

Any other float (``2.0``, ``1.0``, ``1.5``) is refused: it is ambiguous between the two readings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import InitVar, dataclass
from typing import Any

from policies._fields import Where, check_keys, nonneg_int, number, optional_number, text
from policies.schedule import StaticSchedule
from policies.tables import EpsSchedule

__all__ = ["FORECASTS", "OperatingPoint", "zone_steps"]

#: What a skipped step reuses: "none" the last computed residual as is (the paper's rule);
#: "linear" that residual extrapolated along the line through the sample's last two computed
#: residuals, in timestep units (a first-order forecast, as TaylorSeer does for features);
#: "taylor" runs every block on the current input with its attention and feed-forward outputs
#: forecast per module from the sample's last computed ones (sencache/taylor.py).
FORECASTS = ("none", "linear", "taylor")

_ZONE_FIX = "write an integer count of steps (e.g. 2) or a fraction of the steps in (0, 1) (e.g. 0.1)"


def _zone(value: Any, where: Where) -> int | float:
    if isinstance(value, float) or (hasattr(value, "dtype") and value.dtype.kind == "f"):
        f = number(value, where, low=0.0)
        if f == 0.0:
            return 0
        if f >= 1.0:
            where.fail(f"a float zone is a fraction of the steps and must lie in (0, 1), got {f:g}",
                       _ZONE_FIX)
        return f
    return nonneg_int(value, where)


def zone_steps(zone: int | float, num_steps: int) -> int:
    """The step count a zone stands for in an N-step run: a count, or ``ceil(f·N)`` for a fraction.

    Clamped to N. ``ceil`` is taken with a 1e-9 tolerance so ``0.1·30`` gives 3, not 4.
    """
    if isinstance(zone, float):
        return min(num_steps, math.ceil(zone * num_steps - 1e-9))
    return min(num_steps, int(zone))


def _nfe_by_steps(value: Any, where: Where) -> tuple[tuple[int, float], ...] | None:
    """``{"20": f, ...}`` (or ``((20, f), ...)``) as sorted ``((20, f), ...)``; None when not stated."""
    if value is None:
        return None
    fix = 'write e.g. {"20": 0.45, "30": 0.5, "50": 0.5}, or leave the field out'
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (tuple, list)) and all(isinstance(v, (tuple, list)) and len(v) == 2 for v in value):
        pairs = [tuple(v) for v in value]
    else:
        where.fail(f"must be a JSON object {{step count: fraction}}, got {type(value).__name__}", fix)
    if not pairs:
        where.fail("must state at least one step count", fix)
    out: dict[int, float] = {}
    for key, frac in pairs:
        steps = int(key) if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()) else 0
        if steps < 1 or isinstance(key, bool):
            where.at(str(key)).fail(f"a key must be a step count (a positive integer), got {key!r}", fix)
        out[steps] = number(frac, where.at(str(key)), low=0.0, high=1.0, low_open=True)
    return tuple(sorted(out.items()))


@dataclass(frozen=True)
class OperatingPoint:
    """A named trade-off between speed and fidelity.

    Args:
        name (`str`): unique within the policy, e.g. ``"fast"``, ``"balanced"``.
        eps (`EpsSchedule`): the threshold over the step position; higher is faster and less
            faithful. A mapping ``{"positions": [...], "values": [...]}`` is accepted too. None
            for a static point.
        max_skips (`int`): K, the most consecutive skipped steps, >= 1. Higher is faster.
        warmup_steps (`int` or `float`): steps at the start that always compute: a count, or a
            fraction of the steps in (0, 1) (see the module docstring).
        final_steps (`int` or `float`): steps at the end that always compute, same convention.
        expected_nfe_fraction (`float` or `None`): fraction of block-stack evaluations measured
            at fit time, in (0, 1]; None when not measured (e.g. the paper policy).
        expected_error (`float` or `None`): final-output error measured at fit time, >= 0.
        forecast (`str`, defaults to `"none"`): what a skipped step reuses (`FORECASTS`).
            ``"linear"`` extrapolates the residual from the sample's last two computed steps:
            at the same steps skipped it is usually closer to full compute, at the cost of one
            more cached residual per cache context. ``"taylor"`` runs the blocks' cheap parts
            (norms, modulation, gates) on the current input and forecasts each attention and
            feed-forward output: costlier per skipped step and far more memory (see
            `sencache.taylor_memory`). Optional in the file; written only when not ``"none"``,
            so files without it read as before.
        schedule (`StaticSchedule` or `None`): a static point's compute positions (a mapping
            ``{"compute_at": [...], "compute_fraction": f}`` is accepted too); the point then
            computes exactly those steps, and has no ``eps`` (K and the zones do not apply).
        expected_nfe_by_steps (`dict[int, float]` or `None`): the compute fraction measured at
            fit time per step count; kept as sorted ``(steps, fraction)`` pairs.
    """

    name: str
    eps: EpsSchedule | None = None
    max_skips: int = 3
    warmup_steps: int | float = 0
    final_steps: int | float = 0
    expected_nfe_fraction: float | None = None
    expected_error: float | None = None
    forecast: str = "none"
    schedule: StaticSchedule | None = None
    expected_nfe_by_steps: tuple[tuple[int, float], ...] | None = None
    _where: InitVar[Where | None] = None

    KEYS = ("name", "eps", "max_skips", "warmup_steps", "final_steps",
            "expected_nfe_fraction", "expected_error")
    STATIC_KEYS = ("name", "schedule", "expected_nfe_fraction", "expected_error")
    OPTIONAL_KEYS = ("forecast", "expected_nfe_by_steps")

    def __post_init__(self, _where: Where | None) -> None:
        where = _where if _where is not None else Where("<code>", "operating_point")
        object.__setattr__(self, "name", text(self.name, where.at("name")))
        schedule = self.schedule
        if isinstance(schedule, Mapping):
            schedule = StaticSchedule.from_dict(schedule, where.at("schedule"))
        elif schedule is not None and not isinstance(schedule, StaticSchedule):
            where.at("schedule").fail(f"must be a StaticSchedule or an object {{compute_at}}, got {type(schedule).__name__}")
        object.__setattr__(self, "schedule", schedule)
        object.__setattr__(self, "expected_nfe_by_steps",
                           _nfe_by_steps(self.expected_nfe_by_steps, where.at("expected_nfe_by_steps")))
        eps = self.eps
        if schedule is not None:
            if eps is not None:
                where.at("eps").fail("a static point (with `schedule`) has no eps: it computes exactly its "
                                     "scheduled steps", "drop `eps`, or drop `schedule` for a score-driven point")
        elif eps is None:
            where.at("eps").fail("is missing", "add `eps` {positions, values}, or a static `schedule` {compute_at}")
        elif isinstance(eps, Mapping):
            eps = EpsSchedule.from_dict(eps, where.at("eps"))
        elif not isinstance(eps, EpsSchedule):
            where.at("eps").fail(
                f"must be an EpsSchedule or an object {{positions, values}}, got {type(eps).__name__}"
            )
        if schedule is None:
            object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "max_skips", nonneg_int(self.max_skips, where.at("max_skips"), low=1))
        object.__setattr__(self, "warmup_steps", _zone(self.warmup_steps, where.at("warmup_steps")))
        object.__setattr__(self, "final_steps", _zone(self.final_steps, where.at("final_steps")))
        nfe = optional_number(
            self.expected_nfe_fraction, where.at("expected_nfe_fraction"), low=0.0, high=1.0,
            low_open=True,
        )
        err = optional_number(self.expected_error, where.at("expected_error"))
        object.__setattr__(self, "expected_nfe_fraction", nfe)
        object.__setattr__(self, "expected_error", err)
        forecast = text(self.forecast, where.at("forecast"))
        if forecast not in FORECASTS:
            where.at("forecast").fail(f"unknown forecast {forecast!r}", f"use one of: {', '.join(FORECASTS)}")
        object.__setattr__(self, "forecast", forecast)

    @classmethod
    def from_dict(cls, data: Any, where: Where | None = None) -> OperatingPoint:
        where = where or Where("<dict>", "operating_point")
        static = isinstance(data, Mapping) and "schedule" in data
        if isinstance(data, Mapping) and not static and "eps" not in data:
            where.at("eps").fail("is missing: a point needs `eps` (score-driven) or `schedule` (static)",
                                 "add `eps: {positions, values}`, or `schedule: {compute_at: [...]}` for a static point")
        keys = cls.STATIC_KEYS if static else cls.KEYS
        obj = check_keys(data, where, keys, cls.OPTIONAL_KEYS)
        kwargs = {key: obj[key] for key in keys + cls.OPTIONAL_KEYS if key in obj}
        if static:
            kwargs["schedule"] = StaticSchedule.from_dict(obj["schedule"], where.at("schedule"))
        else:
            kwargs["eps"] = EpsSchedule.from_dict(obj["eps"], where.at("eps"))
        return cls(**kwargs, _where=where)

    def to_dict(self) -> dict[str, Any]:
        if self.schedule is not None:
            out = {key: getattr(self, key) for key in self.STATIC_KEYS if key != "schedule"}
            out["schedule"] = self.schedule.to_dict()
        else:
            out = {key: getattr(self, key) for key in self.KEYS}
            out["eps"] = self.eps.to_dict()
        if self.forecast != "none":
            out["forecast"] = self.forecast
        if self.expected_nfe_by_steps is not None:
            out["expected_nfe_by_steps"] = {str(n): f for n, f in self.expected_nfe_by_steps}
        return out

    @property
    def static(self) -> bool:
        """True for a static point: it computes its `schedule`'s steps, whatever the scores."""
        return self.schedule is not None

    def expected_nfe_at(self, num_steps: int | None = None) -> float | None:
        """The compute fraction expected at `num_steps`: the one measured at the nearest stated
        step count (`expected_nfe_by_steps`), else `expected_nfe_fraction`."""
        table = self.expected_nfe_by_steps
        if num_steps is None or not table:
            return self.expected_nfe_fraction
        return min(table, key=lambda item: (abs(item[0] - int(num_steps)), item[0]))[1]

    @property
    def expected_speedup(self) -> float | None:
        """``1 / expected_nfe_fraction``: the block-stack speedup measured at fit time."""
        f = self.expected_nfe_fraction
        return None if f is None else 1.0 / f

    def expected_speedup_at(self, num_steps: int | None = None) -> float | None:
        """``1 / expected_nfe_at(num_steps)``."""
        f = self.expected_nfe_at(num_steps)
        return None if f is None else 1.0 / f

    def zones(self, num_steps: int) -> tuple[int, int]:
        """``(warmup, final)``: how many steps at the start and at the end always compute.

        Example: ``warmup_steps=0.1, final_steps=2`` with 30 steps gives ``(3, 2)``: steps 0–2 and
        28–29 compute. Each count is clamped to N; when they overlap every step computes.
        """
        n = nonneg_int(num_steps, Where("<call>", "num_steps"), low=1)
        return zone_steps(self.warmup_steps, n), zone_steps(self.final_steps, n)

    def protected(self, step: int, num_steps: int) -> bool:
        """True when step i (0-based) of an N-step run lies in the warm-up or final zone."""
        warmup, final = self.zones(num_steps)
        return step < warmup or step >= num_steps - final
