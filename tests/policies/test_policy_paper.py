"""The uncalibrated policies: the paper's a=b=1, c=0, two-level ε, and a flat one for tests."""

from __future__ import annotations

import pytest

from policies import (
    TWO_LEVEL_GAP,
    Policy,
    PolicyError,
    SchedulerInfo,
    SensitivityTable,
    constant_policy,
    paper_policy,
)

TABLE = SensitivityTable([1000.0, 0.0], [2.0, 1.0], [0.01, 0.02])


def test_paper_policy_is_the_papers_setting():
    policy = paper_policy("WanTransformer3DModel", "0123456789abcdef", TABLE, eps_early=0.05,
                          eps_late=0.2)
    predictor = policy.predictor
    assert (predictor.a, predictor.b, predictor.c) == (1.0, 1.0, 0.0)
    assert predictor.r2 is None and predictor.spearman is None  # nothing fitted
    point = policy.operating_point()
    assert point.name == "paper" and point.max_skips == 3
    assert point.eps.positions == (0.0, 0.2, 0.2 + TWO_LEVEL_GAP, 1.0)
    assert point.eps.values == (0.05, 0.05, 0.2, 0.2)
    assert policy.sensitivity is TABLE
    assert policy.model.name == "WanTransformer3DModel"
    assert policy.provenance["runs"] == 0 and "paper" in policy.provenance["method"]


def test_paper_eps_per_step():
    # 11 steps: p = i/10; steps 0, 1, 2 (p <= 0.2) are strict, 3..10 loose.
    point = paper_policy("M", "f", TABLE, 0.1, 0.4).operating_point()
    assert point.eps.at_steps(11).tolist() == [0.1] * 3 + [0.4] * 8


def test_paper_options():
    policy = paper_policy("M", "f", TABLE, 0.1, 0.3, early_fraction=0.5, max_skips=1, name="p",
                          model_name="toy-wan", scheduler=SchedulerInfo("Euler", {"shift": 3}),
                          warmup_steps=0.1, final_steps=1, provenance={"store": "x.duckdb"})
    point = policy.operating_point("p")
    assert point.eps(0.5) == 0.1 and point.eps(0.6) == 0.3
    assert point.zones(20) == (2, 1)
    assert policy.model.name == "toy-wan" and policy.scheduler.config == {"shift": 3}
    assert policy.provenance["store"] == "x.duckdb"


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [({"eps_early": -1.0}, "values"), ({"eps_late": float("nan")}, "values"),
     ({"max_skips": 0}, "max_skips"), ({"fingerprint": ""}, "model.fingerprint")],
    ids=["negative-early", "nan-late", "zero-skips", "empty-fingerprint"],
)
def test_paper_policy_validates_its_arguments(kwargs, path):
    args = {"model_class": "M", "fingerprint": "f", "sensitivity": TABLE, **kwargs}
    with pytest.raises(PolicyError, match=path):
        paper_policy(**args)


def test_constant_policy_scores_by_hand():
    policy = constant_policy(0.5)
    # J_x = J_t = 1, a = b = 1, c = 0: S = ‖Δx‖ + |Δt| = 0.25 + 0.125 = 0.375 <= ε = 0.5.
    j_x, j_t = policy.sensitivity.interpolate(300.0)
    score = policy.predictor.score(j_x, 0.25, j_t, 0.125)
    assert score == 0.375 and score <= policy.operating_point().eps(0.7)


def test_uncalibrated_policies_round_trip(tmp_path):
    for policy in (paper_policy("M", "f", TABLE), constant_policy()):
        assert Policy.load(policy.save(tmp_path / "p.json")) == policy
