"""Static schedules: compute positions as fractions of the trajectory, the same at any step count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policies import OperatingPoint, Policy, PolicyError, StaticSchedule, evenly_spaced
from sencache import decide, rule_params
from tests.policies.conftest import fresh_valid


def _static_dict(**schedule) -> dict:
    data = fresh_valid()
    data["operating_points"].append({"name": "static", "schedule": schedule, "expected_nfe_fraction": 0.5,
                                     "expected_error": None, "forecast": "linear",
                                     "expected_nfe_by_steps": {"20": 0.5, "30": 0.5, "50": 0.5}})
    return data


def test_positions_without_a_fraction_compute_the_nearest_steps():
    s = StaticSchedule((0.0, 0.25, 0.5, 1.0))
    assert s.steps(5) == {0, 1, 2, 4}
    assert s.steps(9) == {0, 2, 4, 8}
    assert StaticSchedule((0.5,)).steps(11) == {0, 5, 10}  # first and last always


def test_a_fraction_keeps_the_compute_fraction_and_the_shape_at_any_step_count():
    late = (0.0, 0.3, 0.6, 0.8, 0.85, 0.9, 0.95, 1.0)  # dense at the end
    s = StaticSchedule(late, 0.4)
    for n in (10, 17, 20, 30, 43, 50, 100):
        steps = sorted(s.steps(n))
        assert len(steps) == round(0.4 * n) and steps[0] == 0 and steps[-1] == n - 1
        assert sum(i >= 0.75 * (n - 1) for i in steps) >= len(steps) / 2  # still dense late


def test_evenly_spaced_computes_exactly_its_steps_at_its_step_count():
    s = evenly_spaced(0.5, 30)
    assert s.steps(30) == set(np.rint(np.linspace(0, 29, 15)).astype(int).tolist())
    for n in (20, 30, 50, 17, 43):
        assert s.fraction(n) == pytest.approx(0.5, abs=0.5 / n + 1e-9)


def test_a_mask_converted_to_positions_comes_back_at_its_step_count():
    mask = [0, 1, 2, 5, 9, 14, 20, 24, 26, 27, 28, 29]
    s = StaticSchedule(tuple(i / 29 for i in mask), len(mask) / 30)
    assert sorted(s.steps(30)) == mask


def test_the_rule_computes_exactly_the_scheduled_steps():
    policy = Policy.from_dict(_static_dict(compute_at=[0.0, 0.5, 1.0], compute_fraction=0.5))
    point = policy.operating_point("static")
    params, _ = rule_params(policy, operating_point="static")
    x = torch.zeros(2, 3)
    for n in (20, 30, 50):
        computed, reasons = [], set()
        for i in range(n):
            ref = None if i == 0 else x
            d = decide(params, i, n, x, torch.full((2,), 1000.0 - i), ref, None if i == 0 else torch.full((2,), 999.0),
                       None if i == 0 else torch.zeros(2, dtype=torch.long))
            computed.append(bool(d.compute[0]))
            reasons.update(d.reasons)
        assert [i for i, c in enumerate(computed) if c] == sorted(point.schedule.steps(n))
        assert reasons <= {"first", "schedule", "skipped"}


def test_a_static_point_round_trips_and_states_its_fraction_per_step_count(tmp_path):
    policy = Policy.from_dict(_static_dict(compute_at=[0.0, 0.5, 1.0], compute_fraction=0.5))
    assert Policy.load(policy.save(tmp_path / "p.json")) == policy
    point = policy.operating_point("static")
    assert point.static and point.eps is None
    assert point.expected_nfe_by_steps == ((20, 0.5), (30, 0.5), (50, 0.5))
    assert "eps" not in point.to_dict() and "max_skips" not in point.to_dict()


def test_speedup_picks_by_the_calls_step_count():
    data = fresh_valid()
    data["operating_points"][0]["expected_nfe_by_steps"] = {"20": 0.6, "50": 0.35}  # balanced
    data["operating_points"][1]["expected_nfe_by_steps"] = {"20": 0.4, "50": 0.45}  # fast
    policy = Policy.from_dict(data)
    assert policy.operating_point(speedup=3.0, num_steps=20).name == "fast"      # 2.5 beats 1.67
    assert policy.operating_point(speedup=3.0, num_steps=50).name == "balanced"  # 2.86 beats 2.22
    assert policy.operating_point(speedup=3.0, num_steps=45).name == "balanced"  # nearest stated: 50
    assert policy.operating_point(speedup=1.9).name == "balanced"  # no step count: 1/0.5 beats 1/0.4


@pytest.mark.parametrize(("schedule", "extra", "path", "reason"), [
    ({"compute_at": [0.0, 1.2]}, {}, r"schedule\.compute_at\[1\]", "must be <= 1"),
    ({"compute_at": []}, {}, r"schedule\.compute_at", "at least 1"),
    ({"compute_at": [0.5], "compute_fraction": 0.0}, {}, r"schedule\.compute_fraction", "must be > 0"),
    ({"compute_at": [0.5], "every": 2}, {}, r"schedule\.every", "not a field"),
    ({"compute_at": [0.5]}, {"eps": {"positions": [0.0], "values": [1.0]}}, r"eps", "not a field"),
    ({"compute_at": [0.5]}, {"max_skips": 2}, r"max_skips", "not a field"),
    ({"compute_at": [0.5]}, {"expected_nfe_by_steps": {"x": 0.5}}, r"expected_nfe_by_steps\.x", "step count"),
    ({"compute_at": [0.5]}, {"expected_nfe_by_steps": {"20": 1.5}}, r"expected_nfe_by_steps\.20", "must be <= 1"),
])
def test_a_bad_static_point_is_refused_with_its_field(schedule, extra, path, reason):
    data = _static_dict(**schedule)
    data["operating_points"][-1].update(extra)
    with pytest.raises(PolicyError, match=rf"^s\.json: field operating_points\[2\]\.{path}: .*{reason}.*Fix: "):
        Policy.from_dict(data, source="s.json")


def test_a_point_in_code_needs_eps_or_a_schedule_not_both():
    with pytest.raises(PolicyError, match="eps: is missing"):
        OperatingPoint("p")
    with pytest.raises(PolicyError, match="has no eps"):
        OperatingPoint("p", eps={"positions": [0.0], "values": [1.0]}, schedule=evenly_spaced(0.5, 30))
