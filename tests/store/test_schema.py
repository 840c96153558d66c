"""Creating and opening stores: tables, meta, and the refusals (version, model, not a store)."""

from __future__ import annotations

import duckdb
import pytest

from policies.errors import InputError
from store import SCHEMA_VERSION, TABLES, CalibrationStore
from store.schema import arrow_schema
from tests.store.synthetic import FP, synthetic_run, write


def test_new_store_has_every_table_and_meta(tmp_path):
    path = tmp_path / "calib.duckdb"
    with CalibrationStore(path, model_fingerprint=FP) as db:
        meta = db.meta
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert meta["model_fingerprint"] == FP
    assert meta["created"] and meta["package_version"]
    con = duckdb.connect(str(path), read_only=True)
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    con.close()
    assert names == set(TABLES)


def test_a_new_store_creates_its_folder(tmp_path):
    with CalibrationStore(tmp_path / "runs" / "toy" / "calib.duckdb") as db:
        assert db.path.exists()


def test_float_columns_are_double_not_float32(tmp_path):
    path = tmp_path / "calib.duckdb"
    CalibrationStore(path).close()
    con = duckdb.connect(str(path), read_only=True)
    kinds = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name='sensitivities'").fetchall())
    con.close()
    assert kinds["J_x"] == "DOUBLE" and kinds["J_t"] == "DOUBLE"


def test_arrow_schema_follows_table_column_order():
    for table in TABLES.values():
        assert arrow_schema(table).names == list(table.columns.keys())


def test_reopening_keeps_meta_and_runs(tmp_path):
    path = tmp_path / "calib.duckdb"
    with CalibrationStore(path, model_fingerprint=FP) as db:
        write(db, synthetic_run(0))
        created = db.meta["created"]
    with CalibrationStore(path, model_fingerprint=FP) as db:
        assert db.meta["created"] == created
        assert len(db.completed_run_ids()) == 1


def test_missing_file_read_only_names_file_and_collect(tmp_path):
    path = tmp_path / "absent.duckdb"
    with pytest.raises(InputError, match="absent.duckdb") as info:
        CalibrationStore(path, read_only=True)
    assert "sencache-calibrate collect" in str(info.value)
    assert not path.exists()


def test_missing_file_with_create_false_is_refused(tmp_path):
    with pytest.raises(InputError, match="no calibration store"):
        CalibrationStore(tmp_path / "absent.duckdb", create=False)


def test_schema_version_mismatch_is_refused_with_reason_and_fix(tmp_path):
    path = tmp_path / "old.duckdb"
    CalibrationStore(path).close()
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(InputError) as info:
        CalibrationStore(path)
    message = str(info.value)
    assert "old.duckdb" in message and "schema version 99" in message
    assert f"reads version {SCHEMA_VERSION}" in message and "sencache-calibrate collect" in message


def test_other_model_is_refused_with_both_fingerprints(tmp_path):
    path = tmp_path / "calib.duckdb"
    CalibrationStore(path, model_fingerprint=FP).close()
    with pytest.raises(InputError) as info:
        CalibrationStore(path, model_fingerprint="fp-other")
    message = str(info.value)
    assert FP in message and "fp-other" in message and "sencache-calibrate collect" in message
    with CalibrationStore(path) as db:
        db.check_compatible(FP)  # the right model passes
        with pytest.raises(InputError, match="fp-other"):
            db.check_compatible("fp-other")


def test_store_without_model_is_claimed_by_first_check_or_write(tmp_path):
    with CalibrationStore(tmp_path / "a.duckdb") as db:
        assert db.model_fingerprint is None
        db.check_compatible(FP)
        assert db.model_fingerprint == FP
    with CalibrationStore(tmp_path / "b.duckdb") as db:
        write(db, synthetic_run(0, fingerprint="fp-b"))
        assert db.model_fingerprint == "fp-b"
    with CalibrationStore(tmp_path / "b.duckdb") as db:
        assert db.meta["model_fingerprint"] == "fp-b"


def test_run_of_another_model_is_not_written(tmp_path):
    with CalibrationStore(tmp_path / "calib.duckdb", model_fingerprint=FP) as db:
        with pytest.raises(InputError, match="fp-other"):
            write(db, synthetic_run(0, fingerprint="fp-other"))
        assert db.table_counts()["runs"] == 0


def test_duckdb_file_that_is_not_a_store_is_refused(tmp_path):
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    with pytest.raises(InputError, match="not a SenCache calibration store"):
        CalibrationStore(path)


def test_file_that_is_not_duckdb_is_refused(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("not a database\n" * 1000)
    with pytest.raises(InputError, match="notes.duckdb"):
        CalibrationStore(path)


def test_read_only_store_refuses_writes_but_reads(tmp_path):
    path = tmp_path / "calib.duckdb"
    with CalibrationStore(path, model_fingerprint=FP) as db:
        write(db, synthetic_run(0))
    with CalibrationStore(path, read_only=True) as db:
        assert len(db.runs()) == 1
        with pytest.raises(InputError, match="read-only"):
            write(db, synthetic_run(1))


def test_store_open_read_write_cannot_be_reopened_read_only_in_process(tmp_path):
    path = tmp_path / "calib.duckdb"
    with CalibrationStore(path):
        with pytest.raises(InputError, match="another mode"):
            CalibrationStore(path, read_only=True)
    with CalibrationStore(path, read_only=True) as db:  # fine once the writer closed
        assert db.table_counts()["runs"] == 0


def test_writers_run_duckdb_on_one_thread_and_readers_on_the_default(tmp_path):
    path = tmp_path / "calib.duckdb"

    def threads(db):
        return db._duckdb().execute("SELECT current_setting('threads')").fetchone()[0]

    with CalibrationStore(path) as db:
        assert threads(db) == 1  # appends of a few runs: no worker wake-ups (store.database)
    with CalibrationStore(path, read_only=True) as db:
        assert threads(db) == duckdb.connect().execute("SELECT current_setting('threads')").fetchone()[0]


def test_a_version_1_store_is_refused_with_the_command_that_recollects_it(tmp_path):
    # A store from before the per-mode reuse errors: fit cannot use it, so opening it says how
    # to collect a new one, for the model its runs are of.
    from tests.store.synthetic import synthetic_run, write

    path = tmp_path / "v1.duckdb"
    with CalibrationStore(path) as store:
        write(store, synthetic_run(0))
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.execute("DROP TABLE reuse_errors")
    con.close()
    with pytest.raises(InputError) as info:
        CalibrationStore(path)
    message = str(info.value)
    assert "v1.duckdb: store schema version 1" in message and "re-collect it" in message
    assert "`sencache-calibrate collect --model toy-wan --db NEW.duckdb`" in message
