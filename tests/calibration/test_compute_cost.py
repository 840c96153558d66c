"""A "taylor" skip still runs the blocks' cheap parts: the fit states compute as the bench counts it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import sencache
from calibration.baselines._counter import BlockCounter
from calibration.compute_cost import CostedObjective, SkipCosts, measure_skip_costs
from calibration.models import load_model
from calibration.objectives import Evaluation
from policies import OperatingPoint, Policy, evenly_spaced
from sencache.adapters import architecture_for


def test_static_steps_stay_at_or_below_the_target_compute():
    costs = SkipCosts(taylor=0.0103)
    assert costs.static_steps("taylor", 0.4, 30) == 11  # 12 of 30 would measure 0.406
    assert costs.compute("taylor", 11 / 30) <= 0.4 < costs.compute("taylor", 12 / 30)
    assert costs.static_steps("linear", 0.4, 30) == 12  # a whole-stack skip costs nothing
    assert SkipCosts().static_steps("taylor", 0.5, 30) == 15


class _Fixed:
    kind = "fake"

    def evaluate(self, predictor, point):
        return Evaluation(0.1, 0.4, [0.1, 0.1], [0.4, 0.4])


def test_costed_objective_converts_only_the_modes_whose_skips_cost_something():
    costed = CostedObjective(_Fixed(), SkipCosts(taylor=0.1))
    taylor = costed.evaluate(None, OperatingPoint("p", schedule=evenly_spaced(0.4, 30), forecast="taylor"))
    assert taylor.nfe_fraction == pytest.approx(0.4 + 0.6 * 0.1)
    assert taylor.per_run_nfe == pytest.approx([0.46, 0.46])
    linear = costed.evaluate(None, OperatingPoint("p", schedule=evenly_spaced(0.4, 30), forecast="linear"))
    assert linear.nfe_fraction == 0.4


def _macs(loaded, policy: Policy | None) -> float:
    transformer = loaded.pipe.transformer
    counter = BlockCounter(transformer, architecture_for(transformer).blocks(transformer))
    handle = None if policy is None else sencache.apply(loaded.pipe, policy)
    try:
        with torch.no_grad():
            loaded.pipe(["a red fox runs through snow"], generator=torch.Generator().manual_seed(0),
                        output_type="latent", **loaded.call_kwargs(num_inference_steps=30))
        return counter.snapshot().total
    finally:
        counter.remove()
        if handle is not None:
            sencache.remove(loaded.pipe)


@pytest.mark.slow
def test_a_cogvideox_taylor_point_built_for_0_4_measures_at_most_0_4_in_the_benchs_units():
    torch.set_num_threads(1)
    loaded = load_model("toy-cogvideox")
    costs = measure_skip_costs(loaded.pipe, loaded.call_kwargs())
    assert 0.0 < costs.taylor < 0.05  # the modulation Linears of norm1 / norm2
    assert measure_skip_costs(load_model("toy-wan").pipe, load_model("toy-wan").call_kwargs()).taylor == 0.0
    fraction = costs.static_steps("taylor", 0.4, 30) / 30
    point = OperatingPoint("fast", schedule=evenly_spaced(fraction, 30), forecast="taylor")
    shipped = Policy.load("policies/toy-cogvideox.json")
    policy = replace(shipped, operating_points=(point,), default_operating_point="fast")
    measured = _macs(loaded, policy) / _macs(loaded, None)
    assert measured <= 0.4 + 1e-9
    assert measured == pytest.approx(costs.compute("taylor", fraction), abs=2e-3)


def test_collect_records_the_skip_cost_and_a_replay_fit_without_the_model_uses_it(tmp_path, caplog):
    # Before, a replay fit had no model to measure it on and counted a "taylor" point's computed
    # steps only (toy-cogvideox: its 0.4 point measured 0.406 in the bench, and the bench table
    # found no replay-fitted setting at 0.4).
    import json
    import logging

    from calibration.collect import collect
    from calibration.fit import _skip_costs
    from calibration.fitdata import load_fit_data
    from store import CalibrationStore, merge_stores, shard_path
    from tests.calibration.test_collect import PROMPTS

    db = tmp_path / "calib.duckdb"
    collect("tiny-cogvideox", PROMPTS[:1], seeds=1, steps=3, db=db, progress=False)
    loaded = load_model("tiny-cogvideox")
    measured = measure_skip_costs(loaded.pipe, loaded.call_kwargs(num_inference_steps=3))
    assert measured.taylor > 0
    with CalibrationStore(db, read_only=True) as store:
        assert json.loads(store.meta["skip_costs"])["taylor"] == pytest.approx(measured.taylor)
        digest = store.content_digest()
    data = load_fit_data(db)
    with caplog.at_level(logging.WARNING):
        costs = _skip_costs(None, ("none", "taylor"), data.skip_costs)
    assert costs.taylor == pytest.approx(measured.taylor)
    assert not [r for r in caplog.records if "counts only its computed steps" in r.getMessage()]
    # a shard's measurement survives the merge, and the cost is not calibration data (digest unchanged)
    shard = shard_path(tmp_path / "merged.duckdb", 0)
    db.rename(shard)
    merge_stores([shard], tmp_path / "merged.duckdb")
    with CalibrationStore(tmp_path / "merged.duckdb", read_only=True) as store:
        assert json.loads(store.meta["skip_costs"])["taylor"] == pytest.approx(measured.taylor)
        assert store.content_digest() == digest
