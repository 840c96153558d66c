"""`sencache`: the fitted policy file (`--policy`), swept over its operating points.

The knob is an operating point's name, optionally with a scale on its ε curve:
`"balanced"` runs that point as fitted, `"balanced*2"` doubles every ε knot (faster, less
faithful), so a policy with one point still gives a curve. A scaled point's
`expected_nfe_fraction` is dropped: it no longer holds. A suffix `@<forecast>` runs the point
with another reuse mode (`"balanced@taylor"`, `"balanced*2@linear"`): the same decisions,
another forecast; a point whose file says `forecast: "taylor"` runs it without a suffix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import sencache
from calibration.baselines._common import BaselineHandle, report_mask, transformer_of
from policies import Policy, PolicyError, config_fingerprint
from policies.operating import FORECASTS

__all__ = ["apply_sencache", "parse_knob", "policy_knobs", "scaled_policy", "split_forecast", "with_forecast"]

#: ε scales added to the default operating point so the sweep spans more than the fitted points
DEFAULT_SCALES = (0.5, 2.0, 4.0)


def parse_knob(knob: str) -> tuple[str, float]:
    """`"name"` -> (name, 1.0); `"name*2"` -> (name, 2.0)."""
    name, _, scale = str(knob).partition("*")
    try:
        value = float(scale) if scale else 1.0
    except ValueError:
        raise PolicyError(f"sencache knob {knob!r}: expected <operating point>[*<eps scale>], e.g. 'fast*2'") from None
    if not np.isfinite(value) or value <= 0:
        raise PolicyError(f"sencache knob {knob!r}: the ε scale must be a finite number > 0")
    return name, value


def _fixed_schedule(point: Any) -> bool:
    """A static point, or (version-1 files) ε that is 0 or astronomically large at every knot: a
    fixed mask, which no ε scale changes."""
    return point.static or all(v == 0.0 or v >= 1e29 for v in point.eps.values)


def policy_knobs(policy: Policy, scales: tuple[float, ...] = DEFAULT_SCALES) -> list[str]:
    """Every operating point as fitted, then one point with its ε scaled by `scales`: the default
    point, or the first one whose ε a scale can move when the default is a fixed schedule; and the
    first movable point (the fit lists its points from the most compute down, references such as
    `paper` after them), with its ε halved, when that is another one — so the curve reaches above
    the highest fitted point (toy-cogvideox's `quality` computes 0.637, and without it the
    matched table had no SenCache value at 0.7)."""
    points = [policy.operating_point(name) for name in policy.operating_point_names]
    default = policy.operating_point()
    movable = [p for p in points if not _fixed_schedule(p)]
    target = default if not _fixed_schedule(default) or not movable else movable[0]
    if _fixed_schedule(target):
        return list(policy.operating_point_names)
    knobs = list(policy.operating_point_names) + [f"{target.name}*{s:g}" for s in scales]
    top = movable[0]
    if top.name != target.name and min(scales) < 1.0:
        knobs.append(f"{top.name}*{min(scales):g}")
    return knobs


def scaled_policy(policy: Policy, name: str, scale: float) -> Policy:
    """A copy of `policy` whose operating point `name` has every ε knot multiplied by `scale`."""
    point = policy.operating_point(name)  # refuses an unknown name with the list of known ones
    if scale == 1.0:
        return policy
    if point.static:
        raise PolicyError(f"sencache knob {name}*{scale:g}: {name!r} is a static schedule, which has no ε to "
                          f"scale; run it as {name!r}")
    data = policy.to_dict()
    for point in data["operating_points"]:
        if point["name"] == name:
            point["eps"]["values"] = [float(v) * scale for v in point["eps"]["values"]]
            point["expected_nfe_fraction"] = None
            point["expected_error"] = None
    return Policy.from_dict(data, source=f"{policy.source} ({name} with ε x{scale:g})")


def split_forecast(knob: str) -> tuple[str, str | None]:
    """`"name*2@taylor"` -> ("name*2", "taylor"); without `@`, (knob, None)."""
    rest, at, forecast = str(knob).partition("@")
    if at and forecast not in FORECASTS:
        raise PolicyError(f"sencache knob {knob!r}: unknown forecast {forecast!r}; use one of: {', '.join(FORECASTS)}")
    return rest, (forecast if at else None)


def with_forecast(policy: Policy, name: str, forecast: str) -> Policy:
    """A copy of `policy` whose operating point `name` reuses with `forecast`."""
    if policy.operating_point(name).forecast == forecast:
        return policy
    data = policy.to_dict()
    for point in data["operating_points"]:
        if point["name"] == name:
            point["forecast"] = forecast
    return Policy.from_dict(data, source=f"{policy.source} ({name} with forecast {forecast})")


def apply_sencache(pipe: Any, knob: str, policy: Policy, strict: bool = True) -> BaselineHandle:
    """Apply `policy` at operating point `knob` (`name[*scale][@forecast]`) with `sencache.apply`."""
    transformer = transformer_of(pipe)
    policy.check_model(config_fingerprint(dict(transformer.config)), strict=strict)
    rest, forecast = split_forecast(knob)
    name, scale = parse_knob(rest)
    chosen = scaled_policy(policy, name, scale)
    if forecast is not None:
        chosen = with_forecast(chosen, name, forecast)
    runtime = sencache.apply(pipe, chosen, operating_point=name, strict=strict)

    return BaselineHandle(
        "sencache", str(knob), remove=lambda: sencache.remove(pipe), computed_mask=report_mask(runtime),
        config={"policy": policy.source, "operating_point": name, "eps_scale": scale,
                "forecast": chosen.operating_point(name).forecast},
    )
