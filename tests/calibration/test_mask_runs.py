"""`collect` re-runs whole static schedules, drawn as the fit draws its static candidates, and keeps
their final errors: what calibrates replay's compounding (issue 17)."""

from __future__ import annotations

import pytest
import torch

from calibration.collect import collect
from calibration.mask_runs import (ANCHOR_FRACTIONS, CalibrationMask, anchor_masks, draw_masks, mask_key,
                                   measure_mask_errors, parse_mask)
from calibration.shapes import NFE_RANGE
from store import CalibrationStore
from tests.calibration.test_collect import PROMPTS


def test_masks_are_drawn_per_run_as_static_candidates_and_the_same_on_a_rerun():
    masks = draw_masks(30, 12, ("none", "linear", "taylor"), "a red circle", 0)
    assert masks == draw_masks(30, 12, ("none", "linear", "taylor"), "a red circle", 0)  # resumable
    assert masks != draw_masks(30, 12, ("none", "linear", "taylor"), "a red circle", 1)
    assert masks != draw_masks(30, 12, ("none", "linear", "taylor"), "a blue square", 0)
    assert len(set(masks)) == 12
    assert [m.mode for m in masks] == ["none", "linear", "taylor"] * 4  # the modes take turns
    for mask in masks:
        assert mask.computed[0] == 0 and mask.computed[-1] == 29  # a static schedule computes both ends
        assert NFE_RANGE[0] - 1 / 30 <= len(mask.computed) / 30 <= NFE_RANGE[1] + 1 / 30
        assert parse_mask(mask.key) == frozenset(mask.computed)
    assert draw_masks(2, 12, ("none",), "p", 0) == [] and draw_masks(30, 0, ("none",), "p", 0) == []


def test_the_anchors_are_the_fits_evenly_spaced_candidates_in_every_mode():
    from calibration.fit import TARGETS, uniform_point

    anchors = anchor_masks(30, ("none", "taylor"))
    assert len(anchors) == 2 * len(ANCHOR_FRACTIONS) and set(ANCHOR_FRACTIONS) == set(TARGETS.values())
    for fraction in ANCHOR_FRACTIONS:
        steps = tuple(sorted(uniform_point(fraction, 30).schedule.steps(30)))
        assert {m.mode for m in anchors if m.computed == steps} == {"none", "taylor"}
    # a mode whose skips still cost compute computes fewer steps, as the fit's `uniform` candidate does
    from calibration.compute_cost import SkipCosts

    costs = SkipCosts(taylor=0.0103)
    costed = anchor_masks(30, ("none", "taylor"), costs)
    for fraction in ANCHOR_FRACTIONS:
        fit_uniform = uniform_point(costs.static_steps("taylor", fraction, 30) / 30, 30).schedule.steps(30)
        assert any(m.mode == "taylor" and m.computed == tuple(sorted(fit_uniform)) for m in costed)
    assert len(costed[-1].computed) == 11  # taylor at 0.4: 11 of 30 steps, not 12


def test_a_short_run_draws_no_mask_twice():
    masks = draw_masks(5, 12, ("none",), "p", 0)
    assert len(masks) == len(set(masks)) and 1 <= len(masks) <= 12


def test_collect_stores_each_masks_final_error_as_the_runtime_makes_it(tmp_path):
    # Fails when collect leaves the masks out, or stores an error the runtime does not reproduce.
    from calibration.models import load_model

    db = tmp_path / "calib.duckdb"
    collect("tiny-wan", PROMPTS[:1], seeds=1, steps=6, db=db, k_max=2, propagation=2, mask_runs=3,
            holdout_fraction=0.0, progress=False)
    with CalibrationStore(db, read_only=True) as store:
        rows = store.mask_errors()
        run = store.runs().iloc[0]
    modes = ("none", "linear", "taylor")
    drawn = draw_masks(6, 3, modes, run["prompt"], int(run["seed"]))
    assert [m.mode for m in drawn] == list(modes)  # one drawn mask per mode, in turn
    expected = {(m.mode, m.key) for m in drawn + anchor_masks(6, modes)}  # and the anchors, once each
    assert set(zip(rows["mode"], rows["mask"])) == expected and len(rows) == len(expected)
    assert (rows["error"] > 0).all()
    loaded = load_model("tiny-wan")
    call = loaded.call_kwargs(num_inference_steps=6)

    def run_once():
        return loaded.pipe(prompt=run["prompt"], generator=torch.Generator().manual_seed(int(run["seed"])),
                           output_type="latent", **call).frames

    full = run_once()
    first = rows.iloc[0]
    again = measure_mask_errors(loaded.pipe, run_once, full, [CalibrationMask(first["mode"],
                                                                             tuple(sorted(parse_mask(first["mask"]))))], 6)
    assert again[0]["mask"] == first["mask"] == mask_key(parse_mask(first["mask"]))
    assert again[0]["error"] == pytest.approx(float(first["error"]), rel=1e-4)


def test_collect_without_propagation_re_runs_no_mask_and_refuses_a_negative_count(tmp_path):
    from policies import InputError

    db = tmp_path / "calib.duckdb"
    collect("tiny-wan", PROMPTS[:1], seeds=1, steps=3, db=db, k_max=1, progress=False)
    with CalibrationStore(db, read_only=True) as store:
        assert store.table_counts()["mask_errors"] == 0
    with pytest.raises(InputError, match="--mask-runs"):
        collect("tiny-wan", PROMPTS[:1], seeds=1, steps=3, db=tmp_path / "b.duckdb", mask_runs=-1, progress=False)
