"""`sencache-calibrate collect` and `store merge`: exit codes, one-line errors, nothing written on bad input."""

from __future__ import annotations

import logging

import duckdb
import pytest

import cli
from store import CalibrationStore

PROMPT = "a red circle moving left on a blue background"


@pytest.fixture(autouse=True)
def _fresh_logging():
    # cli.main points the root logger at this test's (captured) stderr; don't leak it to the next test
    yield
    for handler in list(logging.root.handlers):
        logging.root.removeHandler(handler)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(f"# zoo prompts\n{PROMPT}\n\n")
    return path


def _bad(capsys, argv, *needles):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_collect_writes_a_store(tmp_path, prompts, capsys):
    db = tmp_path / "calib.duckdb"
    assert cli.main(["--quiet", "collect", "--model", "tiny-wan", "--prompts", str(prompts), "--seeds", "1",
                     "--steps", "2", "--db", str(db), "--k-max", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(db)
    with CalibrationStore(db, read_only=True) as store:
        runs = store.runs()
    assert runs["prompt"].tolist() == [PROMPT] and runs["num_steps"].tolist() == [2]


def test_missing_prompts_file_names_it(tmp_path, capsys):
    db = tmp_path / "calib.duckdb"
    _bad(capsys, ["collect", "--model", "tiny-wan", "--prompts", str(tmp_path / "nope.txt"), "--db", str(db)], "nope.txt")
    assert not db.exists()


def test_empty_prompts_file_names_it(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    db = tmp_path / "calib.duckdb"
    _bad(capsys, ["collect", "--model", "tiny-wan", "--prompts", str(empty), "--db", str(db)], "empty.txt", "no prompts")
    assert not db.exists()


def test_unknown_model(tmp_path, prompts, capsys):
    db = tmp_path / "calib.duckdb"
    _bad(capsys, ["collect", "--model", "no-such-model", "--prompts", str(prompts), "--db", str(db)], "no-such-model")
    assert not db.exists()


def test_one_step_is_bad_input(tmp_path, prompts, capsys):
    db = tmp_path / "calib.duckdb"
    _bad(capsys, ["collect", "--model", "tiny-wan", "--prompts", str(prompts), "--steps", "1", "--db", str(db)], "--steps 1")
    assert not db.exists()


def test_store_of_another_model_is_refused_untouched(tmp_path, prompts, capsys):
    db = tmp_path / "calib.duckdb"
    CalibrationStore(db, model_fingerprint="0123456789abcdef").close()
    before = db.read_bytes()
    _bad(capsys, ["collect", "--model", "tiny-wan", "--prompts", str(prompts), "--steps", "2", "--db", str(db)],
         "0123456789abcdef")
    with CalibrationStore(db, read_only=True) as store:
        assert store.table_counts()["runs"] == 0
    assert len(before) > 0


def test_store_of_another_schema_version_is_refused(tmp_path, prompts, capsys):
    db = tmp_path / "calib.duckdb"
    CalibrationStore(db).close()
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    con.close()
    _bad(capsys, ["collect", "--model", "tiny-wan", "--prompts", str(prompts), "--steps", "2", "--db", str(db)],
         "schema version 999")
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    con.close()


def test_reference_estimator_needs_zoo_prompts(tmp_path, capsys):
    odd = tmp_path / "odd.txt"
    odd.write_text("a cat playing piano\n")
    db = tmp_path / "calib.duckdb"
    _bad(capsys, ["collect", "--model", "tiny-wan", "--prompts", str(odd), "--estimator", "reference", "--db", str(db)],
         "reference")
    assert not db.exists()


def test_prompts_default_only_for_zoo_models(tmp_path, capsys):
    folder = tmp_path / "not-a-pipeline"
    folder.mkdir()
    db = tmp_path / "calib.duckdb"
    _bad(capsys, ["collect", "--model", str(folder), "--db", str(db)], "--prompts")
    assert not db.exists()


def test_store_merge_without_shards_is_bad_input(tmp_path, capsys):
    _bad(capsys, ["store", "merge", "--out", str(tmp_path / "calib.duckdb")], "shard")
    _bad(capsys, ["store"], "store merge")


def test_holdout_prompts_are_the_holdout_and_every_other_prompt_calibrates(tmp_path, prompts, capsys):
    held = tmp_path / "held.txt"
    held.write_text("a blue square moving up on a green background\n")
    db = tmp_path / "c.duckdb"
    assert cli.main(["--quiet", "collect", "--model", "tiny-wan", "--prompts", str(prompts), "--holdout-prompts",
                     str(held), "--seeds", "2", "--steps", "3", "--db", str(db)]) == 0
    capsys.readouterr()
    with duckdb.connect(str(db), read_only=True) as con:
        splits = dict(con.execute("SELECT prompt, list(DISTINCT split) FROM runs GROUP BY prompt").fetchall())
    assert splits == {PROMPT: ["calib"], "a blue square moving up on a green background": ["holdout"]}


@pytest.mark.parametrize("held, extra, needle", [
    (PROMPT, [], "also among --prompts"),
    ("a blue square moving up on a green background", ["--holdout-fraction", "0.5"], "not both"),
    ("# nothing but a comment", [], "--holdout-prompts"),
], ids=["prompt-in-both", "with-a-fraction", "empty-file"])
def test_holdout_prompts_refuses_what_cannot_split(tmp_path, prompts, capsys, held, extra, needle):
    path = tmp_path / "held.txt"
    path.write_text(held + "\n")
    db = tmp_path / "c.duckdb"
    _bad(capsys, ["collect", "--model", "tiny-wan", "--prompts", str(prompts), "--holdout-prompts", str(path),
                  "--steps", "3", "--db", str(db), *extra], needle)
    assert not db.exists()
