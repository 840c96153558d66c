"""Offloading re-wraps `forward`: SenCache must place every step of every call all the same."""

import pytest
import torch

import sencache
from tests.sencache.fixtures import policy_for, run


def two_calls(offload):
    """Seeds 0 then 1 on tiny Wan under SenCache (K = 1: compute, skip, ...), with `offload` applied first."""
    from calibration.zoo.architectures import build_pipeline

    pipe = build_pipeline("wan")
    offload(pipe)
    handle = sencache.apply(pipe, policy_for(pipe.transformer, 1e9, K=1))
    outs, masks = [], []
    for seed in (0, 1):
        outs.append(run(pipe, seed=seed).cpu())
        masks.append(handle.report().computed.copy())
    return outs, masks


def model_cpu_offload(pipe):
    # accelerate's hook replaces `transformer.forward`, and at the end of every call
    # (`maybe_free_model_hooks`) puts back the `forward` it saw: any hook inside `forward` is lost
    pipe.enable_model_cpu_offload(device="cpu")


def group_offload(pipe):
    pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                                          offload_type="block_level", num_blocks_per_group=1)


def accelerate_cpu_offload(pipe):
    """The hook `enable_model_cpu_offload` installs, by hand, removed and re-added as the pipeline does."""
    from accelerate.hooks import CpuOffload, add_hook_to_module

    add_hook_to_module(pipe.transformer, CpuOffload(execution_device="cpu"))


@pytest.fixture(scope="module")
def reference():
    return two_calls(lambda pipe: None)


@pytest.mark.parametrize("offload", [model_cpu_offload, group_offload], ids=["model_cpu_offload", "group_offload"])
def test_offloaded_calls_match_the_same_calls_without_offload(offload, reference):
    ref_outs, ref_masks = reference
    outs, masks = two_calls(offload)
    # K = 1, no zones, ε above every score: both calls compute steps 0, 2, 4, 6 of 8
    assert ref_masks[1][0].tolist() == [True, False] * 4
    for out, ref, mask, ref_mask in zip(outs, ref_outs, masks, ref_masks):
        assert mask.tolist() == ref_mask.tolist()
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def test_forward_replaced_after_apply_still_places_each_step(reference):
    """What `maybe_free_model_hooks` does to a hook inside `forward`: restore the pre-apply forward."""
    from accelerate.hooks import remove_hook_from_module

    from calibration.zoo.architectures import build_pipeline

    pipe = build_pipeline("wan")
    accelerate_cpu_offload(pipe)
    handle = sencache.apply(pipe, policy_for(pipe.transformer, 1e9, K=1))
    outs = []
    for seed in (0, 1):
        outs.append(run(pipe, seed=seed))
        remove_hook_from_module(pipe.transformer)  # forward = the forward accelerate wrapped
        accelerate_cpu_offload(pipe)
    assert handle.report().computed[0].tolist() == [True, False] * 4
    torch.testing.assert_close(outs[1], reference[0][1], atol=1e-6, rtol=1e-6)
