"""The memory forecast "taylor" keeps: the config-based estimate against what a run really kept."""

import inspect

import pytest
import torch

import sencache
from sencache.adapters import architecture_for, architecture_named
from sencache.taylor_memory import factor_bytes, kept_bytes
from tests.conftest import generate
from tests.sencache.test_taylor_apply import blocks_of, policy_for


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_estimate_equals_what_a_run_kept(tiny, dtype):
    transformer = tiny.pipe.transformer
    seen = {}

    def shapes(module, args, kwargs):
        named = inspect.signature(type(module).forward).bind(module, *args, **kwargs).arguments
        seen["video"] = named["hidden_states"].shape[1]
        seen["text"] = named["encoder_hidden_states"].shape[1]

    handle = sencache.apply(tiny.pipe, policy_for(tiny, 1e9), factors_dtype=dtype)
    forecast = handle._runtime.module_forecast
    kept, dtypes = {}, set()

    def measure(module, args, output):  # during the call: the pipeline frees the state at its end
        for context in ("cond", "uncond", "cond_uncond"):
            kept[context] = max(kept.get(context, 0), kept_bytes(forecast, context))
            state = forecast.hooks[0].state._state_cache.get(context)
            dtypes.update([] if state is None or state.values is None else [state.values[0][0].dtype])

    hooks = [blocks_of(transformer)[0].register_forward_pre_hook(shapes, with_kwargs=True),
             transformer.register_forward_hook(measure)]
    generate(tiny, ["a red circle", "a blue square"], num_inference_steps=4)
    for hook in hooks:
        hook.remove()
    contexts = list(handle.report().block_rows)
    estimate = factor_bytes(architecture_for(transformer), dict(transformer.config), seen["video"], seen["text"],
                            dtype=dtype)
    assert [kept[c] for c in contexts] == [estimate.total] * len(contexts)
    assert dtypes == {dtype}
    sencache.remove(tiny.pipe)


def test_wan_14b_at_720p():
    # 40 blocks x 3 modules x 2 factors (order 1) x 75600 tokens x 5120 x 4 bytes, + 24 B per row (on the CPU)
    config = {"num_layers": 40, "num_attention_heads": 40, "attention_head_dim": 128}
    memory = factor_bytes(architecture_named("wan"), config, 21 * 45 * 80)
    assert memory.total == 40 * 3 * 2 * 75600 * 5120 * 4 + 24
    assert factor_bytes(architecture_named("wan"), config, 75600, dtype=torch.bfloat16).total == 40 * 3 * 2 * 75600 * 5120 * 2 + 24
    assert factor_bytes(architecture_named("wan"), config, 75600, order=2).total == 40 * 3 * 3 * 75600 * 5120 * 4 + 24


def test_default_factors_are_float32_under_a_half_precision_model():
    from sencache.taylor import _Factors, _Pass

    state, rows = _Factors(), torch.tensor([0])
    state.update((torch.ones(1, 3, dtype=torch.bfloat16),), _Pass("c", True, rows, 1, [torch.zeros(1)], [False], False), 1, None)
    assert state.values[0][0].dtype == torch.float32
    assert state.forecast(_Pass("c", False, rows, 1, [torch.zeros(1)], [False], True))[0].dtype == torch.bfloat16
