"""`sencache-calibrate bench`, invoked in-process; results checked through bench.json."""

from __future__ import annotations

import json

import pytest

from cli import build_parser, main
from policies import constant_policy


@pytest.mark.slow
def test_bench_runs_and_writes(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left on a blue background\n")
    out = tmp_path / "bench"
    argv = ["--quiet", "bench", "--model", "tiny-ltx", "--methods", "uniform", "--seeds", "1",
            "--prompts", str(prompts), "--steps", "4", "--out", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out / "summary.md")
    result = json.loads((out / "bench.json").read_text())
    assert [r["method"] for r in result["results"]][0] == "none"
    assert result["prompts"] == ["a red circle moving left on a blue background"]
    # a second run into the same folder needs --overwrite
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    # --overwrite replaces the bench's own files and nothing else
    (out / "notes.txt").write_text("mine")
    assert main(argv + ["--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "bench.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "uniform,warpcache"], "known methods: none, uniform"),
        (["--methods", "sencache"], "--policy"),
        (["--policy", "{foreign}"], "fingerprint"),
        (["--policy", "{missing}"], "no such file"),
        (["--db", "{missing}"], "no calibration store"),
    ],
    ids=["unknown-method", "sencache-without-policy", "foreign-policy", "missing-policy", "missing-store"],
)
def test_bad_input_exits_2(tmp_path, capsys, extra, message):
    constant_policy(0.1).save(tmp_path / "foreign.json")
    extra = [e.format(foreign=tmp_path / "foreign.json", missing=tmp_path / "nope.json") for e in extra]
    assert main(["--quiet", "bench", "--model", "tiny-wan", "--out", str(tmp_path / "b"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_bench_is_documented():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert "bench" in sub.choices
    assert "Example:" in sub.choices["bench"].description
