"""`quickstart` end to end on a tiny fixture: every stage's file, and a summary that reads them."""

import json

import pytest

from calibration.quickstart import quickstart
from policies import Policy
from policies.errors import InputError


@pytest.mark.slow
def test_quickstart_runs_the_whole_loop(tmp_path):
    out = tmp_path / "qs"
    result = quickstart(model="tiny-wan", out=out, prompts=3, seeds=1, steps=6, trials=3, bench_seeds=1,
                        progress=False)
    for path in (result.store, result.fit, result.policy, result.bench / "bench.json", result.bench / "summary.md"):
        assert path.is_file(), path
    policy = Policy.load(result.policy)  # the exported file passes the loader
    assert {"quality", "balanced", "fast"} <= set(policy.operating_point_names)
    bench = json.loads((result.bench / "bench.json").read_text())
    assert [m for m in bench["methods"]] == ["none", "uniform", "taylorseer", "sencache-static", "sencache"]
    assert set(result.seconds) == {"collect", "fit", "export", "bench"}
    text = result.summary()
    assert "SenCache quickstart finished." in text and str(result.policy) in text
    assert "at 50% of steps computed" in text
    line = next(t for t in text.splitlines() if "at 50% of steps computed" in t)
    # ours, its static twin (what the score adds), the strongest peer and the baseline, in that order
    assert [c.split()[0] for c in line.split(": ", 1)[1].split(", ")] == ["sencache", "sencache-static", "taylorseer", "uniform"]
    saved = json.loads((out / "quickstart.json").read_text())
    assert saved["headline"]["matched"] == bench["matched"]


def test_quickstart_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="--overwrite"):
        quickstart(model="tiny-wan", out=tmp_path, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "mine"
