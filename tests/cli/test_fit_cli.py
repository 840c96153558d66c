"""`sencache-calibrate fit` and `export`, invoked in-process; state checked through the library."""

from __future__ import annotations

import pytest

from cli import build_parser, main
from calibration.fit import fit_result_path
from calibration.export import read_fit_result
from policies import Policy
from store.database import CalibrationStore
from tests.calibration.test_fit_store import SYNTH_FP, make_store


def test_fit_then_export(tmp_path, capsys):
    db = make_store(tmp_path / "calib.duckdb")
    assert main(["--quiet", "fit", "--db", str(db), "--trials", "4", "--objective", "replay", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(fit_result_path(db))
    result = read_fit_result(db)
    assert result["seed"] == 3 and result["trials"] == 4 and result["objective"] == "replay"
    out = tmp_path / "policies" / "my-model.json"
    assert main(["--quiet", "export", "--db", str(db), "--out", str(out)]) == 0
    assert Policy.load(out, model_fingerprint=SYNTH_FP).default_operating_point == "balanced"


def test_fit_takes_the_twin_margin_and_defaults_to_half_a_decibel(tmp_path):
    db = make_store(tmp_path / "calib.duckdb", runs=2, holdout=0)
    assert main(["--quiet", "fit", "--db", str(db), "--trials", "2", "--objective", "replay"]) == 0
    assert read_fit_result(db)["twin_margin_db"] == 0.5
    assert main(["--quiet", "fit", "--db", str(db), "--trials", "2", "--objective", "replay", "--twin-margin", "2.5"]) == 0
    assert read_fit_result(db)["twin_margin_db"] == 2.5


def test_fit_takes_replays_local_moves_and_defaults_to_two(tmp_path):
    db = make_store(tmp_path / "calib.duckdb", runs=2, holdout=0)
    assert main(["--quiet", "fit", "--db", str(db), "--trials", "2", "--objective", "replay"]) == 0
    assert read_fit_result(db)["replay_compounding"]["local_moves"] == 2
    assert main(["--quiet", "fit", "--db", str(db), "--trials", "2", "--objective", "replay",
                 "--replay-local-moves", "0"]) == 0
    assert read_fit_result(db)["replay_compounding"]["local_moves"] == 0


def test_fit_storage_flag_takes_a_journal_file(tmp_path):
    db = make_store(tmp_path / "calib.duckdb", runs=2, holdout=0)
    storage = tmp_path / "studies" / "shared.log"
    assert main(["--quiet", "fit", "--db", str(db), "--trials", "2", "--objective", "replay",
                 "--storage", str(storage)]) == 0
    assert storage.stat().st_size > 0


def _empty(tmp_path):
    CalibrationStore(tmp_path / "empty.duckdb").close()
    return tmp_path / "empty.duckdb"


@pytest.mark.parametrize(
    "argv, message",
    [
        (lambda p: ["fit", "--db", str(p / "missing.duckdb")], "sencache-calibrate collect"),
        (lambda p: ["fit", "--db", str(_empty(p))], "no complete runs"),
        (lambda p: ["fit", "--db", str(make_store(p / "ns.duckdb", runs=1, holdout=0, sensitivities=False))],
         "no sensitivities"),
        (lambda p: ["fit", "--db", str(make_store(p / "s.duckdb", runs=1, holdout=0)), "--trials", "0"],
         "--trials must be a positive integer"),
        (lambda p: ["fit", "--db", str(make_store(p / "s.duckdb", runs=1, holdout=0)), "--knots", "40"],
         "--knots must lie in 8..16"),
        (lambda p: ["export", "--db", str(make_store(p / "s.duckdb", runs=1, holdout=0)), "--out", str(p / "o.json")],
         "sencache-calibrate fit --db"),
        (lambda p: ["fit", "--db", str(make_store(p / "s.duckdb", runs=1, holdout=0)), "--twin-margin", "-1"],
         "--twin-margin must be a non-negative number of dB"),
        (lambda p: ["fit", "--db", str(make_store(p / "s.duckdb", runs=1, holdout=0)), "--objective", "replay",
                    "--replay-local-moves", "-1"], "--replay-local-moves must be a non-negative integer"),
    ],
    ids=["missing-store", "empty-store", "no-sensitivities", "zero-trials", "bad-knots", "export-before-fit",
         "negative-twin-margin", "negative-local-moves"],
)
def test_bad_input_exits_2_with_the_fix(tmp_path, capsys, argv, message):
    assert main(argv(tmp_path)) == 2
    assert message in capsys.readouterr().err


def test_mixed_models_exit_2(tmp_path, capsys):
    import duckdb

    db = make_store(tmp_path / "mixed.duckdb", runs=1, holdout=0)
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO runs SELECT * REPLACE ('other' AS run_id, 'f00dfeedf00dfeed' AS model_fingerprint) FROM runs")
    con.close()
    assert main(["fit", "--db", str(db), "--objective", "replay"]) == 2
    assert "mixes runs of 2 models" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["fit", "export", "recheck"])
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    assert f"sencache-calibrate {command} --db" in capsys.readouterr().out
