"""`sencache-static`: each fitted operating point's static twin — what the score adds, measured.

The twin of a point is the best static schedule of the same search and reuse mode at the same
compute (`calibration.shapes.static_twin`), stored by `export` in the policy's provenance
(``metrics.static_twins[<point>].point``). Run beside `sencache` at the same knob, the matched
table shows the difference the per-sample score makes. A point that ships static is its own
twin (the score adds nothing to it, by construction): a stored twin of such a point is the
schedule it was judged against — of another reuse mode where the holdout preferred the shipped
one (toy-cogvideox's `fast`) — and reading it would credit the score with a difference between
two schedules. A score-driven point without a stored twin (a policy fitted before twins) gets
evenly spaced skipping at its expected compute fraction and reuse mode, and the bench notes say
so.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import sencache
from calibration.baselines._common import BaselineHandle, report_mask, transformer_of
from policies import OperatingPoint, Policy, PolicyError, config_fingerprint, evenly_spaced

__all__ = ["apply_sencache_static", "static_knobs", "twin_of"]


def static_knobs(policy: Policy) -> list[str]:
    """Every operating point of the policy, by name (a static twin has no ε to scale)."""
    return list(policy.operating_point_names)


def twin_of(policy: Policy, name: str, num_steps: int) -> tuple[OperatingPoint, str]:
    """The static twin of operating point `name` and where it came from."""
    point = policy.operating_point(name)
    if point.static:
        return replace(point, name=f"{name}-static"), "the point itself (it ships static)"
    stored = ((policy.provenance.get("metrics") or {}).get("static_twins") or {}).get(name) or {}
    if stored.get("point"):
        twin = OperatingPoint.from_dict({**stored["point"], "name": f"{name}-static"})
        return twin, f"fitted static twin ({stored.get('origin', 'search')})"
    fraction = point.expected_nfe_at(num_steps)
    if fraction is None:
        raise PolicyError(f"{policy.source}: operating point {name!r} states no compute fraction and no static "
                          "twin; refit and export the policy (`sencache-calibrate fit`, then `export`)")
    twin = OperatingPoint(f"{name}-static", schedule=evenly_spaced(fraction, num_steps), forecast=point.forecast)
    return twin, "evenly spaced at the point's expected compute (no fitted twin in the policy)"


def apply_sencache_static(pipe: Any, knob: str, policy: Policy, num_inference_steps: int,
                          strict: bool = True) -> BaselineHandle:
    """Apply the static twin of `policy`'s operating point `knob` with `sencache.apply`."""
    transformer = transformer_of(pipe)
    policy.check_model(config_fingerprint(dict(transformer.config)), strict=strict)
    twin, origin = twin_of(policy, str(knob), int(num_inference_steps))
    single = replace(policy, operating_points=(twin,), default_operating_point=twin.name)
    runtime = sencache.apply(pipe, single, operating_point=twin.name, strict=strict)
    return BaselineHandle(
        "sencache-static", str(knob), remove=lambda: sencache.remove(pipe), computed_mask=report_mask(runtime),
        config={"policy": policy.source, "operating_point": str(knob), "twin": twin.to_dict(), "origin": origin},
    )
