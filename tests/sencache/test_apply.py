"""`sencache.apply` / `remove` on tiny pipelines of the three real architectures."""

import warnings

import numpy as np
import pytest
import torch

import sencache
from policies import PolicyError, config_fingerprint, constant_policy
from tests.conftest import generate


def policy_for(loaded, eps, K=2, warmup=0, final=0):
    """A flat-ε policy bound to this model's fingerprint (J_x = J_t = 1, a = b = 1, c = 0)."""
    fp = config_fingerprint(dict(loaded.pipe.transformer.config))
    return constant_policy(eps, fingerprint=fp, max_skips=K, warmup_steps=warmup, final_steps=final)


class BlockCounter:
    """Counts rows that really went through a block (its attention ran), per block."""

    def __init__(self, transformer):
        blocks = getattr(transformer, "blocks", None) or transformer.transformer_blocks
        self.rows = [0] * len(blocks)
        self.handles = [
            b.attn1.register_forward_pre_hook(self._hook(i), with_kwargs=True) for i, b in enumerate(blocks)
        ]

    def _hook(self, i):
        def count(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.rows[i] += hidden.shape[0]
        return count

    def close(self):
        for h in self.handles:
            h.remove()


def test_eps_zero_is_bit_identical_and_remove_restores(tiny):
    base = generate(tiny, "a red circle moving left")
    sencache.apply(tiny.pipe, policy_for(tiny, 0.0))
    assert torch.equal(generate(tiny, "a red circle moving left"), base)
    sencache.apply(tiny.pipe, policy_for(tiny, 1e9))
    assert not torch.equal(generate(tiny, "a red circle moving left"), base)
    sencache.remove(tiny.pipe)
    assert torch.equal(generate(tiny, "a red circle moving left"), base)


def test_applying_twice_replaces_never_stacks(tiny):
    sencache.apply(tiny.pipe, policy_for(tiny, 1e9, K=1))
    handle = sencache.apply(tiny.pipe, policy_for(tiny, 1e9, K=1))
    transformer = tiny.pipe.transformer
    blocks = getattr(transformer, "blocks", None) or transformer.transformer_blocks
    registry = blocks[0]._diffusers_hook
    assert list(registry.hooks).count("sencache_stack_head") == 1
    assert len(transformer._forward_pre_hooks) == 1  # one capture hook, not two
    generate(tiny, "a blue square", num_inference_steps=6)
    # K = 1, no zones: compute, skip, compute, skip, ...
    assert handle.report().computed[0].tolist() == [True, False, True, False, True, False]
    sencache.remove(tiny.pipe)
    assert "sencache_stack_head" not in registry.hooks
    assert len(transformer._forward_pre_hooks) == 0 and len(transformer._forward_hooks) == 0


def test_report_counts_match_real_block_executions(tiny):
    handle = sencache.apply(tiny.pipe, policy_for(tiny, 1e9, K=2))
    counter = BlockCounter(tiny.pipe.transformer)
    generate(tiny, ["a red circle", "a green square"], num_inference_steps=8)
    counter.close()
    report = handle.report()
    # K = 2 → compute 1 step in 3: steps 0, 3, 6 of 8 for both samples
    assert report.computed.shape == (2, 8)
    assert report.nfe_per_sample.tolist() == [3, 3]
    # every CFG branch of a computed step ran: 2 samples x 2 branches x 3 steps = 12 rows per block
    assert counter.rows == [12] * len(counter.rows)
    assert sum(report.block_rows.values()) == 12
    assert "computed 3/8 steps" in report.summary()


def test_cfg_branches_share_each_decision(tiny, caplog):
    handle = sencache.apply(tiny.pipe, policy_for(tiny, 0.3, K=3))
    with caplog.at_level("INFO", logger="sencache"):
        generate(tiny, "a red circle moving up", num_inference_steps=10)
    report = handle.report()
    contexts = report.block_rows
    # Wan: "cond" and "uncond" ran the stack on exactly the same steps; batched CFG: one context
    assert len(set(contexts.values())) == 1
    assert sum(contexts.values()) == report.nfe_per_sample.sum() * 2
    assert any(r.message.startswith("SenCache: computed") for r in caplog.records)


def test_samples_in_a_batch_decide_independently(tiny):
    prompts = ["a red circle moving left on a blue background", "a yellow triangle moving up on a black background"]
    handle = sencache.apply(tiny.pipe, policy_for(tiny, 0.0, K=3))
    generate(tiny, prompts, seed=1)
    scores = handle.report().scores[:, 1:-1]
    # try thresholds between the two samples' scores until their masks differ
    candidates = np.unique(np.round((scores[0] + scores[1]) / 2, 6))
    for eps in candidates:
        handle = sencache.apply(tiny.pipe, policy_for(tiny, float(eps), K=3))
        batch = generate(tiny, prompts, seed=1)
        masks = handle.report().computed
        if not (masks[0] == masks[1]).all():
            break
    else:
        pytest.fail("no threshold separated the two samples' masks")
    # each sample alone (same initial noise) takes the same decisions and gives the same output;
    # tolerance 1e-4: a batch of 2 and a batch of 1 sum matrix products in a different order
    noise = initial_latents(tiny, prompts, seed=1)
    for i, prompt in enumerate(prompts):
        alone = generate(tiny, prompt, seed=1, latents=noise[i : i + 1])
        assert (handle.report().computed[0] == masks[i]).all()
        torch.testing.assert_close(alone[0], batch[i], atol=1e-4, rtol=1e-4)
    sencache.remove(tiny.pipe)


def initial_latents(loaded, prompts, seed):
    """The pipeline's own initial noise, in the layout its `latents=` argument takes.

    Read from the transformer's first input (CFG-batched pipelines stack the batch twice).
    """
    seen = []
    hook = loaded.pipe.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).clone()),
        with_kwargs=True,
    )
    generate(loaded, prompts, seed=seed, num_inference_steps=1)
    hook.remove()
    return seen[0][: len(prompts)]


@pytest.mark.parametrize("steps", [10, 20, 50])
def test_one_policy_serves_any_step_count(steps):
    from calibration.models import load_model

    loaded = load_model("tiny-wan")
    handle = sencache.apply(loaded.pipe, policy_for(loaded, 1e9, K=1, warmup=0.2, final=0.1))
    generate(loaded, "a red circle", num_inference_steps=steps)
    computed = handle.report().computed[0]
    assert computed.shape == (steps,)
    warm, final = round(0.2 * steps), round(0.1 * steps)
    assert computed[:warm].all() and computed[steps - final:].all()
    assert not computed[warm:steps - final].all()


def test_policy_of_another_model_is_refused_or_warned():
    from calibration.models import load_model

    loaded = load_model("tiny-ltx")
    other = constant_policy(0.1, fingerprint="f" * 16)
    with pytest.raises(PolicyError, match="fingerprint"):
        sencache.apply(loaded.pipe, other)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sencache.apply(loaded.pipe, other, strict=False)
    assert any("fingerprint" in str(w.message) for w in caught)
    sencache.remove(loaded.pipe)


def test_linear_forecast_skips_the_same_steps_and_moves_the_output(tiny):
    from dataclasses import replace

    from policies import Policy

    plain = policy_for(tiny, 1e9, K=2)
    data = plain.to_dict()
    data["operating_points"][0]["forecast"] = "linear"
    linear = Policy.from_dict(data)
    assert replace(linear.operating_point(), forecast="none") == plain.operating_point()
    handle = sencache.apply(tiny.pipe, plain)
    out_plain = generate(tiny, "a blue square", num_inference_steps=8)
    mask_plain = handle.report().computed.copy()
    handle = sencache.apply(tiny.pipe, linear)
    out_linear = generate(tiny, "a blue square", num_inference_steps=8)
    # K = 2, ε above every score: compute, skip, skip, compute, ... in both runs
    assert handle.report().computed.tolist() == mask_plain.tolist()
    assert mask_plain[0].tolist() == [True, False, False, True, False, False, True, False]
    assert not torch.equal(out_linear, out_plain)
    sencache.remove(tiny.pipe)
