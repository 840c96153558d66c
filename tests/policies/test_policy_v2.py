"""Policy format version 2: a predictor per reuse mode; version 1 still loads and applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policies import Policy, PolicyError
from sencache import decide, rule_params
from tests.policies.conftest import fresh_v1, fresh_valid


def _decisions(policy: Policy, point: str, steps: int = 100) -> list[list[str]]:
    """The rule's reasons on a fixed synthetic trajectory of 3 rows (one compute each step)."""
    params, _ = rule_params(policy, operating_point=point)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, generator=gen)
    ts = np.linspace(1000.0, 0.0, steps)
    ref_x = ref_t = skips = None
    out = []
    for i in range(steps):
        x = x + 0.0005 * (i % 7) * torch.randn(3, 4, 8, generator=gen)
        t = torch.full((3,), float(ts[i]))
        d = decide(params, i, steps, x, t, ref_x, ref_t, skips)
        out.append(d.reasons)
        if ref_x is None:
            ref_x, ref_t, skips = x.clone(), t.clone(), torch.zeros(3, dtype=torch.long)
        else:
            ref_x = torch.where(d.compute.view(-1, 1, 1), x, ref_x)
            ref_t = torch.where(d.compute, t, ref_t)
            skips = torch.where(d.compute, torch.zeros_like(skips), skips + 1)
    return out


def test_version_1_loads_and_serves_every_mode_with_its_one_predictor():
    policy = Policy.from_dict(fresh_v1(), source="v1.json")
    one = policy.predictor
    assert (one.a, one.b, one.c) == (1.2, 0.8, 0.01)
    assert policy.predictor_for("none") == one and policy.predictor_for("linear") == one
    assert policy.predictor_for(policy.operating_point("fast")) == one  # a linear point


#: `_decisions(VALID_V1, "fast")` as the version-1 code (main before format version 2) took them,
#: one letter a step: f first, w warmup, s score, k skipped (every row the same here).
_V1_FAST = ("fwwwwwwwwwkskskskskskskskskskskskskskskskskskskskskskskskskskskskskskskskskskskskskskkskkskkskk"
            "skksk")
_CODE = {"first": "f", "warmup": "w", "final": "F", "score": "s", "max_skips": "m", "skipped": "k"}


def test_version_1_applies_with_the_same_decisions_as_before():
    v1 = Policy.from_dict(fresh_v1())
    got = _decisions(v1, "fast")
    for row in range(3):
        assert "".join(_CODE[step[row]] for step in got) == _V1_FAST
    as_v2 = fresh_valid()  # the same coefficients written per mode decide the same
    as_v2["predictors"]["linear"] = dict(as_v2["predictors"]["none"])
    for point in ("balanced", "fast"):
        assert _decisions(v1, point) == _decisions(Policy.from_dict(as_v2), point)


def test_each_point_is_scored_with_its_own_modes_predictor():
    policy = Policy.from_dict(fresh_valid())
    none_params, _ = rule_params(policy, operating_point="balanced")
    linear_params, _ = rule_params(policy, operating_point="fast")
    assert (none_params.a, none_params.b, none_params.c, none_params.d) == (1.2, 0.8, 0.01, 0.0)
    assert (linear_params.a, linear_params.b, linear_params.c, linear_params.d) == (0.6, 0.3, 0.02, 0.001)


def test_the_second_order_term_enters_the_score():
    policy = Policy.from_dict(fresh_valid())
    params, _ = rule_params(policy, operating_point="fast")
    x = torch.zeros(1, 2)
    d = decide(params, 5, 10, x, torch.tensor([500.0]), x.clone(), torch.tensor([600.0]), torch.zeros(1, dtype=torch.long))
    jt = float(np.interp(600.0, params.sens_t, params.sens_jt))
    assert d.scores[0] == pytest.approx(0.3 * jt * 100 + 0.001 * jt * 100**2 + 0.02)


def test_version_2_round_trips_and_version_1_is_saved_as_version_2(tmp_path):
    policy = Policy.from_dict(fresh_valid())
    assert Policy.load(policy.save(tmp_path / "p.json")) == policy
    saved = Policy.from_dict(fresh_v1()).to_dict()
    assert saved["version"] == 2 and "predictor" not in saved
    assert saved["predictors"]["none"] == saved["predictors"]["linear"] == fresh_v1()["predictor"]


def test_a_residual_change_weight_round_trips_and_reaches_the_rule(tmp_path):
    data = fresh_valid()
    data["predictors"]["linear"]["e"] = 0.25
    policy = Policy.from_dict(data)
    assert policy.predictor_for("linear").e == 0.25 and policy.predictor_for("none").e == 0.0
    assert Policy.load(policy.save(tmp_path / "p.json")) == policy
    assert "e" not in policy.to_dict()["predictors"]["none"]  # a weight of 0 is not written
    params, _ = rule_params(policy, operating_point="fast")  # the fixture's linear point
    assert params.e == 0.25


@pytest.mark.parametrize(("mutate", "path", "reason"), [
    (lambda d: d["predictors"].pop("none"), r"predictors\.none", "is missing"),
    (lambda d: d["predictors"].update(taylr={"a": 1, "b": 1, "c": 0, "r2": None, "spearman": None}),
     "predictors.taylr", "not a reuse mode"),
    (lambda d: d.update(predictors={}), "predictors", "at least one predictor"),
    (lambda d: d["predictors"]["linear"].update(d=-1.0), "predictors.linear.d", "must be >= 0"),
    (lambda d: d["predictors"]["linear"].update(e=-0.5), "predictors.linear.e", "must be >= 0"),
    (lambda d: d.update(predictor=d["predictors"]["none"]), "predictor", "not a field"),
])
def test_version_2_refusals_name_the_file_and_field(mutate, path, reason):
    data = fresh_valid()
    mutate(data)
    with pytest.raises(PolicyError, match=rf"^v2\.json: field {path}: .*{reason}.*Fix: "):
        Policy.from_dict(data, source="v2.json")


def test_a_mode_without_its_own_predictor_is_scored_with_the_plain_one():
    # e.g. a file written before a reuse mode existed, run with that mode
    data = fresh_valid()
    del data["predictors"]["linear"]
    policy = Policy.from_dict(data)
    assert policy.predictor_for("linear") == policy.predictor_for("none") == policy.predictor
    params, _ = rule_params(policy, operating_point="fast")  # a linear point
    assert (params.a, params.b, params.c) == (1.2, 0.8, 0.01)


def test_version_1_with_version_2_fields_is_refused():
    data = fresh_v1()
    data["predictors"] = fresh_valid()["predictors"]
    with pytest.raises(PolicyError, match=r"field predictors: is not a field"):
        Policy.from_dict(data, source="v1.json")
