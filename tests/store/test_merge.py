"""Shard files and `merge_stores`: the merge equals one store written by one process."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from policies.errors import InputError
from store import CalibrationStore, find_shards, merge_stores, shard_path
from tests.store.synthetic import FP, synthetic_run, write


def _store(path: Path, runs: list[int], fingerprint: str = FP) -> Path:
    with CalibrationStore(path, model_fingerprint=fingerprint) as db:
        for i in runs:
            write(db, synthetic_run(i, fingerprint=fingerprint, latent_shape=(2, 2)))
    return path


def test_shard_path_and_find_shards(tmp_path):
    db = tmp_path / "calib.duckdb"
    assert shard_path(db, 0) == tmp_path / "calib.rank0.duckdb"
    assert shard_path("out/x.db", 12) == Path("out/x.rank12.db")
    for rank in (10, 2, 0):
        shard_path(db, rank).touch()
    (tmp_path / "calib.rankX.duckdb").touch()
    (tmp_path / "other.rank1.duckdb").touch()
    assert find_shards(db) == [shard_path(db, r) for r in (0, 2, 10)]


def test_merge_equals_a_single_process_store(tmp_path):
    single = _store(tmp_path / "single.duckdb", [0, 1, 2, 3, 4])
    # rank 0 takes runs 0, 2, 4 and rank 1 takes 1, 3 — and run 2 again (a retried pair)
    shard0 = _store(shard_path(tmp_path / "calib.duckdb", 0), [0, 2, 4])
    shard1 = _store(shard_path(tmp_path / "calib.duckdb", 1), [3, 1, 2])
    report = merge_stores([shard0, shard1], tmp_path / "calib.duckdb")
    assert report.duplicates_skipped == 1
    assert report.runs_per_shard == {str(shard0): 3, str(shard1): 2}
    with CalibrationStore(single, read_only=True) as a, CalibrationStore(tmp_path / "calib.duckdb", read_only=True) as b:
        assert b.table_counts() == a.table_counts() == report.counts
        assert b.content_digest() == a.content_digest()
        assert b.model_fingerprint == FP
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_merge_accepts_an_empty_shard(tmp_path):
    full = _store(tmp_path / "a.duckdb", [0, 1])
    CalibrationStore(tmp_path / "empty.duckdb").close()  # a rank that got no (prompt, seed) pairs
    merge_stores([tmp_path / "empty.duckdb", full], tmp_path / "out.duckdb")
    with CalibrationStore(tmp_path / "out.duckdb", read_only=True) as out, CalibrationStore(full, read_only=True) as a:
        assert out.content_digest() == a.content_digest()


def test_merge_refuses_shards_of_different_models(tmp_path):
    a = _store(tmp_path / "a.duckdb", [0])
    b = _store(tmp_path / "b.duckdb", [1], fingerprint="fp-other")
    with pytest.raises(InputError) as info:
        merge_stores([a, b], tmp_path / "out.duckdb")
    message = str(info.value)
    assert "different models" in message and FP in message and "fp-other" in message
    assert not (tmp_path / "out.duckdb").exists()


def test_merge_refuses_another_schema_version(tmp_path):
    a = _store(tmp_path / "a.duckdb", [0])
    b = _store(tmp_path / "b.duckdb", [1])
    con = duckdb.connect(str(b))
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(InputError, match=r"b\.duckdb: store schema version 1"):
        merge_stores([a, b], tmp_path / "out.duckdb")
    assert not (tmp_path / "out.duckdb").exists()


def test_merge_refuses_an_existing_output_unless_overwrite(tmp_path):
    a = _store(tmp_path / "a.duckdb", [0, 1])
    out = _store(tmp_path / "out.duckdb", [5])
    with pytest.raises(InputError, match="already exists"):
        merge_stores([a], out)
    merge_stores([a], out, overwrite=True)
    with CalibrationStore(out, read_only=True) as merged, CalibrationStore(a, read_only=True) as src:
        assert merged.content_digest() == src.content_digest()  # run 5 is gone: replaced, not appended


@pytest.mark.parametrize(
    ("case", "message"),
    [("missing", "no such shard file"), ("none", "no shard files"), ("twice", "listed twice"), ("self", "also one of the shards")],
)
def test_merge_refuses_bad_shard_lists(tmp_path, case, message):
    a = _store(tmp_path / "a.duckdb", [0])
    shards = {"missing": [a, tmp_path / "b.duckdb"], "none": [], "twice": [a, a], "self": [a]}[case]
    out = a if case == "self" else tmp_path / "out.duckdb"
    with pytest.raises(InputError, match=message):
        merge_stores(shards, out, overwrite=True)


def test_merge_refuses_a_file_that_is_not_a_store(tmp_path):
    a = _store(tmp_path / "a.duckdb", [0])
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    with pytest.raises(InputError, match="other.duckdb: not a SenCache calibration store"):
        merge_stores([a, other], tmp_path / "out.duckdb")
