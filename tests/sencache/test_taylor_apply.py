"""Forecast "taylor" through `sencache.apply` on tiny pipelines of the three real architectures."""

import numpy as np
import pytest
import torch

import sencache
from calibration.baselines._counter import BlockCounter
from policies import Policy, config_fingerprint, constant_policy
from sencache.stack import HEAD_HOOK
from sencache.taylor import FORECAST_HOOK
from tests.conftest import generate
from tests.sencache.test_apply import initial_latents

STEPS = 6


def policy_for(loaded, eps, K=2, forecast="taylor"):
    """A flat-ε policy for this model (score ‖x − x_r‖ + |t − t_r|) whose point forecasts `forecast`."""
    fp = config_fingerprint(dict(loaded.pipe.transformer.config))
    data = constant_policy(eps, fingerprint=fp, max_skips=K).to_dict()
    data["operating_points"][0]["forecast"] = forecast
    return Policy.from_dict(data)


def blocks_of(transformer):
    return getattr(transformer, "blocks", None) or transformer.transformer_blocks


class ContextRows:
    """Rows that really ran each block's self-attention query projection, per cache context.

    A Linear inside attn1, not attn1 itself: a forward hook on attn1 fires even when its output is
    forecast (the diffusers hook replaces `forward`, not `__call__`).
    """

    def __init__(self, transformer):
        blocks = blocks_of(transformer)
        self.head = blocks[0]._diffusers_hook.hooks[HEAD_HOOK]
        self.rows = [dict() for _ in blocks]
        self.handles = [b.attn1.to_q.register_forward_hook(self._hook(i)) for i, b in enumerate(blocks)]

    def _hook(self, i):
        def count(module, args, output):
            context = self.head.context_name()
            self.rows[i][context] = self.rows[i].get(context, 0) + args[0].shape[0]
        return count

    def close(self):
        for h in self.handles:
            h.remove()


def test_eps_zero_is_bit_identical_and_remove_restores(tiny):
    prompt = "a red circle moving left"
    base = generate(tiny, prompt, num_inference_steps=STEPS)
    sencache.apply(tiny.pipe, policy_for(tiny, 0.0))
    assert torch.equal(generate(tiny, prompt, num_inference_steps=STEPS), base)
    handle = sencache.apply(tiny.pipe, policy_for(tiny, 1e9))
    taylor = generate(tiny, prompt, num_inference_steps=STEPS)
    assert handle.report().computed[0].tolist() == [True, False, False, True, False, False]
    sencache.apply(tiny.pipe, policy_for(tiny, 1e9, forecast="none"))
    plain = generate(tiny, prompt, num_inference_steps=STEPS)
    # the same steps skipped, another reuse: the output moves away from both
    assert not torch.equal(taylor, base) and not torch.equal(taylor, plain)
    sencache.remove(tiny.pipe)
    assert torch.equal(generate(tiny, prompt, num_inference_steps=STEPS), base)
    for module in tiny.pipe.transformer.modules():
        assert FORECAST_HOOK not in getattr(getattr(module, "_diffusers_hook", None), "hooks", {})


def test_mixed_masks_each_sample_equals_it_alone_and_rows_are_counted(tiny):
    prompts = ["a red circle moving left on a blue background", "a yellow triangle moving up on a black background"]
    handle = sencache.apply(tiny.pipe, policy_for(tiny, 0.0, K=3))
    generate(tiny, prompts, seed=1, num_inference_steps=STEPS)
    scores = handle.report().scores[:, 1:]
    # thresholds between the two samples' scores, until their masks differ
    for eps in np.unique(np.round((scores[0] + scores[1]) / 2, 6)):
        handle = sencache.apply(tiny.pipe, policy_for(tiny, float(eps), K=3))
        counter = ContextRows(tiny.pipe.transformer)
        batch = generate(tiny, prompts, seed=1, num_inference_steps=STEPS)
        counter.close()
        masks = handle.report().computed.copy()
        if not (masks[0] == masks[1]).all():
            break
    else:
        pytest.fail("no threshold separated the two samples' masks")
    report = handle.report()
    # the report's per-context rows are the rows that really ran every block
    assert all(rows == report.block_rows for rows in counter.rows), (counter.rows, report.block_rows)
    # each sample alone (same initial noise) takes the same decisions and gives the same output;
    # tolerance 1e-4: a sub-batch of 1 or 2 rows sums its matrix products in another order than a
    # batch of 1 (last-bit differences, then carried through the steps), as in test_apply
    noise = initial_latents(tiny, prompts, seed=1)
    for i, prompt in enumerate(prompts):
        alone = generate(tiny, prompt, seed=1, latents=noise[i : i + 1], num_inference_steps=STEPS)
        assert (handle.report().computed[0] == masks[i]).all()
        torch.testing.assert_close(alone[0], batch[i], atol=1e-4, rtol=1e-4)
    sencache.remove(tiny.pipe)


def _cheap_weights(block, forecast_modules):
    """Weight elements of the Linears a skipped step still runs: those outside the forecast modules."""
    inside = {id(m) for name in forecast_modules for m in getattr(block, name).modules()}
    return sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear) and id(m) not in inside)


def test_bench_counter_charges_what_a_skipped_step_still_runs(tiny):
    """The bench's MACs under "taylor": computing rows cost a full block, skipping rows only the
    Linears outside the forecast modules (CogVideoX's modulation in norm1/norm2, one token per row)."""
    transformer = tiny.pipe.transformer
    blocks = blocks_of(transformer)
    adapter = sencache.adapter_for(transformer)
    with BlockCounter(transformer, blocks) as counter:
        handle = sencache.apply(tiny.pipe, policy_for(tiny, 0.0))
        generate(tiny, "a blue square", num_inference_steps=STEPS)
        full = counter.snapshot()
        rows_full = sum(handle.report().block_rows.values())  # every step, every CFG row
        counter.reset()
        handle = sencache.apply(tiny.pipe, policy_for(tiny, 1e9))  # compute 2 of 6 steps
        generate(tiny, "a blue square", num_inference_steps=STEPS)
        taylor = counter.snapshot()
    sencache.remove(tiny.pipe)
    computed = sum(handle.report().block_rows.values())
    # `calls` counts the query projection's forwards (one per CFG call, whatever its batch)
    assert computed == rows_full * 2 // STEPS and (taylor.calls == full.calls * 2 // STEPS).all()
    cheap = np.array([_cheap_weights(b, adapter.forecast_modules) for b in blocks], dtype=float)
    skipped = rows_full - computed
    np.testing.assert_allclose(taylor.macs, full.macs * computed / rows_full + skipped * cheap, rtol=1e-9)
    if type(transformer).__name__ == "CogVideoXTransformer3DModel":
        assert cheap.min() > 0  # the count is partial, not zero: the modulation Linears ran
