"""Property: whatever is thrown at the loader, it returns a valid Policy or raises PolicyError.

A Policy that loads is also usable: it serialises to strict JSON and reloads equal to itself.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import EpsSchedule, OperatingPoint, Policy, PolicyError, SensitivityTable

# POLICY_FUZZ_EXAMPLES=5000 for a longer hunt; the default keeps the suite fast.
EXAMPLES = int(os.environ.get("POLICY_FUZZ_EXAMPLES", "100"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, 1, -1, 0.0, 1.0, 0.5, 1e-6, 1e308, "sencache-policy", "", "balanced"])
    | st.text(max_size=8)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def _assert_usable(policy: Policy) -> None:
    data = policy.to_dict()
    text = json.dumps(data, allow_nan=False)  # JSON-native and finite
    assert Policy.from_dict(json.loads(text)) == policy
    point = policy.operating_point()
    assert math.isfinite(point.eps(0.5)) and point.eps(0.5) >= 0
    j_x, j_t = policy.sensitivity.interpolate(policy.sensitivity.timesteps[0])
    assert j_x >= 0 and j_t >= 0
    warmup, final = point.zones(30)
    assert 0 <= warmup <= 30 and 0 <= final <= 30


def _try(build) -> None:
    try:
        policy = build()
    except PolicyError:
        return
    _assert_usable(policy)


def _paths(value, prefix=()):
    """Every (container path, key) in a JSON value, for choosing what to mutate."""
    out = []
    if isinstance(value, dict):
        for key, item in value.items():
            out.append((prefix, key))
            out.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.append((prefix, i))
            out.extend(_paths(item, (*prefix, i)))
    return out


@SETTINGS
@given(JSON)
def test_random_json_never_raises_anything_else(value):
    _try(lambda: Policy.from_dict(value))


@SETTINGS
@given(st.data())
def test_mutated_valid_policy_loads_or_is_refused(make_valid, data):
    policy = make_valid()
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        prefix, key = data.draw(st.sampled_from(_paths(policy)), label="where")
        container = policy
        for step in prefix:
            container = container[step]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
        if action == "replace":
            container[key] = data.draw(JSON, label="value")
        elif action == "delete":
            del container[key]
        elif isinstance(container, dict):
            container[data.draw(st.text(max_size=6), label="new key")] = data.draw(JSON)
        else:
            container.append(data.draw(JSON, label="appended"))
    _try(lambda: Policy.from_dict(policy))


@SETTINGS
@given(st.data())
def test_damaged_policy_text_loads_or_is_refused(make_valid, data):
    text = json.dumps(make_valid(), indent=data.draw(st.sampled_from([None, 2])))
    raw = bytearray(text.encode())
    cut = data.draw(st.integers(0, len(raw)), label="truncate at")
    raw = raw[:cut]
    for _ in range(data.draw(st.integers(0, 3), label="flips")):
        if raw:
            i = data.draw(st.integers(0, len(raw) - 1), label="byte")
            raw[i] = data.draw(st.integers(0, 255), label="new byte")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "policy.json")
        with open(path, "wb") as handle:
            handle.write(bytes(raw))
        _try(lambda: Policy.load(path))


FINITE = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


@st.composite
def valid_policies(draw):
    n = draw(st.integers(1, 6))
    steps = sorted(draw(st.lists(st.floats(-1e4, 1e4), min_size=n, max_size=n, unique=True)))
    if draw(st.booleans()):
        steps.reverse()  # diffusion order
    table = SensitivityTable(steps, draw(st.lists(FINITE, min_size=n, max_size=n)),
                             draw(st.lists(FINITE, min_size=n, max_size=n)))
    names = draw(st.lists(st.text(min_size=1, max_size=5).filter(str.strip), min_size=1,
                          max_size=3, unique=True))
    points = []
    for name in names:
        k = draw(st.integers(1, 16))
        positions = sorted(draw(st.lists(st.floats(0, 1), min_size=k, max_size=k, unique=True)))
        zone = st.integers(0, 50) | st.floats(0.01, 0.99)
        points.append(OperatingPoint(
            name, EpsSchedule(positions, draw(st.lists(FINITE, min_size=k, max_size=k))),
            max_skips=draw(st.integers(1, 8)), warmup_steps=draw(zone), final_steps=draw(zone),
            expected_nfe_fraction=draw(st.none() | st.floats(0.01, 1.0)),
            expected_error=draw(st.none() | FINITE),
        ))
    base = Policy.from_dict({**_BASE, "operating_points": [p.to_dict() for p in points],
                             "default_operating_point": draw(st.sampled_from(names))})
    return Policy(base.model, base.scheduler, table, base.predictor, points,
                  base.default_operating_point, base.provenance)


_BASE = {
    "format": "sencache-policy", "version": 1,
    "model": {"class": "M", "fingerprint": "f", "name": "m"},
    "scheduler": {"class": "S", "config": {}},
    "sensitivity": {"timesteps": [0.0], "J_x": [1.0], "J_t": [1.0], "estimator": "trajectory"},
    "predictor": {"a": 1.0, "b": 1.0, "c": 0.0, "r2": None, "spearman": None},
    "provenance": {},
}


@settings(max_examples=max(1, EXAMPLES * 2 // 3), deadline=None)
@given(valid_policies())
def test_generated_valid_policies_round_trip(policy):
    _assert_usable(policy)
    assert Policy.from_json(policy.to_json()) == policy
