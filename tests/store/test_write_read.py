"""Writing runs and reading them back: round trips, ids, idempotence, NULLs, all-or-nothing."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

import store.writer
from policies.errors import InputError
from store import CalibrationStore, make_run_id
from tests.store.synthetic import FP, expected_cache_error_rows, synthetic_run, write


@pytest.fixture
def db(tmp_path):
    with CalibrationStore(tmp_path / "calib.duckdb", model_fingerprint=FP) as opened:
        yield opened


def _values(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    return frame[columns].to_numpy(dtype="float64")


def test_round_trip_of_every_table(db):
    record = synthetic_run(3, latent_shape=(2, 3, 4))
    assert write(db, record) is True
    (run_id,) = db.completed_run_ids()
    run = db.runs().iloc[0]
    assert run["run_id"] == run_id and run["prompt"] == "prompt 1" and run["seed"] == 1
    assert run["scheduler_config"] == '{"num_train_timesteps":1000,"shift":3.0}'  # canonical JSON
    assert run["status"] == "complete" and run["split"] == "calib"

    steps = db.steps()
    cols = ["timestep", "t_next", "dx_norm", "x_norm", "out_norm"]
    np.testing.assert_array_equal(_values(steps, cols), _values(record.steps, cols))
    assert steps["teacache_signal"].isna().all()  # peer signals not given: NULL

    sens = db.sensitivities()
    np.testing.assert_array_equal(_values(sens, ["J_x", "J_t"]), _values(record.sensitivities, ["J_x", "J_t"]))
    assert (sens["estimator"] == "trajectory").all()  # filled from the run's estimator

    errors = db.cache_errors()
    cols = ["step", "lag", "dx", "dt", "residual_error", "output_error"]
    np.testing.assert_array_equal(_values(errors, cols), _values(record.cache_errors, cols))
    # 6 steps, K_max 3: lags per step 3,3,3,2,1,0 = 12 rows
    assert len(errors) == expected_cache_error_rows(6, 3) == 12

    np.testing.assert_array_equal(db.propagation()["gain"].to_numpy(), record.propagation["gain"].to_numpy())

    latents = db.latents(run_id)
    assert sorted(latents) == list(range(7))  # x_0 .. x_6
    for step, array in latents.items():
        assert array.dtype == np.float16 and array.shape == (2, 3, 4)
        np.testing.assert_allclose(array, record.latents[step], rtol=1e-3, atol=1e-3)


def test_readers_filter_by_run_split_and_estimator(db):
    ids = []
    for i in range(4):
        write(db, synthetic_run(i, split="holdout" if i == 3 else "calib"))
    ids = sorted(db.completed_run_ids())
    assert len(ids) == 4
    assert set(db.steps(run_ids=ids[:2])["run_id"]) == set(ids[:2])
    assert db.cache_errors(run_ids=[]).empty
    assert len(db.runs(split="holdout")) == 1
    assert len(db.sensitivities(estimator="reference")) == 0
    assert len(db.sensitivities(estimator="trajectory")) == 4 * 6


def test_rows_come_back_ordered_by_key(db):
    record = synthetic_run(0)
    shuffled = record.cache_errors.sample(frac=1.0, random_state=0)
    db.write_run(record.run, record.steps, record.sensitivities, shuffled)
    errors = db.cache_errors()
    assert list(zip(errors["step"], errors["lag"])) == sorted(zip(errors["step"], errors["lag"]))


def test_run_id_is_deterministic_and_ignores_split_and_timing():
    run = synthetic_run(0).run
    same = {**run, "split": "holdout", "wall_s": 99.0, "scheduler_config": '{"shift": 3.0, "num_train_timesteps": 1000}'}
    assert make_run_id(run) == make_run_id(same)
    assert make_run_id(run) != make_run_id({**run, "seed": 7})
    assert make_run_id(run) != make_run_id({**run, "model_fingerprint": "other"})
    assert make_run_id(run) != make_run_id({**run, "estimator": "reference"})


def test_rewriting_a_stored_run_is_a_no_op(db):
    record = synthetic_run(0)
    assert write(db, record) is True
    counts, digest = db.table_counts(), db.content_digest()
    assert write(db, synthetic_run(0, wall_s=9.0)) is False  # same settings, a later rerun
    assert db.table_counts() == counts and db.content_digest() == digest


def test_a_batch_writes_each_run_once(db):
    flags = db.write_runs([synthetic_run(0), synthetic_run(1), synthetic_run(0)])
    assert flags == [True, True, False]
    assert db.write_runs([synthetic_run(1), synthetic_run(2)]) == [False, True]
    assert db.table_counts()["runs"] == 3


def test_non_finite_values_are_stored_as_null(db, tmp_path):
    record = synthetic_run(0)
    record.sensitivities.loc[1, "J_x"] = np.inf
    record.sensitivities.loc[2, "J_t"] = -np.inf
    record.steps.loc[3, "dx_norm"] = np.nan
    record.run = {**record.run, "wall_s": float("nan")}
    write(db, record)
    db.close()
    con = duckdb.connect(str(tmp_path / "calib.duckdb"), read_only=True)
    # step 0 J_x NaN (synthetic), step 1 J_x inf, step 2 J_t -inf, step 3 dx_norm NaN: 4 NULLs
    nulls = con.execute(
        "SELECT count(*) FILTER (WHERE J_x IS NULL) + count(*) FILTER (WHERE J_t IS NULL) FROM sensitivities"
    ).fetchone()[0]
    non_finite = con.execute(
        "SELECT count(*) FROM sensitivities WHERE NOT isfinite(J_x) OR NOT isfinite(J_t)"
    ).fetchone()[0]
    steps_null = con.execute("SELECT count(*) FROM steps WHERE dx_norm IS NULL").fetchone()[0]
    wall = con.execute("SELECT wall_s FROM runs").fetchone()[0]
    con.close()
    assert (nulls, non_finite, steps_null, wall) == (3, 0, 1, None)


def test_nulls_read_back_as_nan(db):
    write(db, synthetic_run(0))
    sens = db.sensitivities()
    assert np.isnan(sens.loc[sens["step"] == 0, "J_x"]).all()
    assert np.isfinite(sens.loc[sens["step"] > 0, "J_x"]).all()


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("failing_table", ["steps", "cache_errors", "propagation"])
def test_a_failure_mid_write_leaves_nothing_of_the_run(db, monkeypatch, failing_table):
    real_append = store.writer._append

    def flaky(raw, name, table):
        if name == failing_table:
            raise _Boom(f"disk full while writing {name}")
        real_append(raw, name, table)

    monkeypatch.setattr(store.writer, "_append", flaky)
    with pytest.raises(_Boom):
        write(db, synthetic_run(0))
    assert db.completed_run_ids() == set()
    assert set(db.table_counts().values()) == {0}  # the runs row went back with the rest
    monkeypatch.setattr(store.writer, "_append", real_append)
    assert write(db, synthetic_run(0)) is True  # and the run can be written afterwards


def test_a_failing_batch_stores_none_of_its_runs(db, monkeypatch):
    write(db, synthetic_run(0))
    before = db.table_counts()

    def fail_on_errors(raw, name, table):
        if name == "cache_errors":
            raise _Boom(name)
        raw.from_arrow(table).insert_into(name)

    monkeypatch.setattr(store.writer, "_append", fail_on_errors)
    with pytest.raises(_Boom):
        db.write_runs([synthetic_run(1), synthetic_run(2)])
    assert db.table_counts() == before


def _mixed_batch():
    """Runs whose frames differ in kind and shape: the batched conversion must not mix them up."""
    records = [synthetic_run(i, latent_shape=(2, 3) if i % 2 else None, with_propagation=i != 2) for i in range(5)]
    records[1].cache_errors = records[1].cache_errors.sample(frac=1.0, random_state=1)  # rows in any order
    records[3].steps = {c: records[3].steps[c].tolist() for c in records[3].steps}  # a mapping of lists
    records[4].sensitivities = records[4].sensitivities.drop(columns=["J_t"])  # a nullable column left out
    return records


def test_a_batch_stores_exactly_what_one_run_at_a_time_stores(tmp_path):
    digests = []
    for name in ("one-by-one", "batch"):
        with CalibrationStore(tmp_path / f"{name}.duckdb", model_fingerprint=FP) as db:
            if name == "batch":
                assert db.write_runs(_mixed_batch()) == [True] * 5
            else:
                assert [write(db, r) for r in _mixed_batch()] == [True] * 5
            digests.append(db.content_digest())
            counts = db.table_counts()
    assert digests[0] == digests[1]
    # 5 runs x 6 steps; propagation for 4 runs; latents x_0..x_6 for runs 1 and 3
    assert counts["steps"] == counts["sensitivities"] == 30 and counts["propagation"] == 24
    assert counts["latents"] == 2 * 7


def test_a_batch_skips_stored_runs_and_keeps_each_runs_rows(db):
    records = _mixed_batch()
    assert write(db, records[1]) is True  # run 1 (with latents) is stored before the batch
    assert db.write_runs([records[0], records[1], records[3], records[0]]) == [True, False, True, False]
    ids = {make_run_id(r.run): i for i, r in enumerate(records)}
    latents = db.latents(next(k for k, i in ids.items() if i == 3))
    np.testing.assert_allclose(latents[2], records[3].latents[2], rtol=1e-3, atol=1e-3)
    per_run = db.steps().groupby("run_id").size()
    assert {ids[k]: n for k, n in per_run.items()} == {0: 6, 1: 6, 3: 6}
    assert db.table_counts()["latents"] == 2 * 7  # runs 1 and 3, once each


def test_a_bad_run_in_a_batch_is_named_and_nothing_is_written(db):
    records = [synthetic_run(i) for i in range(4)]
    records[2].cache_errors["lag"] = records[2].cache_errors["lag"] - 1  # lag 0 in run 2 only
    with pytest.raises(InputError, match=rf"cache_errors\.lag \(run {make_run_id(records[2].run)}\): must be >= 1"):
        db.write_runs(records)
    records = [synthetic_run(i) for i in range(4)]
    records[3].steps.loc[2, "step"] = 1  # step 1 twice in run 3; runs 0-2 also have a step 1
    with pytest.raises(InputError, match=rf"appears more than once in run {make_run_id(records[3].run)}"):
        db.write_runs(records)
    assert set(db.table_counts().values()) == {0}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.steps.rename(columns={"dx_norm": "dxnorm"}, inplace=True), r"unknown column\(s\) \['dxnorm'\]"),
        (lambda r: r.cache_errors.drop(columns=["lag"], inplace=True), "required column 'lag'"),
        (lambda r: r.cache_errors.loc.__setitem__((1, "lag"), 1), "appears more than once"),
        (lambda r: r.steps.__setitem__("step", r.steps["step"] + 0.5), "expected integers"),
        (lambda r: r.cache_errors.__setitem__("lag", r.cache_errors["lag"] - 1), "lag .* must be >= 1"),
        (lambda r: r.steps.__setitem__("step", r.steps["step"] - 1), "step .* must be >= 0"),
        (lambda r: r.sensitivities.__setitem__("step", [None] * 6), "missing"),
        (lambda r: setattr(r, "run", {**r.run, "split": "train"}), "runs.split"),
        (lambda r: setattr(r, "run", {k: v for k, v in r.run.items() if k != "prompt"}), "prompt"),
        (lambda r: setattr(r, "run", {**r.run, "promt": "typo"}), "unknown field"),
    ],
    ids=["unknown-column", "missing-lag", "duplicate-key", "fractional-step", "lag-zero", "negative-step",
         "null-step", "bad-split", "no-prompt", "typo-field"],
)
def test_bad_rows_are_refused_before_writing(db, mutate, message):
    record = synthetic_run(0)
    mutate(record)
    with pytest.raises(InputError, match=message):
        write(db, record)
    assert db.table_counts()["runs"] == 0


def test_digest_ignores_wall_clock_but_not_values(tmp_path):
    digests = []
    for name, wall_s, bump in [("a", 1.0, 0.0), ("b", 7.0, 0.0), ("c", 1.0, 1e-9)]:
        with CalibrationStore(tmp_path / f"{name}.duckdb", model_fingerprint=FP) as db:
            record = synthetic_run(0, wall_s=wall_s)
            record.cache_errors.loc[0, "residual_error"] += bump
            write(db, record)
            digests.append(db.content_digest())
    assert digests[0] == digests[1]  # only wall_s and created differ
    assert digests[0] != digests[2]  # one value differs by 1e-9


def test_digest_does_not_depend_on_write_order(tmp_path):
    digests = []
    for name, order in [("fwd", [0, 1, 2]), ("rev", [2, 0, 1])]:
        with CalibrationStore(tmp_path / f"{name}.duckdb", model_fingerprint=FP) as db:
            for i in order:
                write(db, synthetic_run(i, latent_shape=(4,)))
            digests.append(db.content_digest())
    assert digests[0] == digests[1]


def test_digest_covers_latent_bytes(tmp_path):
    digests = []
    for name, bump in [("a", 0.0), ("b", 0.5)]:
        with CalibrationStore(tmp_path / f"{name}.duckdb", model_fingerprint=FP) as db:
            record = synthetic_run(0, latent_shape=(3,))
            record.latents[2] = record.latents[2] + bump
            write(db, record)
            digests.append(db.content_digest())
    assert digests[0] != digests[1]


def test_latents_accept_arrays_by_step_and_pairs(db):
    run = synthetic_run(0).run
    db.write_run(run, None, None, None, latents=[np.zeros(2), np.ones(2)])
    db.write_run({**run, "seed": 5}, None, None, None, latents=[(3, np.full((1, 2), 2.0))])
    by_seed = dict(zip(db.runs()["seed"], db.runs()["run_id"]))
    assert {s: a.tolist() for s, a in db.latents(by_seed[0]).items()} == {0: [0.0, 0.0], 1: [1.0, 1.0]}
    assert {s: a.tolist() for s, a in db.latents(by_seed[5]).items()} == {3: [[2.0, 2.0]]}
    assert db.latents("no-such-run") == {}


def test_column_hash_ignores_chunking_and_slicing_but_not_boundaries():
    import hashlib

    import pyarrow as pa

    from store.queries import _hash_column

    def digest(*chunks):
        h = hashlib.sha256()
        _hash_column(h, pa.chunked_array(list(chunks)))
        return h.hexdigest()

    assert digest(pa.array(["ab", "c", None])) == digest(pa.array(["ab"]), pa.array(["c", None]))
    assert digest(pa.array(["x", "ab", "c"]).slice(1)) == digest(pa.array(["ab", "c"]))
    assert digest(pa.array(["ab", "c"])) != digest(pa.array(["a", "bc"]))  # lengths are hashed
    assert digest(pa.array([1.0, None])) != digest(pa.array([1.0, 0.0]))  # so is the null mask


def test_reuse_errors_of_every_mode_round_trip(tmp_path):
    from tests.store.synthetic import synthetic_run, write

    record = synthetic_run(3)
    with CalibrationStore(tmp_path / "m.duckdb") as store:
        write(store, record)
        got = store.reuse_errors().sort_values(["mode", "step", "lag"]).reset_index(drop=True)
        steps = store.steps()
    want = record.reuse_errors.sort_values(["mode", "step", "lag"]).reset_index(drop=True)
    assert sorted(got["mode"].unique()) == ["linear", "none"]
    np.testing.assert_allclose(got["error"], want["error"])
    assert list(got["step"]) == list(want["step"]) and list(got["lag"]) == list(want["lag"])
    assert steps["residual_change"].notna().sum() == len(steps) - 1
