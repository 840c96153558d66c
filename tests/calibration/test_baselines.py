"""Every peer method really skips work on every architecture, measured by counting block Linears.

A method that installs but skips nothing (TaylorSeer's default identifiers on Wan) must fail
here: the assertion compares *measured* block-stack MACs with those of full compute.
"""

from __future__ import annotations

import pytest
import torch

from calibration.baselines import METHODS, BlockCounter, MethodContext, resolve_methods
from calibration.baselines._common import evenly_spaced
from calibration.baselines.magcache import parse_ratios
from calibration.baselines.sencache_policy import parse_knob, policy_knobs, scaled_policy
from calibration.baselines.taylorseer import cache_identifiers
from calibration.baselines.teacache import IDENTITY, TeaCacheController
from calibration.models import load_model
from policies import InputError, Policy, PolicyError, SensitivityTable, config_fingerprint, constant_policy
from sencache.adapters import adapter_for

ARCHS = ["wan", "cogvideox", "ltx"]
STEPS = 6
PROMPT = "a red circle moving left on a blue background"
CALIB = ["a green square moving up on a yellow background"]

#: per method, a knob that must skip on a random tiny model within 6 steps
SKIPPING_KNOB = {
    "uniform": 0.5,
    "sencache-paper": 1.6,
    "sencache": "flat",
    "teacache": 0.8,
    "magcache": 1.0,
    "fbcache": 0.8,
    "taylorseer": 3,
    "easycache": 0.8,
    "dbcache": 0.8,
}


def _policy(transformer):
    # J_t = 0 and J_x = 1: the score is the latent's RMS change, which a random model keeps
    # well under ε = 10, so every step outside the zones can skip (K = 3 caps the run).
    return constant_policy(10.0, model_class=type(transformer).__name__, fingerprint=config_fingerprint(dict(transformer.config)),
                           sensitivity=SensitivityTable.constant(1.0, 0.0), name="flat")


@pytest.fixture(scope="module", params=ARCHS, ids=ARCHS)
def setup(request):
    loaded = load_model(f"tiny-{request.param}")
    transformer = loaded.pipe.transformer
    kwargs = loaded.call_kwargs(num_inference_steps=STEPS)
    ctx = MethodContext(loaded.pipe, kwargs, policy=_policy(transformer), calibration_prompts=CALIB)
    counter = BlockCounter(transformer, adapter_for(transformer).blocks(transformer))
    counter.reset()
    full = _run(loaded, kwargs)
    snap = counter.snapshot()
    yield loaded, kwargs, ctx, counter, snap, full
    counter.remove()


def _run(loaded, kwargs):
    return loaded.pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs).frames


@pytest.mark.slow
@pytest.mark.parametrize("method", list(SKIPPING_KNOB))
def test_every_method_really_skips_blocks(setup, method):
    loaded, kwargs, ctx, counter, full_snap, full = setup
    prepared, _ = METHODS[method].setup(ctx)
    handle = METHODS[method].apply(loaded.pipe, SKIPPING_KNOB[method], **prepared)
    try:
        handle.reset()
        counter.reset()
        out = _run(loaded, kwargs)
        snap = counter.snapshot()
    finally:
        handle.remove()
    assert torch.isfinite(out).all()
    # measured: fewer block-stack MACs than full compute, and at least one block ran fewer times
    assert snap.total < 0.95 * full_snap.total, f"{method} skipped nothing: {snap.total / full_snap.total:.3f}"
    assert (snap.calls < full_snap.calls).any()
    # removed: the pipeline is back to full compute, bit for bit
    counter.reset()
    again = _run(loaded, kwargs)
    assert counter.snapshot().total == full_snap.total
    assert torch.equal(again, full)


def test_none_runs_everything(setup):
    loaded, kwargs, ctx, counter, full_snap, full = setup
    handle = METHODS["none"].apply(loaded.pipe, None)
    counter.reset()
    assert torch.equal(_run(loaded, kwargs), full)
    assert counter.snapshot().total == full_snap.total
    handle.remove()


def test_counter_counts_each_block_once_per_call(setup):
    loaded, kwargs, ctx, counter, full_snap, full = setup
    calls_per_step = 2 if type(loaded.pipe.transformer).__name__.startswith("Wan") else 1  # Wan: cond, uncond
    assert full_snap.calls.tolist() == [STEPS * calls_per_step] * len(full_snap.calls)
    assert len(full_snap.per_call) == STEPS * calls_per_step


def test_taylorseer_identifiers_match_attention_and_ffn(setup):
    import re

    loaded = setup[0]
    names = [n for n, _ in loaded.pipe.transformer.named_modules() if re.fullmatch(cache_identifiers(loaded.pipe)[0], n)]
    assert names and all(n.split(".")[-1] in ("attn1", "attn2", "ffn", "ff") for n in names)


@pytest.mark.parametrize("n, f, expected", [(10, 0.5, {0, 2, 4, 7, 9}), (10, 1.0, set(range(10))), (8, 0.1, {0, 7})],
                         ids=["half", "all", "floor-two"])
def test_uniform_keeps_first_and_last(n, f, expected):
    # half: 0.5 x 10 = 5 steps -> linspace(0, 9, 5) = 0, 2.25, 4.5, 6.75, 9 -> 0, 2, 4 (4.5 rounds to even), 7, 9
    # floor-two: 0.1 x 8 rounds to 1, raised to 2 -> the first and the last step
    assert evenly_spaced(n, f) == expected


class _Tracker:
    def __init__(self):
        self.step, self.num_steps = 0, 10


def test_teacache_accumulates_and_resets():
    # identity polynomial, threshold 0.25; modulated inputs 1, 1.1, 1.2, 1.3, ... -> relative L1
    # changes ~0.1, 0.091, 0.083: accumulate 0.1 (skip), 0.191 (skip), 0.274 (compute, reset)
    tracker = _Tracker()
    ctl = TeaCacheController(tracker, torch.nn.Linear(1, 1), 0.25, IDENTITY)
    decisions = []
    for step in range(5):
        tracker.step = step
        ctl.pending = torch.full((1, 4), 1.0 + 0.1 * step)
        decisions.append(ctl.compute_mask("cond", 1) is None)
    assert decisions == [True, False, False, True, False]
    ctl.remove()


def test_magcache_ratio_parsing():
    printed = "noise\n\n[MagCache] Calibration Complete. Copy these values to MagCacheConfig(mag_ratios=...):\n[1.0, 0.9, 1.1]\n\n"
    assert parse_ratios(printed + printed.replace("0.9", "0.7")) == [[1.0, 0.9, 1.1], [1.0, 0.7, 1.1]]


def test_sencache_knobs_scale_a_point_a_scale_can_move():
    from calibration.fit import uniform_point

    # default "balanced" is a fixed schedule (ε 0 or 1e30 at every knot): scaling it changes nothing,
    # so the scaled knobs go to "quality", the first point with a real threshold
    data = constant_policy(0.2, name="quality").to_dict()
    data["operating_points"].append(uniform_point(0.5, 10, "balanced").to_dict())
    data["default_operating_point"] = "balanced"
    policy = Policy.from_dict(data)
    assert policy_knobs(policy) == ["quality", "balanced", "quality*0.5", "quality*2", "quality*4"]
    only_fixed = dict(data, operating_points=data["operating_points"][1:])
    assert policy_knobs(Policy.from_dict(only_fixed)) == ["balanced"]


def test_sencache_knobs_reach_above_the_highest_fitted_point():
    # Before, only the default point was scaled: a curve whose top point sat below 0.7 had no
    # SenCache value there (toy-cogvideox, `quality` at 0.637).
    from dataclasses import replace

    quality = replace(constant_policy(0.1, name="quality").operating_point("quality"), expected_nfe_fraction=0.64)
    balanced = replace(constant_policy(0.2, name="balanced").operating_point("balanced"), expected_nfe_fraction=0.47)
    data = constant_policy(0.2, name="balanced").to_dict()
    paper = replace(constant_policy(0.3, name="paper").operating_point("paper"), expected_nfe_fraction=0.78)
    data["operating_points"] = [quality.to_dict(), balanced.to_dict(), paper.to_dict()]
    data["default_operating_point"] = "balanced"
    knobs = policy_knobs(Policy.from_dict(data))
    # the reference `paper` computes more than `quality` but is not a fitted point
    assert knobs == ["quality", "balanced", "paper", "balanced*0.5", "balanced*2", "balanced*4", "quality*0.5"]


def test_sencache_knobs_and_scaling():
    policy = constant_policy(0.2, name="flat")
    assert policy_knobs(policy) == ["flat", "flat*0.5", "flat*2", "flat*4"]
    assert parse_knob("flat*2") == ("flat", 2.0)
    doubled = scaled_policy(policy, "flat", 2.0)
    assert doubled.operating_point("flat").eps(0.5) == pytest.approx(0.4)
    with pytest.raises(PolicyError):
        parse_knob("flat*zero")
    with pytest.raises(PolicyError):
        scaled_policy(policy, "missing", 1.0)


def test_resolve_methods():
    assert resolve_methods("uniform,teacache", have_policy=False) == ["none", "uniform", "teacache"]
    assert "sencache" not in resolve_methods(None, have_policy=False)
    assert resolve_methods(None, have_policy=True)[0] == "none"
    with pytest.raises(InputError, match="known methods: none, uniform"):
        resolve_methods("uniform,bogus", have_policy=False)
    with pytest.raises(InputError, match="--policy"):
        resolve_methods("sencache", have_policy=False)


def test_teacache_polynomial_from_a_store(tmp_path):
    import numpy as np
    import pandas as pd

    from calibration.baselines.teacache import coefficients_from_store
    from store import CalibrationStore

    # per step i: signal s_i; reusing R_{i-1} at step i errs by 2·s_i·out_norm (out_norm 0.5),
    # so the relative error is exactly 2·s: the fit must recover poly(x) = 2x
    path = tmp_path / "calib.duckdb"
    store = CalibrationStore(path)
    n = 10
    for seed in range(3):
        s = 0.05 + 0.01 * np.arange(n) + 0.003 * seed
        steps = pd.DataFrame({"step": np.arange(n), "timestep": 1000.0 - 100 * np.arange(n), "dx_norm": s,
                              "x_norm": np.ones(n), "out_norm": np.full(n, 0.5), "teacache_signal": s})
        errors = pd.DataFrame({"step": np.arange(n - 1), "lag": 1, "dx": s[1:], "dt": 100.0,
                               "residual_error": 2 * s[1:] * 0.5, "output_error": s[1:]})
        run = {"model_name": "m", "model_fingerprint": "f" * 16, "pipeline_class": "WanPipeline",
               "scheduler_class": "S", "scheduler_config": {}, "prompt": f"p{seed}", "seed": seed, "num_steps": n,
               "split": "calib", "estimator": "trajectory"}
        store.write_run(run, steps, None, errors, None)
    store.close()
    coefficients, note = coefficients_from_store(str(path), "f" * 16)
    assert np.polyval(coefficients, 0.1) == pytest.approx(0.2, abs=1e-6)
    assert note["points"] == 27 and "store" in note["source"]  # 3 runs x steps 1..9
    with pytest.raises(InputError):
        coefficients_from_store(str(path), "0" * 16)  # a store of another model


def test_sencache_static_runs_each_points_static_twin():
    # The stored twin when the policy has one; else evenly spaced at the point's expected compute.
    from calibration.baselines.sencache_static import twin_of
    from policies import StaticSchedule

    loaded = load_model("tiny-wan")
    transformer = loaded.pipe.transformer
    data = _policy(transformer).to_dict()
    data["operating_points"][0]["expected_nfe_fraction"] = 0.5
    twin = {"name": "x", "schedule": StaticSchedule((0.0, 0.2, 1.0), 0.5).to_dict(), "expected_nfe_fraction": 0.5,
            "expected_error": None}
    data["provenance"] = {"metrics": {"static_twins": {"flat": {"origin": "search (trial 3)", "point": twin}}}}
    policy = Policy.from_dict(data)
    point, origin = twin_of(policy, "flat", STEPS)
    assert point.static and "trial 3" in origin
    bare = Policy.from_dict(dict(data, provenance={}))
    even, origin = twin_of(bare, "flat", STEPS)
    assert sorted(even.schedule.steps(STEPS)) == [0, 2, 5] and "evenly spaced" in origin
    kwargs = loaded.call_kwargs(num_inference_steps=STEPS)
    ctx = MethodContext(loaded.pipe, kwargs, policy=policy, calibration_prompts=CALIB)
    method = METHODS["sencache-static"]
    assert method.sweep(ctx) == ["flat"]
    prepared, _ = method.setup(ctx)
    handle = method.apply(loaded.pipe, "flat", **prepared)
    try:
        _run(loaded, kwargs)
        mask = handle.computed_mask()
    finally:
        handle.remove()
    assert [i for i in range(STEPS) if mask[0, i]] == sorted(point.schedule.steps(STEPS))


def test_a_point_that_ships_static_is_its_own_twin():
    # its stored twin is the schedule it was judged against (toy-cogvideox's `fast`: a "taylor"
    # mask, where the "linear" schedule that won on the holdout ships): the score adds nothing
    from calibration.baselines.sencache_static import twin_of
    from policies import StaticSchedule

    data = _policy(load_model("tiny-wan").pipe.transformer).to_dict()
    shipped = StaticSchedule((0.0, 0.4, 1.0), 0.5)
    data["operating_points"][0] = {"name": "flat", "schedule": shipped.to_dict(), "forecast": "linear",
                                   "expected_nfe_fraction": 0.5, "expected_error": 0.01}
    judged = {"name": "x", "schedule": StaticSchedule((0.0, 0.2, 1.0), 0.5).to_dict(), "forecast": "taylor",
              "expected_nfe_fraction": 0.5, "expected_error": None}
    data["provenance"] = {"metrics": {"static_twins": {"flat": {"origin": "the point's own usual mask",
                                                               "point": judged}}}}
    twin, origin = twin_of(Policy.from_dict(data), "flat", STEPS)
    assert (twin.schedule, twin.forecast, twin.name) == (shipped, "linear", "flat-static")
    assert "itself" in origin
