"""HunyuanVideo through every stage, from its description file alone: apply/remove, collect, fit, export, bench.

The transformer runs 2 dual-stream blocks then 2 single-stream blocks (the text stream joins the
video stream in the second list), so the cached stack is the two lists one after the other.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

import cli
import sencache
from calibration.baselines import METHODS
from calibration.baselines.taylorseer import cache_identifiers
from calibration.bench import run_bench
from calibration.collect import collect
from calibration.models import load_model
from policies import Policy, config_fingerprint, constant_policy
from sencache.adapters import architecture_for
from store import CalibrationStore

PROMPTS = ["a red circle moving left on a blue background", "a green square moving up on a red background",
           "a yellow triangle moving right on a black background"]  # the third is a holdout prompt


@pytest.fixture(autouse=True)
def _fresh_logging():
    yield  # cli.main points the root logger at this test's captured stderr: don't leak it
    for handler in list(logging.root.handlers):
        logging.root.removeHandler(handler)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-hunyuanvideo")


def _run(loaded, prompts, steps, seed=0, **extra):
    prompts = [prompts] if isinstance(prompts, str) else prompts
    return loaded.pipe(prompt=prompts, generator=torch.Generator().manual_seed(seed), output_type="latent",
                       **loaded.call_kwargs(num_inference_steps=steps), **extra).frames


def _policy(loaded, eps, K=2):
    fp = config_fingerprint(dict(loaded.pipe.transformer.config))
    return constant_policy(eps, fingerprint=fp, max_skips=K, warmup_steps=0, final_steps=0)


class AttentionCalls:
    """Rows that really went through each block of the stack (its attention ran)."""

    def __init__(self, blocks):
        self.rows = [0] * len(blocks)
        self.handles = [b.attn.register_forward_pre_hook(self._hook(i), with_kwargs=True) for i, b in enumerate(blocks)]

    def _hook(self, i):
        def count(module, args, kwargs):
            self.rows[i] += kwargs["hidden_states"].shape[0]
        return count

    def close(self):
        for h in self.handles:
            h.remove()


def test_the_stack_is_the_dual_then_the_single_stream_blocks(tiny):
    transformer = tiny.pipe.transformer
    arch = architecture_for(tiny.pipe)
    blocks = arch.blocks(transformer)
    assert [id(b) for b in blocks] == [id(b) for b in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]]
    assert arch.text_stream and len(blocks) == 4
    # the single-stream blocks take the rotary table as `image_rotary_emb`, the dual-stream ones as `freqs_cis`
    named = {"hidden_states": 0, "encoder_hidden_states": 1, "temb": 2, "freqs_cis": "rope"}
    streams = (torch.zeros(1), torch.ones(1))
    assert arch.block_kwargs(blocks[1], named, streams)["freqs_cis"] == "rope"
    single = arch.block_kwargs(blocks[2], named, streams)
    assert single["image_rotary_emb"] == "rope" and "freqs_cis" not in single
    assert cache_identifiers(tiny.pipe) == [r"transformer_blocks\.\d+\.(attn|ff|ff_context)",
                                            r"single_transformer_blocks\.\d+\.(attn|proj_mlp|proj_out)"]


def test_eps_zero_is_bit_identical_and_remove_restores(tiny):
    base = _run(tiny, PROMPTS[0], steps=5)
    sencache.apply(tiny.pipe, _policy(tiny, 0.0))
    assert torch.equal(_run(tiny, PROMPTS[0], steps=5), base)
    sencache.apply(tiny.pipe, _policy(tiny, 1e9))
    assert not torch.equal(_run(tiny, PROMPTS[0], steps=5), base)
    sencache.remove(tiny.pipe)
    assert torch.equal(_run(tiny, PROMPTS[0], steps=5), base)


def test_every_block_of_both_lists_runs_exactly_on_computed_steps(tiny):
    handle = sencache.apply(tiny.pipe, _policy(tiny, 1e9, K=1))
    counter = AttentionCalls(architecture_for(tiny.pipe).blocks(tiny.pipe.transformer))
    try:
        # true CFG: cond and uncond are separate calls that share each step's decision
        _run(tiny, PROMPTS[:2], steps=6, negative_prompt=["", ""], true_cfg_scale=3.0)
    finally:
        counter.close()
        sencache.remove(tiny.pipe)
    report = handle.report()
    assert report.computed.tolist() == [[True, False] * 3] * 2
    assert report.block_rows == {"cond": 6, "uncond": 6}  # 2 samples x 3 computed steps per branch
    assert counter.rows == [12] * 4


def test_collect_writes_a_store_with_every_signal(tmp_path):
    db = tmp_path / "calib.duckdb"
    summary = collect("tiny-hunyuanvideo", PROMPTS[:1], seeds=1, steps=3, db=db, k_max=2, progress=False)
    assert summary.runs_written == 1
    with CalibrationStore(db, read_only=True) as store:
        counts = store.table_counts()
        steps = store.steps().sort_values("step")
        run = store.runs().iloc[0]
    assert counts["steps"] == 3 and counts["sensitivities"] == 2 and counts["cache_errors"] == 3
    assert run["pipeline_class"] == "HunyuanVideoPipeline"
    # TeaCache's modulated input, the first block's change and the magnitude ratio all come from the description
    assert steps[["teacache_signal", "first_block_change", "mag_ratio"]].iloc[1:].notna().all().all()


def test_collect_with_the_reference_estimator_encodes_clips_in_the_loop_layout(tmp_path):
    db = tmp_path / "ref.duckdb"
    collect("tiny-hunyuanvideo", PROMPTS[:1], seeds=1, steps=3, db=db, estimator="reference", progress=False)
    with CalibrationStore(db, read_only=True) as store:
        sens = store.sensitivities()
    assert set(sens["estimator"]) == {"reference"} and np.isfinite(sens["J_x"].astype(float)).all()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """`--model tiny-hunyuanvideo` through collect, `fit --objective replay` and export, by the CLI."""
    folder = tmp_path_factory.mktemp("hunyuan")
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    db, policy = folder / "calib.duckdb", folder / "policy.json"
    assert cli.main(["--quiet", "collect", "--model", "tiny-hunyuanvideo", "--prompts", str(prompts), "--seeds", "1",
                     "--steps", "4", "--k-max", "2", "--db", str(db)]) == 0
    assert cli.main(["--quiet", "fit", "--db", str(db), "--trials", "3", "--objective", "replay", "--seed", "0"]) == 0
    assert cli.main(["--quiet", "export", "--db", str(db), "--out", str(policy)]) == 0
    for handler in list(logging.root.handlers):
        logging.root.removeHandler(handler)
    return db, policy


@pytest.mark.slow
def test_a_replay_fit_exports_a_policy_that_applies(fitted, tiny):
    _, path = fitted
    policy = Policy.load(path, model_fingerprint=config_fingerprint(dict(tiny.pipe.transformer.config)))
    assert policy.model.class_name == "HunyuanVideoTransformer3DModel"
    handle = sencache.apply(tiny.pipe, policy, operating_point="balanced")
    try:
        out = _run(tiny, PROMPTS[0], steps=4)
    finally:
        sencache.remove(tiny.pipe)
    assert torch.isfinite(out).all()
    assert handle.report().computed.shape == (1, 4)


@pytest.mark.slow
def test_bench_runs_every_method_or_says_why_not(fitted, tmp_path):
    db, policy = fitted
    # a score-driven point with its ε scaled up skips; a static point (the fit may ship one) skips by its schedule
    balanced = Policy.load(policy).operating_point("balanced")
    ours = "balanced" if balanced.static else "balanced*100"
    knobs = {"uniform": [0.5], "sencache-paper": [0.4], "sencache": [ours], "teacache": [0.8],
             "magcache": [1.0], "fbcache": [0.8], "taylorseer": [2], "easycache": [0.8], "dbcache": [0.8]}
    result = run_bench("tiny-hunyuanvideo", policy, tmp_path / "bench", methods=None, prompts=PROMPTS[:1], seeds=1,
                       steps=5, progress=False, knobs=knobs, store=db)
    ran = {r["method"] for r in result["results"]}
    assert ran | set(result["unsupported"]) == set(METHODS)
    assert all(reason.strip() for reason in result["unsupported"].values())
    for row in result["results"]:
        if row["method"] != "none":  # each knob above skips on this fixture: the work really went down
            assert row["nfe_fraction"] < 1.0, row["method"]
    assert result["model"]["blocks"] == 4
    on_disk = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert on_disk["unsupported"] == result["unsupported"]
