"""ε(p) and the sensitivity table: piecewise-linear, clamped, ascending or descending."""

from __future__ import annotations

import numpy as np
import pytest

from policies import TWO_LEVEL_GAP, EpsSchedule, PolicyError, SensitivityTable

EPS = EpsSchedule(positions=[0.0, 0.5, 1.0], values=[0.1, 0.3, 0.2])


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.0, 0.1),  # first knot
        (0.25, 0.2),  # halfway 0 -> 0.5: 0.1 + 0.5 * (0.3 - 0.1) = 0.2
        (0.5, 0.3),  # middle knot
        (0.75, 0.25),  # halfway 0.5 -> 1: 0.3 + 0.5 * (0.2 - 0.3) = 0.25
        (1.0, 0.2),  # last knot
        (-0.5, 0.1),  # clamped below
        (1.5, 0.2),  # clamped above
    ],
    ids=["p0", "p0.25", "p0.5", "p0.75", "p1", "below-clamped", "above-clamped"],
)
def test_eps_is_piecewise_linear_and_clamped(p, expected):
    assert EPS(p) == pytest.approx(expected)
    assert isinstance(EPS(p), float)


def test_eps_of_an_array_is_an_array():
    out = EPS(np.array([0.0, 0.25, 0.75]))
    np.testing.assert_allclose(out, [0.1, 0.2, 0.25])


def test_eps_knots_inside_the_range_clamp_to_the_nearest_knot():
    # Knots at 0.2 and 0.8 only: ε is flat at 1.0 before 0.2 and at 3.0 after 0.8;
    # at 0.5 (halfway): 1.0 + 0.5 * (3.0 - 1.0) = 2.0.
    eps = EpsSchedule([0.2, 0.8], [1.0, 3.0])
    assert [eps(0.0), eps(0.5), eps(1.0)] == pytest.approx([1.0, 2.0, 3.0])


def test_single_knot_is_a_constant():
    eps = EpsSchedule([0.3], [0.7])
    assert eps(0.0) == eps(1.0) == 0.7


def test_constant_schedule():
    assert EpsSchedule.constant(0.4)(0.9) == 0.4


def test_two_level_holds_the_strict_level_through_the_early_fraction():
    eps = EpsSchedule.two_level(0.1, 0.5, early_fraction=0.2)
    assert eps.positions == (0.0, 0.2, 0.2 + TWO_LEVEL_GAP, 1.0)
    assert eps.values == (0.1, 0.1, 0.5, 0.5)
    assert eps(0.2) == 0.1  # the boundary itself is strict
    assert eps(0.2 + 2 * TWO_LEVEL_GAP) == 0.5


def test_two_level_at_30_steps():
    # p_i = i/29: step 5 is at 0.1724 (<= 0.2, strict), step 6 at 0.2069 (> 0.200001, loose).
    levels = EpsSchedule.two_level(0.1, 0.5).at_steps(30)
    assert levels[:6].tolist() == [0.1] * 6
    assert levels[6:].tolist() == [0.5] * 24


def test_at_steps_positions():
    # 5 steps: p = 0, 0.25, 0.5, 0.75, 1 -> see test_eps_is_piecewise_linear_and_clamped.
    np.testing.assert_allclose(EPS.at_steps(5), [0.1, 0.2, 0.3, 0.25, 0.2])
    assert EPS.at_steps(1).tolist() == [0.1]  # one step: p = 0


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5], ids=["zero", "one", "negative", "above"])
def test_two_level_refuses_a_fraction_outside_0_1(bad):
    with pytest.raises(PolicyError, match="early_fraction"):
        EpsSchedule.two_level(0.1, 0.2, early_fraction=bad)


ASC = SensitivityTable(timesteps=[0.0, 500.0, 1000.0], J_x=[0.5, 1.0, 2.0], J_t=[4.0, 2.0, 1.0])
DESC = SensitivityTable(timesteps=[1000.0, 500.0, 0.0], J_x=[2.0, 1.0, 0.5], J_t=[1.0, 2.0, 4.0])


@pytest.mark.parametrize("table", [ASC, DESC], ids=["ascending", "descending"])
@pytest.mark.parametrize(
    ("t", "j_x", "j_t"),
    [
        (500.0, 1.0, 2.0),  # a knot
        (750.0, 1.5, 1.5),  # halfway 500 -> 1000: J_x 1 + 0.5*(2-1) = 1.5, J_t 2 + 0.5*(1-2) = 1.5
        (250.0, 0.75, 3.0),  # halfway 0 -> 500: J_x 0.5 + 0.5*(1-0.5) = 0.75, J_t 4 + 0.5*(2-4) = 3
        (1200.0, 2.0, 1.0),  # above the table: clamped to t = 1000
        (-5.0, 0.5, 4.0),  # below the table: clamped to t = 0
    ],
    ids=["knot", "t750", "t250", "clamp-high", "clamp-low"],
)
def test_sensitivity_interpolation(table, t, j_x, j_t):
    got = table.interpolate(t)
    assert got == pytest.approx((j_x, j_t))
    assert all(isinstance(v, float) for v in got)


def test_sensitivity_keeps_the_stored_order():
    assert DESC.timesteps == (1000.0, 500.0, 0.0)
    assert DESC.to_dict()["J_x"] == [2.0, 1.0, 0.5]


def test_sensitivity_of_an_array_of_timesteps():
    j_x, j_t = DESC.interpolate(np.array([750.0, 250.0]))
    np.testing.assert_allclose(j_x, [1.5, 0.75])
    np.testing.assert_allclose(j_t, [1.5, 3.0])


def test_single_entry_table_is_constant():
    table = SensitivityTable([400.0], [2.0], [3.0])
    assert table.interpolate(0.0) == table.interpolate(999.0) == (2.0, 3.0)


def test_constant_table():
    assert SensitivityTable.constant(2.0, 3.0).interpolate(123.0) == (2.0, 3.0)


def test_numpy_inputs_are_normalised_to_floats():
    table = SensitivityTable(np.array([1.0, 0.0]), np.array([1, 2]), np.float32([3, 4]))
    assert table.J_x == (1.0, 2.0) and all(type(v) is float for v in table.J_t)


def test_tables_are_hashable_and_compare_by_value():
    assert DESC == SensitivityTable([1000, 500, 0], [2, 1, 0.5], [1, 2, 4])
    assert hash(EPS) == hash(EpsSchedule((0.0, 0.5, 1.0), (0.1, 0.3, 0.2)))


def test_direct_construction_names_the_field():
    with pytest.raises(PolicyError, match=r"<code>: field eps\.values\[1\]: must be finite"):
        EpsSchedule([0.0, 1.0], [0.1, float("nan")])
    with pytest.raises(PolicyError, match=r"sensitivity\.timesteps\[2\]: .*strictly increasing or"):
        SensitivityTable([0, 10, 5], [1, 1, 1], [1, 1, 1])
