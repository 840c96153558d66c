"""The policies shipped in `policies/` belong to the shipped toys and do what they say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import sencache
from calibration.models import load_model
from calibration.zoo.registry import TOY_MODELS, zoo_folder
from policies import Policy, config_fingerprint

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SHIPPED = [name for name in TOY_MODELS if (POLICIES / f"{name}.json").is_file()]


def test_every_toy_ships_a_policy():
    assert SHIPPED == list(TOY_MODELS), "fit and export a policy for every toy (README: calibrate your own model)"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policy_matches_its_toy_and_orders_its_points(name):
    config = json.loads((zoo_folder(name) / "transformer" / "config.json").read_text())
    policy = Policy.load(POLICIES / f"{name}.json", model_fingerprint=config_fingerprint(config))
    fractions = {p.name: p.expected_nfe_fraction for p in policy.operating_points}
    assert fractions["quality"] > fractions["balanced"] > fractions["fast"]
    assert policy.provenance["split"]["holdout"] >= 1  # its points were validated on held-out runs


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policy_computes_what_it_expects(name):
    # The balanced point on a held-out prompt computes about the fraction the fit measured
    # (the fit's holdout runs are other prompts: allow 0.1).
    loaded = load_model(name)
    policy = Policy.load(POLICIES / f"{name}.json")
    handle = sencache.apply(loaded.pipe, policy, operating_point="balanced")
    try:
        loaded.pipe("a red square moving left on a blue background", generator=torch.Generator().manual_seed(0),
                    output_type="latent", **loaded.call_kwargs(num_inference_steps=30))
        computed = float(handle.report().computed.mean())
    finally:
        sencache.remove(loaded.pipe)
    assert computed == pytest.approx(policy.operating_point("balanced").expected_nfe_fraction, abs=0.1)


STEP_COUNTS = (20, 30, 50)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_point_states_its_compute_at_20_30_and_50_steps(name):
    policy = Policy.load(POLICIES / f"{name}.json")
    for point in policy.operating_points:
        stated = dict(point.expected_nfe_by_steps or ())
        assert set(STEP_COUNTS) <= set(stated), f"{name}/{point.name} states {stated}"
        if point.static:  # exactly, and the same fraction at every step count
            assert all(stated[n] == pytest.approx(point.schedule.fraction(n)) for n in STEP_COUNTS)
            assert max(stated.values()) - min(stated.values()) <= 0.05


@pytest.mark.parametrize("name", SHIPPED)
def test_no_shipped_point_is_a_mask_written_as_thresholds(name):
    # A fixed mask is a static schedule, not eps knots at 0 and 1e30 (which drift with the step count).
    for point in Policy.load(POLICIES / f"{name}.json").operating_points:
        if not point.static:
            assert max(point.eps.values) < 1e29, f"{name}/{point.name}: write it as a static schedule"


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_point_computes_what_it_states_at_each_step_count(name):
    # Through the runtime, on other prompts and another seed than the ones it was measured on. The
    # stated fraction is a mean over prompts, and a score-driven point's samples differ (toy-wan
    # `quality` at 20 steps: 0.80-0.95 per sample), so the batch is every held-out prompt (10):
    # a batch of 3 has a sampling spread of about ±0.03 on its own.
    from calibration.zoo.data import heldout_prompts

    loaded = load_model(name)
    policy = Policy.load(POLICIES / f"{name}.json")
    prompts = heldout_prompts()
    for point in policy.operating_points:
        handle = sencache.apply(loaded.pipe, policy, operating_point=point.name)
        try:
            for n in STEP_COUNTS:
                loaded.pipe(prompts, generator=torch.Generator().manual_seed(1), output_type="latent",
                            **loaded.call_kwargs(num_inference_steps=n))
                got = float(handle.report().computed.mean())
                stated = point.expected_nfe_at(n)
                assert got == pytest.approx(stated, abs=0.05), f"{name}/{point.name} at {n} steps"
        finally:
            sencache.remove(loaded.pipe)


@pytest.mark.parametrize("name", SHIPPED)
def test_the_default_point_decides_per_sample_or_ships_static(name):
    # Issue 16's check on a batch of 3 held-out prompts at 30 steps: a score-driven default point
    # must show the score at work — `score` among the reasons of its computed steps and samples
    # that differ in compute and in mask; a point whose steps the zones and the skip cap decide
    # (toy-cogvideox's `balanced` before `recheck`) is a schedule and must ship as one.
    from calibration.zoo.data import heldout_prompts

    loaded = load_model(name)
    policy = Policy.load(POLICIES / f"{name}.json")
    point = policy.operating_point()
    handle = sencache.apply(loaded.pipe, policy)
    try:
        with torch.no_grad():
            loaded.pipe(heldout_prompts()[:3], generator=torch.Generator().manual_seed(0), output_type="latent",
                        **loaded.call_kwargs(num_inference_steps=30))
        report = handle.report()
    finally:
        sencache.remove(loaded.pipe)
    computed = report.computed.astype(bool)
    reasons = {r for row, done in zip(report.reasons, computed) for r, c in zip(row, done) if c}
    masks = {tuple(row) for row in computed.tolist()}
    if point.static:
        assert reasons <= {"first", "schedule", "final"} and len(masks) == 1, (name, reasons)
    else:
        assert "score" in reasons, f"{name}: score-driven by label, but no step computed for its score: {reasons}"
        assert len(masks) > 1 and len(set(computed.sum(axis=1).tolist())) > 1, (name, computed.sum(axis=1))
