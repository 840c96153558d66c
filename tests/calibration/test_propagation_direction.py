"""Where `collect --propagation` points its perturbation: along the output's change (a cache's error)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.hooks import HookRegistry

from calibration.collect import collect
from calibration.models import load_model
from calibration.propagation import PERTURB_HOOK, _PerturbHook
from policies import InputError
from store import CalibrationStore
from tests.calibration.test_collect import PROMPTS

STEPS = 4


def _perturbed_run(direction: str, step: int):
    """Run tiny-wan with a perturbation at `step`; return the hook and every transformer call's
    (step, output as it left the transformer)."""
    loaded = load_model("tiny-wan")
    pipe = loaded.pipe
    pipe.set_progress_bar_config(disable=True)
    outputs: list[torch.Tensor] = []
    handle = pipe.transformer.register_forward_hook(
        lambda module, args, out: outputs.append((out[0] if isinstance(out, tuple) else out.sample).detach().clone()))
    registry = HookRegistry.check_if_exists_or_initialize(pipe.transformer)
    hook = _PerturbHook(pipe, step, scale=0.01, seed=7, direction=direction)
    registry.register_hook(hook, PERTURB_HOOK)
    try:
        with torch.no_grad():
            pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), output_type="latent",
                 **loaded.call_kwargs(num_inference_steps=STEPS))
    finally:
        registry.remove_hook(PERTURB_HOOK, recurse=False)
        handle.remove()
    calls_per_step = len(outputs) // STEPS
    return hook, [outputs[i * calls_per_step:(i + 1) * calls_per_step] for i in range(STEPS)]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def test_a_trajectory_perturbation_points_along_the_outputs_change_from_the_step_before():
    step = 2
    hook, by_step = _perturbed_run("trajectory", step)
    assert hook.used_direction == "trajectory"
    before = by_step[step - 1][0]
    unperturbed = by_step[step][0] - hook.delta  # what the first call of `step` gave before δ
    change = (before - unperturbed).mean(dim=0)
    assert _cosine(hook.delta, change) == pytest.approx(1.0, abs=1e-5)
    # δ keeps its size: `scale` of the output's RMS
    assert float(hook.delta.pow(2).mean().sqrt()) == pytest.approx(0.01 * float(unperturbed.pow(2).mean().sqrt()),
                                                                   rel=1e-4)


def test_a_random_perturbation_and_step_zero_use_the_seeded_gaussian_direction():
    random_hook, by_step = _perturbed_run("random", 2)
    assert random_hook.used_direction == "random"
    change = (by_step[1][0] - (by_step[2][0] - random_hook.delta)).mean(dim=0)
    assert abs(_cosine(random_hook.delta, change)) < 0.5
    first, _ = _perturbed_run("trajectory", 0)  # step 0 has no earlier output
    assert first.used_direction == "random"


def test_collect_records_the_direction_and_refuses_an_unknown_one(tmp_path):
    db = tmp_path / "calib.duckdb"
    collect("tiny-wan", PROMPTS[:1], seeds=1, steps=3, db=db, propagation=2, progress=False)
    with CalibrationStore(db, read_only=True) as store:
        extra = json.loads(store.runs().iloc[0]["extra"]) if isinstance(store.runs().iloc[0]["extra"], str) \
            else store.runs().iloc[0]["extra"]
    assert extra["propagation_direction"] == "cache"
    with pytest.raises(InputError, match="--propagation-direction 'sideways'"):
        collect("tiny-wan", PROMPTS[:1], seeds=1, steps=3, db=tmp_path / "other.duckdb", propagation=2,
                progress=False, propagation_direction="sideways")


def test_propagation_steps_skip_step_zero_and_measure_the_last_two():
    from calibration.propagation import propagation_steps

    assert propagation_steps(30, 8) == [1, 6, 10, 14, 19, 24, 28, 29]
    for n, count in ((30, 6), (20, 8), (6, 2), (3, 3)):
        steps = propagation_steps(n, count)
        assert 0 not in steps and steps[-1] == n - 1 and len(steps) <= count
        if count >= 3 and n >= 4:
            assert n - 2 in steps  # the curve must not run straight from mid-way to the last step's spike


@pytest.mark.parametrize("mode", ["none", "linear", "taylor"])
def test_a_cache_gain_makes_replay_of_one_skip_equal_the_rerun_in_every_reuse_mode(tmp_path, mode):
    # Fails with a δ-based gain (random or trajectory direction): replay's e·G(p) then misses the
    # real final error of skipping p (32× at step 2 of toy-cogvideox). For "linear" and "taylor" it
    # fails with one gain for every mode (schema 2): a forecast's error spreads another way than
    # plain reuse's (toy-wan "taylor" skips replayed to 0.43–0.76 of their re-runs).
    from calibration.fit import _Objectives
    from calibration.fitdata import load_fit_data
    from policies import OperatingPoint, Predictor, StaticSchedule

    db = tmp_path / "calib.duckdb"
    collect("tiny-wan", PROMPTS[:1], seeds=1, steps=6, db=db, propagation=3, holdout_fraction=0.0, progress=False)
    data = load_fit_data(db)
    prop = data.propagation
    assert sorted(prop[prop["mode"] == mode]["step"]) == [1, 4, 5]
    table = data.sensitivity_table()
    replay = _Objectives("replay", data, table, "tiny-wan").for_split("calib")
    rerun = _Objectives("rerun", data, table, "tiny-wan").for_split("calib")
    for skipped in (1, 4):
        point = OperatingPoint("one", schedule=StaticSchedule(tuple(i / 5 for i in range(6) if i != skipped)),
                               forecast=mode)
        assert replay.evaluate(Predictor(), point).error == pytest.approx(rerun.evaluate(Predictor(), point).error,
                                                                          rel=1e-3)
