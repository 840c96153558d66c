"""The rule by hand: scores, thresholds, zones and the consecutive-skip cap."""

import numpy as np
import torch

from policies import EpsSchedule
from sencache.rule import RuleParams, decide, step_position


def params(eps=1.0, K=2, zones=(0, 0), a=1.0, b=1.0, c=0.0, jx=(2.0, 2.0), jt=(0.01, 0.01)):
    return RuleParams(
        a=a, b=b, c=c,
        sens_t=np.array([0.0, 1000.0]), sens_jx=np.array(jx), sens_jt=np.array(jt),
        eps=eps if callable(eps) else EpsSchedule.constant(eps),
        max_skips=K, zones=lambda n: zones,
    )


def rows(*values):
    """Latents [B, 4] whose RMS distance to zeros is |value| (every entry equals the value)."""
    return torch.tensor([[v] * 4 for v in values], dtype=torch.float32)


def test_score_is_sensitivity_weighted_change():
    # row 0: J_x 2 · ‖Δx‖ 0.1 + J_t 0.01 · |Δt| 10 = 0.2 + 0.1 = 0.3 ≤ 0.35 → skip
    # row 1: 2 · 0.2 + 0.1 = 0.5 > 0.35 → compute
    d = decide(params(eps=0.35), step=5, num_steps=10, x=rows(0.1, 0.2), t=torch.tensor([490.0, 490.0]),
               ref_x=rows(0.0, 0.0), ref_t=torch.tensor([500.0, 500.0]), skips_in_row=torch.tensor([0, 0]))
    np.testing.assert_allclose(d.scores, [0.3, 0.5], rtol=1e-6)
    assert d.compute.tolist() == [False, True]
    assert d.reasons == ["skipped", "score"]


def test_coefficients_a_b_c_enter_linearly():
    # a 3 · (2 · 0.1) + b 0 · ... + c 0.05 = 0.65
    d = decide(params(eps=1.0, a=3.0, b=0.0, c=0.05), 5, 10, rows(0.1), torch.tensor([400.0]),
               rows(0.0), torch.tensor([500.0]), torch.tensor([0]))
    np.testing.assert_allclose(d.scores, [0.65], rtol=1e-6)


def test_sensitivity_is_read_at_the_reference_timestep():
    # J_x rises linearly from 0 at t=0 to 10 at t=1000; reference at t=300 → J_x = 3; 3 · 0.1 = 0.3
    d = decide(params(eps=1.0, jx=(0.0, 10.0), jt=(0.0, 0.0)), 5, 10, rows(0.1), torch.tensor([200.0]),
               rows(0.0), torch.tensor([300.0]), torch.tensor([0]))
    np.testing.assert_allclose(d.scores, [0.3], rtol=1e-6)


def test_max_consecutive_skips_forces_a_compute():
    # under the threshold, but already K = 2 skips in a row → compute, reason max_skips
    d = decide(params(eps=10.0, K=2), 5, 10, rows(0.1, 0.1), torch.tensor([490.0] * 2), rows(0.0, 0.0),
               torch.tensor([500.0] * 2), torch.tensor([1, 2]))
    assert d.compute.tolist() == [False, True]
    assert d.reasons == ["skipped", "max_skips"]


def test_warmup_and_final_zones_always_compute():
    p = params(eps=10.0, zones=(2, 3))  # N = 10: steps 0,1 warm-up; 7,8,9 final
    args = (rows(0.0), torch.tensor([1.0]), rows(0.0), torch.tensor([1.0]), torch.tensor([0]))
    assert [bool(decide(p, i, 10, *args).compute[0]) for i in range(10)] == [True] * 2 + [False] * 5 + [True] * 3
    assert decide(p, 1, 10, *args).reasons == ["warmup"]
    assert decide(p, 8, 10, *args).reasons == ["final"]


def test_first_step_computes_without_a_reference():
    d = decide(params(eps=10.0), 0, 10, rows(0.1), torch.tensor([999.0]), None, None, None)
    assert d.compute.tolist() == [True] and d.reasons == ["first"] and np.isnan(d.scores).all()


def test_two_level_eps_is_strict_early_and_looser_late():
    # ε = 0.1 for p ≤ 0.2, 0.5 after. N = 11 → p_i = i/10. Score 0.3 (2 · 0.1 + 0.01 · 10):
    # step 2 (p 0.2): 0.3 > 0.1 → compute; step 3 (p 0.3): 0.3 ≤ 0.5 → skip
    p = params(eps=EpsSchedule.two_level(0.1, 0.5, 0.2))
    args = (rows(0.1), torch.tensor([490.0]), rows(0.0), torch.tensor([500.0]), torch.tensor([0]))
    assert decide(p, 2, 11, *args).compute.tolist() == [True]
    assert decide(p, 3, 11, *args).compute.tolist() == [False]
    assert step_position(3, 11) == 0.3 and step_position(0, 1) == 0.0
