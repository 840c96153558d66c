"""A call that raises must leave nothing behind: the next call, at any resolution, starts fresh."""

import gc
import weakref

import pytest
import torch

import sencache
from tests.sencache.fixtures import policy_for, run


class Boom(RuntimeError):
    pass


def raise_after_step_0(pipe, i, t, kwargs):
    raise Boom("stopped after step 0, as an out-of-memory error would")


@pytest.fixture
def wan():
    from calibration.zoo.architectures import build_pipeline

    return build_pipeline("wan")


def test_a_failed_call_then_another_resolution_matches_a_fresh_run(wan):
    sencache.apply(wan, policy_for(wan.transformer, 1e9, K=1))
    with pytest.raises(Boom):
        run(wan, seed=0, callback_on_step_end=raise_after_step_0)
    # main: "The size of tensor a (12) must match the size of tensor b (8)" at step 1
    after_failure = run(wan, seed=1, height=48, width=48)
    handle = sencache.apply(wan, policy_for(wan.transformer, 1e9, K=1))  # a fresh SenCache
    fresh = run(wan, seed=1, height=48, width=48)
    assert handle.report().computed[0].tolist() == [True, False] * 4
    torch.testing.assert_close(after_failure, fresh, atol=0, rtol=0)


def test_a_forward_that_raises_frees_the_call_at_once(wan):
    handle = sencache.apply(wan, policy_for(wan.transformer, 1e9, K=1))
    kept = []
    calls = {"n": 0}

    def keep_then_fail(module, args, kwargs):
        calls["n"] += 1
        residual = handle._stack.residual("cond")
        if residual is not None:
            kept.append(weakref.ref(residual[0]))
        if calls["n"] == 5:  # step 2's cond forward: after steps 0 and 1 cached something
            raise Boom("out of memory in the blocks")

    probe = wan.transformer.blocks[0].register_forward_pre_hook(keep_then_fail, with_kwargs=True)
    with pytest.raises(Boom):
        run(wan, seed=0)
    probe.remove()
    gc.collect()
    assert kept and all(ref() is None for ref in kept)  # no residual survives the failed forward
    assert handle._runtime.trajectory is None
    # and the next call is a normal one
    run(wan, seed=0)
    assert handle.report().computed[0].tolist() == [True, False] * 4
