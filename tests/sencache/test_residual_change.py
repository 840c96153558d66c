"""The score's residual-change term: tracked per row by the runtime, and deciding per sample."""

import numpy as np
import pytest
import torch

import sencache
import sencache.residual_change as residual_change
from policies import EpsSchedule, OperatingPoint, Policy, Predictor, config_fingerprint, constant_policy
from sencache.residual_change import ResidualChange
from tests.conftest import generate
from tests.sencache.test_rule import params, rows

STEPS = 6


def rms(t):
    return float(t.float().pow(2).mean().sqrt())


def test_the_change_per_step_is_the_rms_difference_over_the_steps_between_two_computes():
    tracker = ResidualChange()
    r0 = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    r1 = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    tracker.record("cond", None, 2, r0, step=0)
    assert torch.isnan(tracker.per_step(2)).all()  # one computed step: no change yet
    # row 1 alone computes at step 3, three steps after its last compute
    tracker.record("cond", torch.tensor([1]), 2, r1[1:], step=3)
    change = tracker.per_step(2)
    assert torch.isnan(change[0])
    assert change[1].item() == pytest.approx(rms(r1[1] - r0[1]) / 3, rel=1e-5)
    # row 0 computes at step 4: its change is over its own four steps
    tracker.record("cond", torch.tensor([0]), 2, r1[:1], step=4)
    assert tracker.per_step(2)[0].item() == pytest.approx(rms(r1[0] - r0[0]) / 4, rel=1e-5)


def test_a_large_residual_is_sketched_and_its_change_estimated(monkeypatch):
    monkeypatch.setattr(residual_change, "MAX_ELEMENTS", 1000)
    tracker = ResidualChange()
    g = torch.Generator().manual_seed(2)
    r0, r1 = torch.randn(1, 400, 64, generator=g), torch.randn(1, 400, 64, generator=g)
    tracker.record("default", None, 1, r0, step=0)
    tracker.record("default", None, 1, r1, step=1)
    assert tracker._contexts["default"].sketch.shape[1] <= 1000
    assert tracker.per_step(1)[0].item() == pytest.approx(rms(r1 - r0), rel=0.1)


def test_a_decision_reads_the_cond_branch_when_cfg_runs_apart():
    tracker = ResidualChange()
    for context, scale in (("uncond", 10.0), ("cond", 1.0)):
        tracker.record(context, None, 1, torch.zeros(1, 4), step=0)
        tracker.record(context, None, 1, torch.full((1, 4), scale), step=1)
    assert tracker.per_step(1)[0].item() == pytest.approx(1.0)
    assert tracker.per_step(3) is None


def test_the_residual_change_term_decides_per_row_and_an_unknown_change_computes():
    p = params(eps=0.5, a=0.0, b=0.0)  # the score is e · change alone
    p = type(p)(**{**p.__dict__, "e": 2.0})
    d = sencache.rule.decide(p, 5, 10, rows(0.0, 0.0, 0.0), torch.tensor([490.0] * 3), rows(0.0, 0.0, 0.0),
                             torch.tensor([500.0] * 3), torch.tensor([0, 0, 0]),
                             torch.tensor([0.1, 0.4, float("nan")], dtype=torch.float64))
    np.testing.assert_allclose(d.scores[:2], [0.2, 0.8])
    assert d.compute.tolist() == [False, True, True]
    assert d.reasons == ["skipped", "score", "score"]
    without = sencache.rule.decide(params(eps=0.5, a=0.0, b=0.0), 5, 10, rows(0.0), torch.tensor([490.0]),
                                   rows(0.0), torch.tensor([500.0]), torch.tensor([0]), torch.tensor([9.0]))
    assert without.compute.tolist() == [False]  # e = 0: the change is not read


def _change_policy(pipe, forecast: str, eps_at: dict[int, float]) -> Policy:
    """A policy whose score is the residual-change term alone (a = b = c = d = 0, e = 1), with ε
    given per step of a `STEPS`-step run (0 elsewhere: compute)."""
    base = constant_policy(0.0, fingerprint=config_fingerprint(dict(pipe.transformer.config)),
                           predictor=Predictor(0.0, 0.0, 0.0, e=1.0), max_skips=STEPS)
    values = tuple(eps_at.get(i, 0.0) for i in range(STEPS))
    point = OperatingPoint("change", EpsSchedule(tuple(i / (STEPS - 1) for i in range(STEPS)), values),
                           max_skips=STEPS, forecast=forecast)
    return Policy.from_dict({**base.to_dict(), "operating_points": [point.to_dict()],
                             "default_operating_point": "change"})


@pytest.mark.parametrize("forecast", ["none", "linear", "taylor"])
def test_the_runtime_scores_each_sample_by_its_own_residual_change(tiny, forecast):
    prompts = ["a red circle moving left", "a blue square turning slowly"]
    handle = sencache.apply(tiny.pipe, _change_policy(tiny.pipe, forecast, {}))
    try:
        generate(tiny, prompts, num_inference_steps=STEPS)
        scores = handle.report().scores
    finally:
        sencache.remove(tiny.pipe)
    # every step computed: steps 0 and 1 have no change yet, from step 2 on each row has its own
    assert np.isnan(scores[:, :2]).all() and np.isfinite(scores[:, 2:]).all()
    step = 3
    low, high = sorted(scores[:, step])
    assert high > low * 1.001, scores[:, step]  # distinct prompts: distinct changes
    policy = _change_policy(tiny.pipe, forecast, {step: (low + high) / 2})
    handle = sencache.apply(tiny.pipe, policy)
    try:
        generate(tiny, prompts, num_inference_steps=STEPS)
        report = handle.report()
    finally:
        sencache.remove(tiny.pipe)
    np.testing.assert_allclose(report.scores[:, step], scores[:, step], rtol=1e-6)
    skipped = int(np.argmin(scores[:, step]))
    assert report.computed[:, step].tolist() == [i != skipped for i in range(2)]
    assert report.reasons[1 - skipped][step] == "score"
    assert report.computed.sum(axis=1).tolist() != [STEPS, STEPS]
