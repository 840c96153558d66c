"""Field checks for the policy format: every refusal names the file, the field path and the fix.

A `Where` is the place a value came from (``policy.json``, ``operating_points[1].eps.values[3]``).
The checkers take a raw value (from JSON or from Python code) and either return it normalised to a
JSON-native type (tuples of floats, plain ints, strings) or raise `PolicyError` through
`Where.fail`. They never let a `TypeError`, `KeyError` or `ValueError` escape.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from policies.errors import PolicyError

__all__ = [
    "EXPORT_FIX",
    "Where",
    "check_keys",
    "json_native",
    "mapping",
    "nonneg_int",
    "number",
    "numbers_tuple",
    "optional_number",
    "text",
]

#: The remedy for a field that a person should not have to edit by hand.
EXPORT_FIX = (
    "re-export the policy with `sencache-calibrate export --db <store> --out <policy.json>`, "
    "or correct the field by hand"
)
_MAX_DEPTH = 64


@dataclass(frozen=True)
class Where:
    """A location inside a policy: the source (file path or ``<dict>``) and the field path."""

    source: str = "<code>"
    path: str = ""

    def at(self, key: str | int) -> Where:
        """The location of a child: ``.key`` for a field, ``[i]`` for a list item."""
        if isinstance(key, int):
            return Where(self.source, f"{self.path}[{key}]")
        return Where(self.source, f"{self.path}.{key}" if self.path else key)

    def fail(self, reason: str, fix: str = EXPORT_FIX) -> NoReturn:
        """Raise `PolicyError`: ``<source>: field <path>: <reason>. Fix: <fix>``."""
        where = f"{self.source}: field {self.path}" if self.path else self.source
        raise PolicyError(f"{where}: {reason}. Fix: {fix}.")


def _describe(value: Any) -> str:
    text_ = repr(value)
    return text_ if len(text_) <= 60 else text_[:57] + "..."


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_int(value: Any) -> bool:
    return isinstance(value, (numbers.Integral)) and not isinstance(value, (bool, np.bool_))


def mapping(value: Any, where: Where) -> Mapping:
    """The value as a mapping with string keys (a JSON object)."""
    if not isinstance(value, Mapping):
        where.fail(f"must be a JSON object, got {type(value).__name__} {_describe(value)}")
    for key in value:
        if not isinstance(key, str):
            where.fail(f"object keys must be strings, got {_describe(key)}")
    return value


def check_keys(value: Any, where: Where, required: Sequence[str], optional: Sequence[str] = ()) -> Mapping:
    """The value as an object that has every `required` key, and no key outside `required` and
    `optional`: names a missing or unknown one."""
    obj = mapping(value, where)
    for key in required:
        if key not in obj:
            where.at(key).fail(
                "is missing", f"add the field `{key}` (this part needs: {', '.join(required)})"
            )
    known = tuple(required) + tuple(optional)
    for key in obj:
        if key not in known:
            where.at(key).fail(
                "is not a field of this part of the policy format",
                f"remove it or check its spelling (known fields: {', '.join(known)})",
            )
    return obj


def text(value: Any, where: Where, *, nonempty: bool = True) -> str:
    """A string; non-empty unless told otherwise."""
    if not isinstance(value, str):
        where.fail(f"must be a string, got {type(value).__name__} {_describe(value)}")
    if nonempty and not value.strip():
        where.fail("must be a non-empty string")
    return str(value)


def number(
    value: Any,
    where: Where,
    *,
    low: float | None = 0.0,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """A finite real number in [low, high] (or (low, high] with `low_open`); None bounds are open."""
    if not _is_real(value):
        where.fail(f"must be a number, got {type(value).__name__} {_describe(value)}")
    try:
        out = float(value)
    except OverflowError:  # an integer beyond the float range
        out = math.inf
    if not math.isfinite(out):
        where.fail(f"must be finite, got {out}")
    if low is not None and (out <= low if low_open else out < low):
        sign = ">" if low_open else ">="
        where.fail(f"must be {sign} {low:g}, got {out:g}")
    if high is not None and out > high:
        where.fail(f"must be <= {high:g}, got {out:g}")
    return out


def optional_number(value: Any, where: Where, **bounds: Any) -> float | None:
    """None (not measured) or a number checked like `number`."""
    return None if value is None else number(value, where, **bounds)


def nonneg_int(value: Any, where: Where, *, low: int = 0) -> int:
    """An integer >= low (booleans and floats are refused)."""
    if not _is_int(value):
        where.fail(f"must be an integer, got {type(value).__name__} {_describe(value)}")
    out = int(value)
    if out < low:
        where.fail(f"must be an integer >= {low}, got {out}")
    return out


def numbers_tuple(
    value: Any, where: Where, *, nonneg: bool = True, min_len: int = 1
) -> tuple[float, ...]:
    """A list of finite numbers (>= 0 with `nonneg`) as a tuple of floats."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        where.fail(f"must be a list of numbers, got {type(value).__name__} {_describe(value)}")
    if len(value) < min_len:
        where.fail(f"must hold at least {min_len} number(s), got {len(value)}")
    low = 0.0 if nonneg else None
    return tuple(number(item, where.at(i), low=low) for i, item in enumerate(value))


def json_native(value: Any, where: Where, depth: int = 0) -> Any:
    """A deep copy of `value` made of JSON types only (dict, list, str, finite number, bool, None)."""
    if depth > _MAX_DEPTH:
        where.fail(f"is nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if _is_int(value):
        return int(value)
    if _is_real(value):
        out = float(value)  # not an int here, so no overflow
        if not math.isfinite(out):
            where.fail(f"must be finite, got {out} (JSON has no NaN or infinity)")
        return out
    if isinstance(value, Mapping):
        obj = mapping(value, where)
        return {key: json_native(item, where.at(key), depth + 1) for key, item in obj.items()}
    if isinstance(value, (list, tuple)):
        return [json_native(item, where.at(i), depth + 1) for i, item in enumerate(value)]
    where.fail(f"must hold JSON values only, got {type(value).__name__} {_describe(value)}")
