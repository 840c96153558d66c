"""A static schedule: the steps an operating point computes, written as positions in the trajectory.

A fixed compute mask is a first-class operating point, not thresholds at 0 and 1e30: its
``schedule`` gives the compute positions as fractions ``p = i / (N − 1)`` of the trajectory, which
mean the same at any step count N.

```json
"schedule": {"compute_at": [0.0, 0.069, 0.138, ..., 1.0], "compute_fraction": 0.5}
```

How an N-step run turns it into steps (`StaticSchedule.steps`):

- without ``compute_fraction`` the point computes ``len(compute_at)`` steps at every N: each
  position goes to its nearest step ``round(p·(N − 1))``, duplicates merge;
- with ``compute_fraction`` f it computes ``M = round(f·N)`` steps at every N (clamped to
  [2, N]), so its compute *fraction* is the same at 20, 30 or 50 steps: the M targets are the
  positions resampled over their rank (``F(j / (M − 1))``, F the piecewise-linear map from rank to
  position), so the schedule keeps its shape — dense where it was dense. Each target goes to its
  nearest free step. When M is the number of positions the targets are the positions themselves.

The first and the last step always compute (positions 0 and 1 are added when missing), because
the first step has nothing to reuse and the last one is what the user sees.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from policies._fields import Where, check_keys, number, numbers_tuple, optional_number

__all__ = ["StaticSchedule", "evenly_spaced"]


@dataclass(frozen=True)
class StaticSchedule:
    """Compute positions in [0, 1] and, optionally, the compute fraction kept at every step count.

    Args:
        compute_at (`list[float]`): positions ``i / (N − 1)`` in [0, 1]; sorted and deduplicated on
            construction, with 0 and 1 added.
        compute_fraction (`float` or `None`): the fraction of steps computed at any N, in (0, 1];
            None computes ``len(compute_at)`` steps whatever N is.
    """

    compute_at: tuple[float, ...]
    compute_fraction: float | None = None
    _where: InitVar[Where | None] = None

    KEYS = ("compute_at",)
    OPTIONAL_KEYS = ("compute_fraction",)

    def __post_init__(self, _where: Where | None) -> None:
        where = _where if _where is not None else Where("<code>", "schedule")
        raw = numbers_tuple(self.compute_at, where.at("compute_at"))
        for i, p in enumerate(raw):
            number(p, where.at("compute_at").at(i), low=0.0, high=1.0)
        positions = tuple(sorted({0.0, 1.0, *raw}))
        object.__setattr__(self, "compute_at", positions)
        f = optional_number(self.compute_fraction, where.at("compute_fraction"), low=0.0, high=1.0, low_open=True)
        object.__setattr__(self, "compute_fraction", f)

    @classmethod
    def from_dict(cls, data: Any, where: Where | None = None) -> StaticSchedule:
        where = where or Where("<dict>", "schedule")
        obj = check_keys(data, where, cls.KEYS, cls.OPTIONAL_KEYS)
        return cls(obj["compute_at"], obj.get("compute_fraction"), _where=where)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"compute_at": list(self.compute_at)}
        if self.compute_fraction is not None:
            out["compute_fraction"] = self.compute_fraction
        return out

    def count(self, num_steps: int) -> int:
        """How many steps an N-step run computes (before merging duplicates when no fraction)."""
        if num_steps <= 2:
            return num_steps
        if self.compute_fraction is None:
            return min(num_steps, len(self.compute_at))
        return int(min(num_steps, max(2, round(self.compute_fraction * num_steps))))

    def steps(self, num_steps: int) -> frozenset[int]:
        """The steps (0-based) an N-step run computes."""
        return _steps(self.compute_at, self.compute_fraction, int(num_steps))

    def fraction(self, num_steps: int) -> float:
        """The fraction of an N-step run's steps that compute."""
        return len(self.steps(num_steps)) / max(1, int(num_steps))


@lru_cache(maxsize=256)
def _steps(positions: tuple[float, ...], fraction: float | None, n: int) -> frozenset[int]:
    if n <= 2:
        return frozenset(range(n))
    pos = np.asarray(positions, dtype=np.float64)
    if fraction is None:
        return frozenset(int(s) for s in np.rint(pos * (n - 1))) | {0, n - 1}
    m = StaticSchedule(positions, fraction).count(n)
    if m == len(pos):
        targets = pos
    else:  # the positions resampled over their rank: same shape, m of them
        targets = np.interp(np.linspace(0.0, 1.0, m), np.linspace(0.0, 1.0, len(pos)), pos)
    taken: set[int] = {0, n - 1}
    for target in targets[1:-1] * (n - 1):
        free = [s for s in range(n) if s not in taken]
        if not free:
            break
        taken.add(min(free, key=lambda s: (abs(s - target), s)))
    return frozenset(taken)


def evenly_spaced(fraction: float, num_steps: int) -> StaticSchedule:
    """Evenly spaced skipping at `fraction` of `num_steps` steps, as a static schedule.

    The positions are those of ``M = round(fraction·N)`` steps spread evenly over the N steps
    (first and last included), so at N steps it computes exactly those.
    """
    n = max(2, int(num_steps))
    m = int(min(n, max(2, round(fraction * n))))
    steps = np.unique(np.rint(np.linspace(0, n - 1, m)).astype(int))
    return StaticSchedule(tuple(float(s) / (n - 1) for s in steps), m / n)
