"""`recording`: what it measures on a full-compute trajectory, and that it leaves no trace."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.hooks import HookRegistry

from calibration.recording import RECORD_HOOK, TableSink, recording
from calibration.signals import ratio
from sencache.adapters import adapter_for
from sencache.norms import rms_diff
from sencache.stack import HEAD_HOOK, install_stack, remove_stack
from tests.conftest import generate

PROMPT = "a red circle moving left on a blue background"
STEPS = 4


def _hook_names(transformer):
    names = set(getattr(getattr(transformer, "_diffusers_hook", None), "hooks", {}) or {})
    for block in adapter_for(transformer).blocks(transformer):
        names |= set(getattr(getattr(block, "_diffusers_hook", None), "hooks", {}) or {})
    return names


def _record(loaded, prompts=PROMPT, steps=STEPS, k_max=2, **kwargs):
    sink = TableSink()
    with recording(loaded.pipe, sink, k_max=k_max, **kwargs) as rec:
        out = generate(loaded, prompts, num_inference_steps=steps)
        rec.finish(out)
    return out, sink


def test_recording_is_bit_identical_and_leaves_no_hooks(tiny):
    before = generate(tiny, PROMPT, num_inference_steps=STEPS)
    recorded, sink = _record(tiny)
    after = generate(tiny, PROMPT, num_inference_steps=STEPS)
    assert torch.equal(before, recorded)  # the extra forwards do not touch the trajectory
    assert torch.equal(before, after)  # and nothing stays behind
    assert not any(n.startswith("sencache") for n in _hook_names(tiny.pipe.transformer))


def test_one_steps_row_per_step_per_sample(tiny):
    _, sink = _record(tiny, prompts=[PROMPT, "a green square moving up on a red background"])
    steps = sink.frame("steps")
    assert len(steps) == STEPS * 2
    assert sorted(steps.groupby("sample").size().tolist()) == [STEPS, STEPS]
    assert steps["dx_norm"].notna().all()  # the last one from rec.finish(final latents)
    peers = ["teacache_signal", "first_block_change", "mag_ratio"]
    assert steps.loc[steps["step"] > 0, peers].notna().all().all()  # a change needs a previous step
    assert steps.loc[steps["step"] == 0, peers].isna().all().all()
    sens = sink.frame("sensitivities")
    assert len(sens) == (STEPS - 1) * 2  # no t_{N} after the last step
    errors = sink.frame("cache_errors")
    # lags 1..2 at steps 0..3: (i, k) with i + k <= 3 -> 3 + 2 = 5 per sample
    assert len(errors) == 5 * 2
    latents = sink.frame("latents")
    assert sorted(latents["step"].unique()) == list(range(STEPS + 1))  # x_0..x_{N-1} and x_N


def test_estimates_are_finite_or_none(tiny):
    _, sink = _record(tiny)
    for table, columns in {"sensitivities": ["J_x", "J_t"], "cache_errors": ["dx", "dt", "residual_error", "output_error"],
                           "steps": ["dx_norm", "x_norm", "out_norm", "mag_ratio"]}.items():
        for column in columns:
            for value in sink.rows[table]:
                v = value[column]
                assert v is None or math.isfinite(v), (table, column, v)
    sens = sink.frame("sensitivities")
    assert (sens[["J_x", "J_t"]].to_numpy() > 0).all()


def test_zero_denominators_give_none():
    # 1/0 has no estimate; 0/0 neither; 0/1 is a real 0.
    assert ratio(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])) == [None, None, 0.0]


def test_a_model_that_never_moves_gives_null_jx():
    # Zero output head -> f = 0 everywhere -> Euler steps leave x unchanged: ‖x_{i+1} − x_i‖ = 0,
    # so J_x = 0/0 -> NULL; J_t = ‖g − f‖/|Δt| = 0/|Δt| = 0 (a real zero, not NULL).
    from calibration.models import load_model

    loaded = load_model("tiny-wan")
    torch.nn.init.zeros_(loaded.pipe.transformer.proj_out.weight)
    torch.nn.init.zeros_(loaded.pipe.transformer.proj_out.bias)
    _, sink = _record(loaded)
    sens = sink.frame("sensitivities")
    assert sens["J_x"].isna().all()
    assert (sens["J_t"] == 0).all()
    assert sink.frame("steps")["dx_norm"].eq(0).all()


class _Capture:
    """A controller that computes every row and keeps each cond forward's kwargs, output, residual."""

    def __init__(self):
        self.calls = []

    def compute_mask(self, context, batch):
        return None

    def stack_ran(self, context, rows, batch):
        pass


def _capture_cond_forwards(loaded):
    """Run one generation with the stack hooks on, keeping each cond forward's kwargs, output and
    block-stack residual in `capture.calls`; returns the controller and the installed hooks."""
    transformer = loaded.pipe.transformer
    capture = _Capture()
    hooks = install_stack(transformer, adapter_for(transformer), capture)
    original = transformer.forward

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        context = hooks.head.state._context
        if context is not None and context.name == "cond":
            capture.calls.append((dict(kwargs), out[0].clone(), hooks.residual("cond")))
        return out

    transformer.forward = spy
    try:
        generate(loaded, PROMPT, num_inference_steps=STEPS)
    finally:
        transformer.forward = original
    return capture, hooks


def test_residual_reuse_error_equals_a_hand_run_bypassed_forward():
    from calibration.models import load_model

    loaded = load_model("tiny-wan")
    _, sink = _record(loaded, k_max=3)
    recorded = {(r["step"], r["lag"]): r for r in sink.rows["cache_errors"]}

    # Hand run: keep each cond forward's inputs, output and block-stack residual ...
    transformer = loaded.pipe.transformer
    capture, hooks = _capture_cond_forwards(loaded)
    # ... then at step 3 replace the blocks by `input + R_1` (lag 2): every row skips.
    kwargs, f3, _ = capture.calls[3]
    _, f1, r1 = capture.calls[1]
    capture.compute_mask = lambda context, batch: torch.zeros(batch, dtype=torch.bool)
    hooks.set_residual("cond", r1)
    with torch.no_grad(), transformer.cache_context("cond"):
        bypassed = transformer(**kwargs)[0]
    remove_stack(transformer, hooks.adapter)
    assert recorded[(1, 2)]["residual_error"] == pytest.approx(float(rms_diff(f3, bypassed)[0]), rel=1e-6)
    assert recorded[(1, 2)]["output_error"] == pytest.approx(float(rms_diff(f3, f1)[0]), rel=1e-6)
    assert recorded[(1, 2)]["residual_error"] < recorded[(1, 2)]["output_error"]  # reusing R beats reusing f


def test_reference_estimator_rows():
    from calibration.estimators import reference_latents
    from calibration.models import load_model

    loaded = load_model("tiny-wan")
    ref = reference_latents(loaded.pipe, PROMPT, seed=0)
    _, sink = _record(loaded, estimator="reference", reference=ref)
    sens = sink.frame("sensitivities")
    assert set(sens["estimator"]) == {"reference"}
    assert len(sens) == STEPS - 1
    assert np.isfinite(sens[["J_x", "J_t"]].to_numpy(dtype=float)).all()


@pytest.mark.parametrize("arch", ["cogvideox", "ltx"])
def test_reference_latents_match_the_loop_layout(arch):
    from calibration.estimators import reference_latents
    from calibration.models import load_model

    loaded = load_model(f"tiny-{arch}")
    ref = reference_latents(loaded.pipe, PROMPT, seed=0)
    _, sink = _record(loaded, steps=2, estimator="reference", reference=ref)
    latent = sink.frame("latents")["value"].iloc[0]
    assert tuple(ref.clean.shape[1:]) == latent.shape


def test_hooks_are_removed_when_the_call_fails(tiny):
    with pytest.raises(RuntimeError, match="boom"):
        with recording(tiny.pipe, TableSink()):
            raise RuntimeError("boom")
    transformer = tiny.pipe.transformer
    assert RECORD_HOOK not in HookRegistry.check_if_exists_or_initialize(transformer).hooks
    assert HEAD_HOOK not in _hook_names(transformer)


def test_each_reuse_modes_error_equals_a_hand_run_of_what_the_runtime_reuses():
    # "none" reuses R_1 at step 3; "linear" reuses R_1 + w·(R_1 − R_0) with the runtime's w.
    from calibration.models import load_model
    from sencache.runtime import forecast_weights

    loaded = load_model("tiny-wan")
    _, sink = _record(loaded, k_max=3)
    modes = {(r["step"], r["lag"], r["mode"]): r["error"] for r in sink.rows["reuse_errors"]}
    plain = {(r["step"], r["lag"]): r["residual_error"] for r in sink.rows["cache_errors"]}
    assert {m for _, _, m in modes} == {"none", "linear", "taylor"}
    assert all(modes[(s, k, "none")] == plain[(s, k)] for s, k in plain)  # the same measurement
    assert modes[(0, 1, "linear")] == modes[(0, 1, "none")]  # step 0 has no earlier residual: w = 0

    transformer = loaded.pipe.transformer
    capture, hooks = _capture_cond_forwards(loaded)
    kwargs, f3, _ = capture.calls[3]
    k0, _, r0 = capture.calls[0]
    k1, _, r1 = capture.calls[1]
    t = lambda kw: torch.as_tensor(kw["timestep"]).float().reshape(-1)[:1]  # noqa: E731
    w = forecast_weights(t(kwargs), t(k1), t(k0), torch.zeros(1, dtype=torch.bool))
    assert float(w) > 0
    forecast = tuple(r + float(w) * (r - p) for r, p in zip(r1, r0))
    capture.compute_mask = lambda context, batch: torch.zeros(batch, dtype=torch.bool)
    hooks.set_residual("cond", forecast)
    with torch.no_grad(), transformer.cache_context("cond"):
        bypassed = transformer(**kwargs)[0]
    remove_stack(transformer, hooks.adapter)
    assert modes[(1, 2, "linear")] == pytest.approx(float(rms_diff(f3, bypassed)[0]), rel=1e-5)
    assert modes[(1, 2, "linear")] != pytest.approx(modes[(1, 2, "none")], rel=1e-3)
    steps = {r["step"]: r for r in sink.rows["steps"]}
    assert steps[0]["residual_change"] is None
    assert steps[1]["residual_change"] == pytest.approx(float(rms_diff(r1[0].float(), r0[0].float())[0]), rel=1e-5)


def test_taylor_reuse_error_equals_the_runtimes_taylor_skip():
    # The runtime's taylor mode (step units, order 1) computing steps 0..2 and skipping step 3
    # forecasts every forecast module from steps 2 and 1; the recorder's (step 2, lag 1, taylor)
    # row must be that output's distance from full compute at step 3. Lag 3 (r = 0, the first
    # computed step) forecasts F(0) as it is.
    from calibration.models import load_model
    from sencache.taylor import install_forecast, remove_forecast

    loaded = load_model("tiny-wan")
    _, sink = _record(loaded, k_max=3)
    modes = {(r["step"], r["lag"], r["mode"]): r["error"] for r in sink.rows["reuse_errors"]}
    assert {(s, k) for s, k, m in modes if m == "taylor"} == {(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (2, 1)}
    full, hooks = _capture_cond_forwards(loaded)
    remove_stack(loaded.pipe.transformer, hooks.adapter)
    f3 = full.calls[3][1]

    transformer = loaded.pipe.transformer
    adapter = adapter_for(transformer)
    capture = _Capture()
    hooks = install_stack(transformer, adapter, capture)
    capture.module_forecast = install_forecast(transformer, adapter, order=1, units="step")
    capture.compute_mask = lambda context, batch: torch.full(
        (batch,), context != "cond" or len(capture.calls) != 3, dtype=torch.bool)
    capture.row_steps = lambda context, batch: torch.full((batch,), float(len(capture.calls)), dtype=torch.float64)
    original = transformer.forward

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        context = hooks.head.state._context
        if context is not None and context.name == "cond":
            capture.calls.append(out[0].clone())
        return out

    transformer.forward = spy
    try:
        generate(loaded, PROMPT, num_inference_steps=STEPS)
    finally:
        transformer.forward = original
        remove_forecast(transformer, adapter)
        remove_stack(transformer, adapter)
    skipped = capture.calls[3]
    assert not torch.equal(skipped, f3)
    assert modes[(2, 1, "taylor")] == pytest.approx(float(rms_diff(f3, skipped)[0]), rel=1e-4)
    assert modes[(2, 1, "taylor")] != pytest.approx(modes[(2, 1, "none")], rel=1e-3)
