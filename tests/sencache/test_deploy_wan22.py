"""Wan 2.2 A14B: both experts (`transformer`, `transformer_2`) are cached, and both skip."""

import pytest
import torch

import sencache
from tests.sencache.fixtures import policy_for, run, tiny_wan22


@pytest.fixture
def wan22():
    # 8 steps, shift 3: with the boundary at t = 875, steps 0..3 go to `transformer`, 4..7 to `transformer_2`
    return tiny_wan22(boundary_ratio=0.875)


def test_both_experts_report_skips(wan22):
    rows = {"transformer": 0, "transformer_2": 0}
    for name in rows:
        getattr(wan22, name).blocks[1].attn1.register_forward_pre_hook(
            lambda m, args, kwargs, name=name: rows.__setitem__(name, rows[name] + 1), with_kwargs=True)
    handle = sencache.apply(wan22, policy_for(wan22.transformer, 1e9, K=1))
    run(wan22)
    high, low = handle.report("transformer"), handle.report("transformer_2")
    steps = wan22.scheduler.timesteps
    split = int((steps >= 875).sum())
    assert 0 < split < 8
    # each expert: its first step computes ("first": the other expert's residual is not its own),
    # then K = 1 alternates; the steps the other expert ran read "not run"
    assert high.reasons[0][:split][:2] == ["first", "skipped"] and set(high.reasons[0][split:]) == {"not run"}
    assert low.reasons[0][split:][:2] == ["first", "skipped"] and set(low.reasons[0][:split]) == {"not run"}
    both = handle.report()
    assert both.computed[0].tolist() == high.computed[0][:split].tolist() + low.computed[0][split:].tolist()
    # the blocks of both experts ran only on the steps their report computed (cond + uncond)
    assert rows["transformer"] == 2 * int(high.computed[0][:split].sum())
    assert rows["transformer_2"] == 2 * int(low.computed[0][split:].sum())
    assert not both.computed[0].all()
    sencache.remove(wan22)
    assert not hasattr(wan22.transformer_2, "_sencache_handle") and wan22.transformer_2._cache_config is None


def test_a_policy_per_expert(wan22):
    policies = {"transformer": policy_for(wan22.transformer, 0.0), "transformer_2": policy_for(wan22.transformer, 1e9)}
    handle = sencache.apply(wan22, policies)
    run(wan22)
    split = int((wan22.scheduler.timesteps >= 875).sum())
    assert handle.report("transformer").computed[0][:split].all()  # ε = 0: the high-noise expert never skips
    assert not handle.report("transformer_2").computed[0][split:].all()
    sencache.remove(wan22)
    plain = run(wan22)
    assert torch.isfinite(plain).all()
