"""A policy fitted under one scheduler, run under another: one warning that says so."""

import warnings

import pytest

import sencache
from policies import Policy
from tests.sencache.fixtures import policy_for, run


def euler_policy(transformer):
    data = policy_for(transformer, 1e9, K=1).to_dict()
    data["scheduler"] = {"class": "FlowMatchEulerDiscreteScheduler", "config": {}}
    return Policy.from_dict(data)


@pytest.fixture
def wan():
    from calibration.zoo.architectures import build_pipeline

    return build_pipeline("wan")


def scheduler_warnings(caught):
    return [w for w in caught if "scheduler" in str(w.message) and "fitted under" in str(w.message)]


def test_a_swapped_scheduler_warns_once(wan):
    from diffusers import UniPCMultistepScheduler

    # Wan's default solver, as its model cards configure it
    wan.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sencache.apply(wan, euler_policy(wan.transformer))
        run(wan, seed=0)
        run(wan, seed=1)
    found = scheduler_warnings(caught)
    assert len(found) == 1
    message = str(found[0].message)
    assert "UniPCMultistepScheduler" in message and "FlowMatchEulerDiscreteScheduler" in message
    assert "sencache-calibrate" in message


def test_the_policys_own_scheduler_does_not_warn(wan):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sencache.apply(wan, euler_policy(wan.transformer))
        run(wan)
    assert scheduler_warnings(caught) == []
