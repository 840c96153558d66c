"""`Policy`: the whole policy file — load, validate, save, pick an operating point, check the model.

```python
policy = Policy.load("policies/toy-wan.json", model_fingerprint=config_fingerprint(cfg))
point = policy.operating_point(speedup=2.0, num_steps=30)
predictor = policy.predictor_for(point)          # the point's own reuse mode's a, b, c, d
```

The file format, version 2 (what `save` writes)::

    {"format": "sencache-policy", "version": 2,
     "model": {class, fingerprint, name}, "scheduler": {class, config},
     "sensitivity": {timesteps, J_x, J_t, estimator},
     "predictors": {"none":   {a, b, c, d, r2, spearman},      # one per reuse mode (FORECASTS):
                    "linear": {a, b, c, d, r2, spearman}},     # the error each mode makes differs
     "operating_points": [
        {name, eps: {positions, values}, max_skips, warmup_steps, final_steps,     # score-driven
         expected_nfe_fraction, expected_error, forecast?, expected_nfe_by_steps?},
        {name, schedule: {compute_at, compute_fraction?},                            # static
         expected_nfe_fraction, expected_error, forecast?, expected_nfe_by_steps?}],
     "default_operating_point": name, "provenance": {...}}

A point is scored with ``predictors[point.forecast]``; a mode without its own predictor (a file
written before that mode existed) is scored with the ``"none"`` one (`Policy.predictor_for`),
as version 1 scores every mode. Version 1 (one ``predictor`` for every mode, no static points) still loads
and applies exactly as before: its one predictor serves every mode.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies._fields import Where, check_keys, json_native, mapping, text
from policies.errors import PolicyError
from policies.fingerprint import config_fingerprint
from policies.io import parse_json, read_json, write_json_atomic
from policies.model import ModelInfo, Predictor, SchedulerInfo
from policies.operating import FORECASTS, OperatingPoint
from policies.tables import SensitivityTable

__all__ = ["FORMAT", "VERSION", "Policy"]

FORMAT = "sencache-policy"
VERSION = 2
#: the top-level fields of each version this sencache reads
KEYS_BY_VERSION = {
    1: ("format", "version", "model", "scheduler", "sensitivity", "predictor",
        "operating_points", "default_operating_point", "provenance"),
    2: ("format", "version", "model", "scheduler", "sensitivity", "predictors",
        "operating_points", "default_operating_point", "provenance"),
}
KEYS = KEYS_BY_VERSION[VERSION]
_RECALIBRATE = (
    "1. `sencache-calibrate collect --model <this model> --db calib.duckdb`, "
    "2. `sencache-calibrate fit --db calib.duckdb`, "
    "3. `sencache-calibrate export --db calib.duckdb --out <policy.json>` "
    "(sencache-calibrate collect/fit/export for this model)"
)


def _part(value: Any, cls: type, where: Where) -> Any:
    """A nested part given as an instance or as its JSON object."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls.from_dict(value, where)
    where.fail(f"must be a {cls.__name__} or a JSON object, got {type(value).__name__}")


def _check_envelope(data: Any, where: Where) -> Mapping:
    obj = mapping(data, where)
    if "format" not in obj:
        where.at("format").fail(
            'is missing: this is not a SenCache policy (expected "format": "sencache-policy")',
            "load a file written by `sencache-calibrate export`",
        )
    if obj["format"] != FORMAT:
        where.at("format").fail(
            f'must be "{FORMAT}", got {obj["format"]!r}: this is not a SenCache policy',
            "load a file written by `sencache-calibrate export`",
        )
    if "version" not in obj:
        where.at("version").fail("is missing", f'add "version": {VERSION}')
    version = obj["version"]
    if not isinstance(version, int) or isinstance(version, bool):
        where.at("version").fail(f"must be the integer {VERSION}, got {version!r}",
                                 f'write "version": {VERSION}')
    if version > VERSION:
        where.at("version").fail(
            f"is {version}, but this sencache reads version {VERSION} only (and version 1)",
            "upgrade the sencache package (`pip install -U sencache`)",
        )
    if version not in KEYS_BY_VERSION:
        where.at("version").fail(f"is {version}, an unknown version (this sencache reads "
                                 f"{', '.join(map(str, KEYS_BY_VERSION))})", "re-export the policy with this sencache")
    return check_keys(obj, where, KEYS_BY_VERSION[version])


def _predictors(value: Any, where: Where) -> dict[str, Predictor]:
    """Version 2's ``predictors``: a non-empty object reuse mode → predictor, modes known."""
    if isinstance(value, Mapping) and not value:
        where.fail("must hold at least one predictor", f"give one per reuse mode ({', '.join(FORECASTS)})")
    obj = mapping(value, where)
    out = {}
    for mode, pred in obj.items():
        if mode not in FORECASTS:
            where.at(mode).fail(f"{mode!r} is not a reuse mode", f"use the modes: {', '.join(FORECASTS)}")
        out[mode] = _part(pred, Predictor, where.at(mode))
    return out


def _provenance(value: Any, where: Where) -> dict[str, Any]:
    prov = json_native(value, where)
    if not isinstance(prov, dict):
        where.fail(f"must be a JSON object, got {type(value).__name__}")
    for key in ("created", "package_version"):
        if prov.get(key) is not None:
            text(prov[key], where.at(key))
    if prov.get("metrics") is not None and not isinstance(prov["metrics"], dict):
        where.at("metrics").fail(f"must be a JSON object, got {type(prov['metrics']).__name__}")
    return prov


@dataclass(frozen=True)
class Policy:
    """A SenCache policy: what to skip, for one model, at one or more operating points.

    Frozen; `scheduler.config` and `provenance` are plain dicts copied on construction. Nested
    parts may be given as instances or as their JSON objects. Every field is validated on
    construction; a refusal is a `PolicyError` naming `source`, the field path and the fix.

    Args:
        model (`ModelInfo`): the model it was calibrated for.
        scheduler (`SchedulerInfo`): the scheduler it was calibrated with.
        sensitivity (`SensitivityTable`): `J_x(t)`, `J_t(t)` in the model's timestep units.
        predictor (`Predictor` or `None`): the score coefficients ``a, b, c`` and the fit quality,
            for every reuse mode without its own (version 1's only predictor); None when
            `predictors` is given (it is then ``predictors["none"]``, else the first one).
        operating_points (`list[OperatingPoint]`): at least one, names unique.
        default_operating_point (`str`, *optional*): the name used when the caller asks for
            none; defaults to the first point.
        provenance (`dict`): how the policy was made: ``created, package_version, store, runs,
            split, metrics`` (JSON values; unknown keys are kept).
        source (`str`): where it came from, for messages (a file path, ``<dict>``); not saved.
        predictors (`dict[str, Predictor]`): one predictor per reuse mode (version 2); a mode
            missing here is served by `predictor` (by default ``predictors["none"]``).
    """

    model: ModelInfo
    scheduler: SchedulerInfo
    sensitivity: SensitivityTable
    predictor: Predictor
    operating_points: tuple[OperatingPoint, ...]
    default_operating_point: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    source: str = field(default="<code>", compare=False, repr=False)
    predictors: Mapping[str, Predictor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = Where(str(self.source))
        object.__setattr__(self, "source", where.source)
        predictors = _predictors(self.predictors, where.at("predictors")) if self.predictors else {}
        object.__setattr__(self, "predictors", predictors)
        fallback = self.predictor is not None
        if not fallback:
            if not predictors:
                where.at("predictor").fail("is missing", "give a predictor, or one per reuse mode in `predictors`")
            if "none" not in predictors:
                where.at("predictors").at("none").fail(
                    "is missing: the plain-reuse predictor serves every mode without its own",
                    "re-export the policy with `sencache-calibrate export`")
            object.__setattr__(self, "predictor", predictors["none"])
        for name, cls in (("model", ModelInfo), ("scheduler", SchedulerInfo),
                          ("sensitivity", SensitivityTable), ("predictor", Predictor)):
            object.__setattr__(self, name, _part(getattr(self, name), cls, where.at(name)))
        if fallback:  # the one predictor serves every mode without its own (version 1: all)
            predictors = {mode: predictors.get(mode, self.predictor) for mode in FORECASTS}
            object.__setattr__(self, "predictors", predictors)
        points_where = where.at("operating_points")
        raw = self.operating_points
        if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Sequence):
            points_where.fail(f"must be a list of operating points, got {type(raw).__name__}")
        if not raw:
            points_where.fail("must hold at least one operating point",
                              "run `sencache-calibrate fit` then `export`, or use paper_policy()")
        points = tuple(_part(p, OperatingPoint, points_where.at(i)) for i, p in enumerate(raw))
        seen: dict[str, int] = {}
        for i, point in enumerate(points):
            if point.name in seen:
                points_where.at(i).at("name").fail(
                    f"{point.name!r} is already the name of operating_points[{seen[point.name]}]",
                    "give every operating point its own name",
                )
            seen[point.name] = i
        object.__setattr__(self, "operating_points", points)
        default = self.default_operating_point
        if default is None:
            default = points[0].name
        default = text(default, where.at("default_operating_point"))
        if default not in seen:
            where.at("default_operating_point").fail(
                f"{default!r} is not among the operating points ({', '.join(seen)})",
                "set it to one of those names",
            )
        object.__setattr__(self, "default_operating_point", default)
        object.__setattr__(self, "provenance", _provenance(self.provenance, where.at("provenance")))

    def __hash__(self) -> int:  # provenance is a dict: hash its canonical JSON
        return hash((self.model, self.scheduler, self.sensitivity, self.predictor,
                     tuple(sorted(self.predictors.items())), self.operating_points, self.default_operating_point,
                     json.dumps(self.provenance, sort_keys=True)))

    # ---- construction and serialisation -------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> Policy:
        """Validate a policy given as its JSON object; `PolicyError` for anything unusable."""
        where = Where(str(source))
        obj = _check_envelope(data, where)
        # Nested parts go in as JSON objects: __post_init__ validates them with their paths.
        default = text(obj["default_operating_point"], where.at("default_operating_point"))
        predictors = {}
        if "predictors" in obj:  # version 2
            predictors = _predictors(obj["predictors"], where.at("predictors"))
        return cls(
            model=obj["model"],
            scheduler=obj["scheduler"],
            sensitivity=obj["sensitivity"],
            predictor=obj.get("predictor"),
            predictors=predictors,
            operating_points=obj["operating_points"],
            default_operating_point=default,
            provenance=obj["provenance"],
            source=where.source,
        )

    @classmethod
    def from_json(cls, body: str, source: str = "<json>") -> Policy:
        """Parse and validate policy JSON text."""
        return cls.from_dict(parse_json(body, source), source)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        model_fingerprint: str | Mapping | None = None,
        strict: bool = True,
    ) -> Policy:
        """Read and validate a policy file; with `model_fingerprint`, also `check_model` it."""
        policy = cls.from_dict(read_json(path), source=str(path))
        if model_fingerprint is not None:
            policy.check_model(model_fingerprint, strict=strict)
        return policy

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the file format (JSON-native values only)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model.to_dict(),
            "scheduler": self.scheduler.to_dict(),
            "sensitivity": self.sensitivity.to_dict(),
            "predictors": {mode: self.predictor_for(mode).to_dict() for mode in self.modes},
            "operating_points": [p.to_dict() for p in self.operating_points],
            "default_operating_point": self.default_operating_point,
            "provenance": json_native(self.provenance, Where(self.source, "provenance")),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The policy as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the policy to `path` atomically (temporary file, then rename); returns the path."""
        return write_json_atomic(path, self.to_dict())

    # ---- use ----------------------------------------------------------------------------------

    @property
    def operating_point_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.operating_points)

    @property
    def modes(self) -> tuple[str, ...]:
        """The reuse modes this policy has a predictor for (every mode when `predictor` serves)."""
        return tuple(m for m in FORECASTS if m in self.predictors)

    def predictor_for(self, point_or_mode: OperatingPoint | str) -> Predictor:
        """The predictor that scores a point (or a reuse mode): its mode's own, else `predictor`."""
        mode = point_or_mode if isinstance(point_or_mode, str) else point_or_mode.forecast
        return self.predictors.get(mode, self.predictor)

    def operating_point(self, name: str | None = None, speedup: float | None = None,
                        num_steps: int | None = None) -> OperatingPoint:
        """The operating point to run: by `name`, by `speedup`, or the default.

        With `speedup` the point whose expected speedup is closest wins (the earlier point on a
        tie): with `num_steps`, the speedup it states for the nearest step count
        (`OperatingPoint.expected_nfe_by_steps`), else ``1 / expected_nfe_fraction``; points
        without a measured fraction are not candidates.
        """
        names = ", ".join(self.operating_point_names)
        if name is not None and speedup is not None:
            raise PolicyError(f"{self.source}: pass operating_point=<name> or speedup=<x>, "
                              "not both. Fix: drop one of them.")
        if speedup is not None:
            try:
                value = math.nan if isinstance(speedup, (bool, str)) else float(speedup)
            except (TypeError, ValueError, OverflowError):
                value = math.nan
            if not math.isfinite(value) or value <= 0:
                raise PolicyError(f"{self.source}: speedup must be a finite number > 0, got "
                                  f"{speedup!r}. Fix: pass e.g. speedup=2.0.")
            measured = [(abs(p.expected_speedup_at(num_steps) - value), i, p)
                        for i, p in enumerate(self.operating_points) if p.expected_speedup_at(num_steps)]
            if not measured:
                raise PolicyError(
                    f"{self.source}: no operating point states expected_nfe_fraction, so none can "
                    f"be chosen by speedup. Fix: choose by name ({names}), or fit and export a "
                    "policy: `sencache-calibrate fit` then `sencache-calibrate export`."
                )
            return min(measured, key=lambda item: item[:2])[2]
        wanted = self.default_operating_point if name is None else name
        for point in self.operating_points:
            if point.name == wanted:
                return point
        raise PolicyError(f"{self.source}: no operating point named {wanted!r}. "
                          f"Fix: use one of: {names}.")

    def check_model(self, fingerprint: str | Mapping, strict: bool = True) -> bool:
        """True when the model's fingerprint matches; otherwise refuse (or warn if not `strict`).

        `fingerprint` is a `config_fingerprint` string, or the transformer config itself.
        """
        got = config_fingerprint(fingerprint) if isinstance(fingerprint, Mapping) else fingerprint
        if got == self.model.fingerprint:
            return True
        message = (
            f"{self.source}: the policy was calibrated for model {self.model.name!r} "
            f"({self.model.class_name}, fingerprint {self.model.fingerprint}), but this model's "
            f"fingerprint is {got}. Its sensitivities and thresholds do not transfer. Fix: "
            f"{_RECALIBRATE}; or pass strict=False to use it anyway."
        )
        if strict:
            raise PolicyError(message)
        warnings.warn(message, UserWarning, stacklevel=2)
        return False
