"""Operating points: zones as counts or fractions, and choosing a point by name or speedup."""

from __future__ import annotations

import pytest

from policies import EpsSchedule, OperatingPoint, Policy, PolicyError, constant_policy

FLAT = EpsSchedule.constant(0.1)


@pytest.mark.parametrize(
    ("warmup", "final", "steps", "expected"),
    [
        (2, 1, 30, (2, 1)),  # counts are counts
        (0.1, 0.05, 30, (3, 2)),  # ceil(0.1*30) = 3 (not 4: 0.1*30 is 3.0000000000000004), ceil(1.5) = 2
        (0.1, 0, 50, (5, 0)),  # ceil(0.1*50) = 5
        (0.01, 0, 10, (1, 0)),  # ceil(0.1) = 1: a positive fraction protects at least one step
        (40, 40, 30, (30, 30)),  # each clamped to N
        (0.0, 0, 30, (0, 0)),  # 0.0 reads as the count 0
    ],
    ids=["counts", "fractions-30", "fraction-50", "tiny-fraction", "clamped", "zero-float"],
)
def test_zones(warmup, final, steps, expected):
    point = OperatingPoint("p", FLAT, warmup_steps=warmup, final_steps=final)
    assert point.zones(steps) == expected


def test_zero_float_zone_is_stored_as_int():
    assert OperatingPoint("p", FLAT, warmup_steps=0.0).warmup_steps == 0
    assert type(OperatingPoint("p", FLAT, warmup_steps=0.0).warmup_steps) is int


def test_protected_steps():
    # 10 steps, warm-up 2, final 1: steps 0, 1 and 9 always compute.
    point = OperatingPoint("p", FLAT, warmup_steps=2, final_steps=1)
    assert [point.protected(i, 10) for i in range(10)] == [True, True] + [False] * 7 + [True]


@pytest.mark.parametrize("bad", [1.0, 2.0, 1.5, -0.1], ids=["1.0", "2.0", "1.5", "negative"])
def test_ambiguous_float_zone_is_refused(bad):
    with pytest.raises(PolicyError, match=r"warmup_steps: .*(fraction|>= 0)"):
        OperatingPoint("p", FLAT, warmup_steps=bad)


def test_zones_refuses_zero_steps():
    with pytest.raises(PolicyError, match="num_steps"):
        OperatingPoint("p", FLAT).zones(0)


def test_eps_may_be_given_as_a_mapping():
    point = OperatingPoint("p", {"positions": [0, 1], "values": [0.1, 0.2]})
    assert point.eps == EpsSchedule((0.0, 1.0), (0.1, 0.2))


def test_expected_speedup():
    assert OperatingPoint("p", FLAT, expected_nfe_fraction=0.25).expected_speedup == 4.0
    assert OperatingPoint("p", FLAT).expected_speedup is None


def _three_points(valid_dict):
    # nfe fractions 0.5, 0.4 and 0.25: speedups 2.0, 2.5 and 4.0.
    third = dict(valid_dict["operating_points"][1], name="turbo", expected_nfe_fraction=0.25)
    valid_dict["operating_points"].append(third)
    return Policy.from_dict(valid_dict)


@pytest.mark.parametrize(
    ("speedup", "expected"),
    [
        (2.0, "balanced"),  # exact
        (1.0, "balanced"),  # |2-1| = 1 is the smallest distance
        (2.2, "balanced"),  # |2.0-2.2| = 0.2 < |2.5-2.2| = 0.3
        (3.0, "fast"),  # |2.5-3| = 0.5 < |4-3| = 1
        (3.5, "turbo"),  # |4-3.5| = 0.5 < |2.5-3.5| = 1
        (10.0, "turbo"),
    ],
    ids=["exact", "slower-than-all", "between-closer-to-2", "3x", "3.5x", "beyond"],
)
def test_operating_point_by_speedup(valid_dict, speedup, expected):
    assert _three_points(valid_dict).operating_point(speedup=speedup).name == expected


def test_speedup_tie_goes_to_the_earlier_point(valid_dict):
    # 2.25 is 0.25 from both 2.0 (balanced, index 0) and 2.5 (fast, index 1).
    assert Policy.from_dict(valid_dict).operating_point(speedup=2.25).name == "balanced"


def test_operating_point_by_name_and_default(valid_dict):
    policy = Policy.from_dict(valid_dict)
    assert policy.operating_point("fast").name == "fast"
    assert policy.operating_point().name == "balanced"
    assert policy.operating_point_names == ("balanced", "fast")


def test_unknown_name_lists_the_choices(valid_dict):
    with pytest.raises(PolicyError, match=r"no operating point named 'slow'.*balanced, fast"):
        Policy.from_dict(valid_dict).operating_point("slow")


@pytest.mark.parametrize("bad", [0, -2.0, float("nan"), float("inf"), "2x", True],
                         ids=["zero", "negative", "nan", "inf", "string", "bool"])
def test_bad_speedup_is_refused(valid_dict, bad):
    with pytest.raises(PolicyError, match="speedup must be a finite number > 0"):
        Policy.from_dict(valid_dict).operating_point(speedup=bad)


def test_name_and_speedup_together_are_refused(valid_dict):
    with pytest.raises(PolicyError, match="not both"):
        Policy.from_dict(valid_dict).operating_point("fast", speedup=2.0)


def test_speedup_needs_a_measured_point():
    with pytest.raises(PolicyError, match="expected_nfe_fraction.*choose by name \\(constant\\)"):
        constant_policy().operating_point(speedup=2.0)
