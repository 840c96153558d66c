"""SIGKILL mid-collect: the store keeps only whole runs, and resuming gives the uninterrupted store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from policies.errors import InputError
from store import CalibrationStore, make_run_id
from tests.store.synthetic import FP, expected_cache_error_rows, synthetic_run, write

ROOT = Path(__file__).resolve().parents[2]
NUM_STEPS, K_MAX, LATENT = 12, 3, (4, 32, 32)  # 13 latents x 8 KiB fp16 per run: a write takes a while
N_RUNS = 400

_CHILD = textwrap.dedent(
    f"""
    import sys
    from store import CalibrationStore, make_run_id
    from tests.store.synthetic import synthetic_run, write
    with CalibrationStore(sys.argv[1], model_fingerprint="{FP}") as db:
        for i in range({N_RUNS}):
            if write(db, synthetic_run(i, num_steps={NUM_STEPS}, k_max={K_MAX}, latent_shape={LATENT})):
                print(i, flush=True)  # after COMMIT returned
    """
)


def _run(i: int):
    return synthetic_run(i, num_steps=NUM_STEPS, k_max=K_MAX, latent_shape=LATENT)


def _assert_every_run_whole(db: CalibrationStore) -> None:
    counts_by_run = {}
    for table in ("steps", "sensitivities", "cache_errors", "propagation"):
        counts_by_run[table] = getattr(db, table)().groupby("run_id").size().to_dict()
    ids = db.completed_run_ids()
    for table, per_run in counts_by_run.items():
        assert set(per_run) == ids, f"{table} has rows of runs missing from `runs`"
    for run_id in ids:
        assert counts_by_run["steps"][run_id] == NUM_STEPS
        assert counts_by_run["sensitivities"][run_id] == NUM_STEPS
        assert counts_by_run["propagation"][run_id] == NUM_STEPS
        assert counts_by_run["cache_errors"][run_id] == expected_cache_error_rows(NUM_STEPS, K_MAX)
    assert db.table_counts()["latents"] == len(ids) * (NUM_STEPS + 1)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_write_keeps_only_whole_runs_and_resume_matches(tmp_path):
    path = tmp_path / "calib.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    committed = []
    try:
        for line in child.stdout:
            committed.append(int(line))
            if len(committed) == 5:
                time.sleep(0.004)  # land somewhere inside a later write
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    committed += [int(line) for line in child.stdout.read().split()]  # reported before the kill
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert len(committed) >= 5, "the writer died before writing 5 runs"
    ids = {make_run_id(_run(i).run): i for i in range(N_RUNS)}

    with CalibrationStore(path, model_fingerprint=FP) as db:
        _assert_every_run_whole(db)
        stored = {ids[run_id] for run_id in db.completed_run_ids()}
        # every reported commit survived; at most one more (committed, not yet reported)
        assert set(committed) <= stored and len(stored - set(committed)) <= 1
        assert len(stored) < N_RUNS
        upto = max(stored) + 4
        for i in range(upto):  # resume: the runs already stored are skipped
            write(db, _run(i))
        resumed = db.content_digest()

    with CalibrationStore(tmp_path / "straight.duckdb", model_fingerprint=FP) as db:
        for i in range(upto):
            write(db, _run(i))
        assert db.content_digest() == resumed


@pytest.mark.slow
def test_a_store_held_by_another_process_is_refused_with_the_shard_advice(tmp_path):
    path = tmp_path / "calib.duckdb"
    holder = textwrap.dedent(
        """
        import sys, time
        from store import CalibrationStore
        with CalibrationStore(sys.argv[1]):
            print("open", flush=True)
            time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", holder, str(path)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        with pytest.raises(InputError, match="open for writing in another process") as info:
            CalibrationStore(path, read_only=True)
        assert "store merge" in str(info.value) and "rank" in str(info.value)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
