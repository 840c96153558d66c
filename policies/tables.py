"""The two interpolated tables of a policy: sensitivities over t, and ε over the step position.

Both are piecewise-linear and clamped at the ends (``numpy.interp``). A scalar argument gives a
Python float, an array gives an array of the same shape, so the runtime can look up every sample
of a batch at once.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from policies._fields import Where, check_keys, numbers_tuple, text

__all__ = ["EpsSchedule", "SensitivityTable", "TWO_LEVEL_GAP"]

#: Width of the ramp that stands for a step in a piecewise-linear ε: the two-level schedule is
#: the knots ``[0, f, f + TWO_LEVEL_GAP, 1]`` with values ``[early, early, late, late]``.
TWO_LEVEL_GAP = 1e-6


def _here(where: Where | None, name: str) -> Where:
    return where if where is not None else Where("<code>", name)


def _same_length(where: Where, name: str, values: tuple, reference: str, n: int) -> None:
    if len(values) != n:
        where.at(name).fail(
            f"has {len(values)} entries but `{reference}` has {n}; the lists must be the same length"
        )


@overload
def _interp(x: float, xp: NDArray, fp: NDArray) -> float: ...
@overload
def _interp(x: ArrayLike, xp: NDArray, fp: NDArray) -> NDArray: ...
def _interp(x, xp, fp):
    out = np.interp(np.asarray(x, dtype=np.float64), xp, fp)
    return float(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class SensitivityTable:
    """`J_x(t)` and `J_t(t)` sampled at timesteps in the model's own units.

    Args:
        timesteps (`list[float]`): strictly monotone, ascending or descending (diffusion order);
            finite. At least one entry.
        J_x (`list[float]`): sensitivity to the latent at each timestep, finite and >= 0.
        J_t (`list[float]`): sensitivity to the timestep at each timestep, finite and >= 0.
        estimator (`str`): which estimator produced the table (``"trajectory"``, ``"reference"``).
    """

    timesteps: tuple[float, ...]
    J_x: tuple[float, ...]
    J_t: tuple[float, ...]
    estimator: str = "trajectory"
    _where: InitVar[Where | None] = None
    _t: NDArray = field(init=False, repr=False, compare=False)
    _jx: NDArray = field(init=False, repr=False, compare=False)
    _jt: NDArray = field(init=False, repr=False, compare=False)

    KEYS = ("timesteps", "J_x", "J_t", "estimator")

    def __post_init__(self, _where: Where | None) -> None:
        where = _here(_where, "sensitivity")
        t = numbers_tuple(self.timesteps, where.at("timesteps"), nonneg=False)
        jx = numbers_tuple(self.J_x, where.at("J_x"))
        jt = numbers_tuple(self.J_t, where.at("J_t"))
        _same_length(where, "J_x", jx, "timesteps", len(t))
        _same_length(where, "J_t", jt, "timesteps", len(t))
        steps = np.diff(t)
        if len(t) > 1 and not (np.all(steps > 0) or np.all(steps < 0)):
            bad = int(np.flatnonzero(np.sign(steps) != np.sign(steps[0]))[0]) if steps[0] else 0
            where.at("timesteps").at(bad + 1).fail(
                "timesteps must be strictly increasing or strictly decreasing (no repeats), "
                f"got {t[bad]:g} then {t[bad + 1]:g}"
            )
        object.__setattr__(self, "timesteps", t)
        object.__setattr__(self, "J_x", jx)
        object.__setattr__(self, "J_t", jt)
        object.__setattr__(self, "estimator", text(self.estimator, where.at("estimator")))
        order = np.argsort(t)
        object.__setattr__(self, "_t", np.asarray(t)[order])
        object.__setattr__(self, "_jx", np.asarray(jx)[order])
        object.__setattr__(self, "_jt", np.asarray(jt)[order])

    @classmethod
    def from_dict(cls, data: Any, where: Where | None = None) -> SensitivityTable:
        where = where or Where("<dict>", "sensitivity")
        obj = check_keys(data, where, cls.KEYS)
        return cls(obj["timesteps"], obj["J_x"], obj["J_t"], obj["estimator"], _where=where)

    def to_dict(self) -> dict[str, Any]:
        return {
            "timesteps": list(self.timesteps),
            "J_x": list(self.J_x),
            "J_t": list(self.J_t),
            "estimator": self.estimator,
        }

    @classmethod
    def constant(
        cls, j_x: float = 1.0, j_t: float = 1.0, span: tuple[float, float] = (1000.0, 0.0)
    ) -> SensitivityTable:
        """A flat table: `J_x` and `J_t` the same at every t (before any `collect`)."""
        return cls(span, (j_x, j_x), (j_t, j_t), estimator="constant")

    def interpolate(self, t: ArrayLike) -> tuple[Any, Any]:
        """``(J_x(t), J_t(t))``: piecewise-linear in t, clamped to the first/last entry outside.

        A scalar t gives two floats; an array gives two arrays of its shape.
        """
        return _interp(t, self._t, self._jx), _interp(t, self._t, self._jt)


@dataclass(frozen=True)
class EpsSchedule:
    """The threshold ε(p) over the normalised step position ``p = i/(N−1)`` in [0, 1].

    Higher ε is faster and less faithful. Piecewise-linear between knots, clamped outside them,
    so one policy serves any step count.

    Args:
        positions (`list[float]`): knot positions, strictly increasing, inside [0, 1].
        values (`list[float]`): ε at each knot, finite and >= 0; same length as `positions`.
    """

    positions: tuple[float, ...]
    values: tuple[float, ...]
    _where: InitVar[Where | None] = None
    _p: NDArray = field(init=False, repr=False, compare=False)
    _v: NDArray = field(init=False, repr=False, compare=False)

    KEYS = ("positions", "values")

    def __post_init__(self, _where: Where | None) -> None:
        where = _here(_where, "eps")
        positions = numbers_tuple(self.positions, where.at("positions"))
        values = numbers_tuple(self.values, where.at("values"))
        for i, p in enumerate(positions):
            if p > 1.0:
                where.at("positions").at(i).fail(
                    f"a knot position must lie in [0, 1] (p = step/(steps-1)), got {p:g}"
                )
            if i and p <= positions[i - 1]:
                where.at("positions").at(i).fail(
                    "knot positions must be strictly increasing, "
                    f"got {positions[i - 1]:g} then {p:g}"
                )
        _same_length(where, "values", values, "positions", len(positions))
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "_p", np.asarray(positions))
        object.__setattr__(self, "_v", np.asarray(values))

    @classmethod
    def from_dict(cls, data: Any, where: Where | None = None) -> EpsSchedule:
        where = where or Where("<dict>", "eps")
        obj = check_keys(data, where, cls.KEYS)
        return cls(obj["positions"], obj["values"], _where=where)

    def to_dict(self) -> dict[str, Any]:
        return {"positions": list(self.positions), "values": list(self.values)}

    @classmethod
    def constant(cls, eps: float) -> EpsSchedule:
        """A flat threshold: ε(p) = eps everywhere."""
        return cls((0.0, 1.0), (eps, eps))

    @classmethod
    def two_level(cls, early: float, late: float, early_fraction: float = 0.2) -> EpsSchedule:
        """The paper's schedule: `early` for ``p <= early_fraction``, `late` after.

        A step is not piecewise-linear, so it is written as a ramp of width `TWO_LEVEL_GAP`:
        knots ``[0, f, f + 1e-6, 1]``, values ``[early, early, late, late]``. With N steps the
        positions ``i/(N−1)`` never fall inside the ramp unless N exceeds about a million.
        """
        if not 0.0 < early_fraction < 1.0 - TWO_LEVEL_GAP:
            Where("<code>", "early_fraction").fail(
                f"must lie in (0, 1), got {early_fraction!r}", "pass a fraction such as 0.2"
            )
        f = float(early_fraction)
        return cls((0.0, f, f + TWO_LEVEL_GAP, 1.0), (early, early, late, late))

    def __call__(self, p: ArrayLike) -> Any:
        """ε at position(s) p: a float for a scalar, an array for an array."""
        return _interp(p, self._p, self._v)

    def at_steps(self, num_steps: int) -> NDArray:
        """ε at every step position ``i/(N−1)`` of an N-step run (``p = 0`` when N is 1)."""
        n = int(num_steps)
        positions = np.arange(n) / (n - 1) if n > 1 else np.zeros(max(n, 0))
        return np.interp(positions, self._p, self._v)
