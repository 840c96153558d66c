"""Forecast "taylor" as a policy value: the operating point, the bench's knob, fit's search space."""

import pytest

from calibration.baselines.sencache_policy import apply_sencache, split_forecast, with_forecast
from calibration.models import load_model
from policies import OperatingPoint, Policy, PolicyError, config_fingerprint, constant_policy
from policies.tables import EpsSchedule
from sencache.taylor import FORECAST_HOOK


def test_an_operating_point_may_forecast_taylor_and_round_trips():
    point = OperatingPoint("p", EpsSchedule.constant(0.1), forecast="taylor")
    assert OperatingPoint.from_dict(point.to_dict()) == point
    with pytest.raises(PolicyError, match="taylor"):
        OperatingPoint("p", EpsSchedule.constant(0.1), forecast="quadratic")


def test_bench_knob_runs_a_point_with_another_forecast():
    loaded = load_model("tiny-wan")
    policy = constant_policy(1e9, name="flat", fingerprint=config_fingerprint(dict(loaded.pipe.transformer.config)))
    assert split_forecast("flat*2@taylor") == ("flat*2", "taylor")
    assert split_forecast("flat") == ("flat", None)
    with pytest.raises(PolicyError, match="forecast"):
        split_forecast("flat@quadratic")
    attn = loaded.pipe.transformer.blocks[0].attn1
    handle = apply_sencache(loaded.pipe, "flat*2@taylor", policy)
    assert handle.config["forecast"] == "taylor" and FORECAST_HOOK in attn._diffusers_hook.hooks
    handle.remove()
    # a point whose file says "taylor" runs it without a suffix; "@none" turns it off
    taylor = with_forecast(policy, "flat", "taylor")
    assert Policy.from_dict(taylor.to_dict()).operating_point("flat").forecast == "taylor"
    handle = apply_sencache(loaded.pipe, "flat", taylor)
    assert handle.config["forecast"] == "taylor" and FORECAST_HOOK in attn._diffusers_hook.hooks
    handle = apply_sencache(loaded.pipe, "flat@none", taylor)
    assert handle.config["forecast"] == "none" and FORECAST_HOOK not in attn._diffusers_hook.hooks
    handle.remove()
