"""`collect`: runs over prompts × seeds into the store, whole, resumable, shardable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calibration.collect import collect, default_prompts, plan_runs, split_of
from store import CalibrationStore, shard_path

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red circle moving left on a blue background", "a green square moving up on a red background"]


def _env() -> dict[str, str]:
    # One thread per process: float reductions then agree bit for bit across processes.
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=kwargs.pop("cwd"), env=_env(),
                          capture_output=True, text=True, timeout=600, **kwargs)


def test_plan_runs_shards_cover_every_pair_once():
    seeds = [0, 1, 2]
    whole = plan_runs(PROMPTS, seeds)
    shards = [plan_runs(PROMPTS, seeds, rank, 4) for rank in range(4)]
    assert sorted(p for s in shards for p in s) == sorted(whole)
    assert len(whole) == 6


def test_default_prompts_leave_the_bench_prompts_unseen():
    # bench measures on the zoo's held-out prompts by default; the fit must never see them
    from calibration.bench import _prompts
    from calibration.zoo.data import heldout_prompts

    prompts = default_prompts("toy-wan", count=40)
    assert len(prompts) == len(set(prompts)) == 40
    assert not set(prompts) & set(heldout_prompts())
    assert not set(prompts) & set(_prompts(None))


def test_split_is_fixed_by_the_prompt():
    prompts = default_prompts("toy-wan", count=40)
    splits = [split_of(p, 0.25) for p in prompts]
    assert splits == [split_of(p, 0.25) for p in prompts]
    assert 0 < splits.count("holdout") < len(prompts)
    assert all(split_of(p, 0.0) == "calib" for p in prompts)


def test_collect_writes_whole_runs_and_resumes(tmp_path):
    db = tmp_path / "calib.duckdb"
    first = collect("tiny-wan", PROMPTS[:1], seeds=2, steps=3, db=db, k_max=2, progress=False)
    assert (first.runs_written, first.runs_skipped) == (2, 0)
    again = collect("tiny-wan", PROMPTS[:1], seeds=2, steps=3, db=db, k_max=2, progress=False)
    assert (again.runs_written, again.runs_skipped) == (0, 2)
    with CalibrationStore(db, read_only=True) as store:
        counts = store.table_counts()
        runs = store.runs()
    assert counts["runs"] == 2 and counts["steps"] == 2 * 3
    assert counts["sensitivities"] == 2 * 2  # steps 0, 1 (no t_3)
    assert counts["cache_errors"] == 2 * 3  # (0,1) (0,2) (1,1)
    assert counts["latents"] == 2 * 4  # x_0..x_2 and the final x_3
    assert set(runs["estimator"]) == {"trajectory"} and set(runs["status"]) == {"complete"}


def test_no_latents_and_propagation(tmp_path):
    db = tmp_path / "calib.duckdb"
    # a δ-based gain (the cache gain's own test is in test_propagation_direction.py)
    collect("tiny-wan", PROMPTS[:1], seeds=1, steps=3, db=db, no_latents=True, propagation=3, progress=False,
            propagation_direction="trajectory")
    with CalibrationStore(db, read_only=True) as store:
        assert store.table_counts()["latents"] == 0
        prop = store.propagation().sort_values("step")
        run = store.runs().iloc[0]
    # step 0 always computes (its gain is never used); the last step is always measured
    assert prop["step"].tolist() == [1, 2]
    # The last Euler step is x_N = x_{N-1} + (0 − σ_{N-1})·f, so an output error δ moves x_N by
    # σ_{N-1}·δ: the gain at the last step is σ_{N-1} (the scheduler's last non-zero sigma).
    from diffusers import FlowMatchEulerDiscreteScheduler
    import json

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(json.loads(run["scheduler_config"]))
    scheduler.set_timesteps(3)
    assert prop["gain"].iloc[-1] == pytest.approx(float(scheduler.sigmas[-2]), rel=1e-3)


def test_reference_estimator_is_recorded(tmp_path):
    db = tmp_path / "calib.duckdb"
    collect("tiny-cogvideox", PROMPTS[:1], seeds=1, steps=3, db=db, estimator="reference", progress=False)
    with CalibrationStore(db, read_only=True) as store:
        assert set(store.sensitivities()["estimator"]) == {"reference"}
        assert set(store.runs()["estimator"]) == {"reference"}


@pytest.mark.slow
def test_sigkill_mid_collect_then_rerun_equals_an_uninterrupted_collect(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    args = ["collect", "--model", "tiny-wan", "--prompts", str(prompts), "--seeds", "2", "--steps", "3", "--k-max", "2"]
    killed = tmp_path / "killed.duckdb"
    proc = subprocess.Popen([sys.executable, "-m", "cli", *args, "--db", str(killed)], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        for line in proc.stderr:  # the CLI logs one line per committed run
            if "written (" in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with CalibrationStore(killed, read_only=True) as store:
        partial = store.table_counts()
    assert 1 <= partial["runs"] < 4 and partial["steps"] == 3 * partial["runs"]  # whole runs only

    assert _cli(*args, "--db", str(killed), cwd=ROOT).returncode == 0
    whole = tmp_path / "whole.duckdb"
    assert _cli(*args, "--db", str(whole), cwd=ROOT).returncode == 0
    with CalibrationStore(killed, read_only=True) as a, CalibrationStore(whole, read_only=True) as b:
        assert a.table_counts() == b.table_counts()
        assert a.runs()["run_id"].is_unique
        assert a.content_digest() == b.content_digest()


@pytest.mark.slow
def test_torchrun_shards_merge_to_the_single_process_store(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    args = ["collect", "--model", "tiny-wan", "--prompts", str(prompts), "--seeds", "2", "--steps", "3", "--k-max", "2"]
    sharded = tmp_path / "sharded.duckdb"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "cli", "--quiet", *args,
         "--db", str(sharded)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    shards = [shard_path(sharded, r) for r in (0, 1)]
    assert all(p.exists() for p in shards) and not sharded.exists()
    assert _cli("store", "merge", *map(str, shards), "--out", str(sharded), cwd=ROOT).returncode == 0
    single = tmp_path / "single.duckdb"
    assert _cli("--quiet", *args, "--db", str(single), cwd=ROOT).returncode == 0
    with CalibrationStore(sharded, read_only=True) as a, CalibrationStore(single, read_only=True) as b:
        assert a.table_counts()["runs"] == 4
        assert a.content_digest() == b.content_digest()
