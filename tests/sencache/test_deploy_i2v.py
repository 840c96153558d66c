"""Per-token timesteps (image-to-video): the first frame's t = 0 must not place every step last."""

import numpy as np
import pytest
import torch

import sencache
from tests.sencache.fixtures import image, policy_for, run, tiny_ltx_i2v, tiny_wan_ti2v


@pytest.mark.parametrize("make", [tiny_ltx_i2v, tiny_wan_ti2v], ids=["ltx_i2v", "wan22_ti2v"])
def test_image_to_video_skips_as_the_policy_says(make):
    pipe = make()
    seen = []
    probe = pipe.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["timestep"].clone()), with_kwargs=True)
    handle = sencache.apply(pipe, policy_for(pipe.transformer, 1e9, K=1))
    run(pipe, image=image())
    probe.remove()
    # the pipeline really passes one timestep per token, the first frame's at 0
    assert seen[0].ndim == 2 and float(seen[0].min()) == 0.0 and float(seen[0].max()) > 0.0
    report = handle.report()
    # K = 1, no zones, ε above every score: compute, skip, compute, skip, ... over 8 steps
    assert report.computed[0].tolist() == [True, False] * 4
    assert report.reasons[0][1] == "skipped"
    # each reported timestep is the step's own, not the conditioning frame's 0
    np.testing.assert_allclose(report.timesteps, pipe.scheduler.timesteps.numpy(), rtol=1e-6)
    # the blocks ran on 4 of 8 steps only (Wan: cond and uncond separately; LTX: one batched call)
    assert sum(report.block_rows.values()) == 4 * 2


def test_step_is_placed_from_the_context_then_the_scheduler_then_the_largest_timestep():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.hooks.hooks import CacheContext

    from sencache.locate import locate_step, row_timesteps

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(6)
    schedule = scheduler.timesteps.numpy().astype(np.float64)
    t = torch.zeros(2, 10)
    t[:, 3:] = float(schedule[2])  # tokens 0..2 conditioned (t = 0), the others at step 2
    rows = row_timesteps(t, 2)
    assert rows.tolist() == [float(schedule[2])] * 2
    assert locate_step(rows, CacheContext("cond", step_index=4, num_inference_steps=6), None, schedule)[:2] == (4, 6)
    assert locate_step(rows, None, None, schedule)[:3] == (2, 6, "timestep")
    scheduler._step_index = 2
    assert locate_step(rows, None, scheduler, schedule)[:3] == (2, 6, "scheduler")
    scheduler._step_index = 5  # a counter that does not point at this timestep is not believed
    assert locate_step(rows, None, scheduler, schedule)[:3] == (2, 6, "timestep")
