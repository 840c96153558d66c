"""`run_bench` on a tiny fixture, the metrics by hand, the matched interpolation, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calibration.bench import run_bench
from calibration.bench_report import PSNR_CAP, _interp, latent_rmse, matched, psnr, ssim
from calibration.models import load_model
from policies import InputError, PolicyError, constant_policy, config_fingerprint

PROMPTS = ["a red circle moving left on a blue background", "a green square moving up on a yellow background"]


# --- metrics by hand ----------------------------------------------------------------------------


def test_psnr_by_hand():
    a = np.zeros((2, 8, 8, 3))
    b = a + 0.1  # MSE 0.01 -> 10·log10(1 / 0.01) = 20 dB
    assert psnr(b, a) == pytest.approx(20.0)
    assert psnr(a, a) == PSNR_CAP


def test_ssim_identity_and_ordering():
    rng = np.random.default_rng(0)
    a = rng.random((3, 16, 16, 3))
    assert ssim(a, a) == pytest.approx(1.0)
    slight = np.clip(a + rng.normal(0, 0.02, a.shape), 0, 1)
    heavy = np.clip(a + rng.normal(0, 0.3, a.shape), 0, 1)
    assert 1.0 > ssim(slight, a) > ssim(heavy, a)
    # a constant offset of c: luminance term (2µaµb + C1)/(µa² + µb² + C1) < 1, structure unchanged
    assert ssim(np.full((1, 12, 12, 1), 0.6), np.full((1, 12, 12, 1), 0.4)) < 1.0


def test_latent_rmse_by_hand():
    # differences 3 and 4 -> sqrt((9 + 16) / 2) = sqrt(12.5)
    assert latent_rmse(np.array([3.0, 0.0]), np.array([0.0, 4.0])) == pytest.approx(12.5**0.5)


# --- matched comparison -------------------------------------------------------------------------


def test_interp_inside_outside_and_ties():
    assert _interp([0.4, 0.8], [30.0, 50.0], 0.5) == pytest.approx(35.0)  # 30 + (0.1/0.4)·20
    assert _interp([0.4, 0.8], [30.0, 50.0], 0.3) is None
    assert _interp([0.5, 0.5, 1.0], [10.0, 20.0, 40.0], 0.5) == pytest.approx(15.0)


def test_settings_at_the_same_compute_on_a_sample_are_not_blended():
    # The quickstart's sencache at 0.4: `fast` computes 0.4 on both samples (40 dB); `paper*2`,
    # 0.39 on average, computes 0.4 on the first sample too (30 dB) and 0.38 on the second. On the
    # first sample the matched value was their mean in MSE (32.6 dB), below `fast` alone — and
    # below the static twin with fast's very mask. The setting meant for 0.4 (mean 0.40) stands.
    fast = _row("sencache", 0.4, [40, 40])
    paper = _row("sencache", 0.39, [30, 32])
    paper["knob"] = "paper*2"
    paper["samples"][0]["nfe_fraction"], paper["samples"][1]["nfe_fraction"] = 0.4, 0.38
    table = matched([_row("none", 1.0, [100, 100]), fast, paper, _row("sencache-static", 0.4, [40, 40])], (0.4,))
    assert table["0.4"]["sencache"]["psnr"] == pytest.approx(40.0)
    assert table["0.4"]["sencache"]["vs_sencache-static"] == pytest.approx(0.0)
    # without a rank, equal x is still the mean
    assert _interp([0.4, 0.4], [10.0, 20.0], 0.4) == pytest.approx(15.0)
    # with the settings' mean compute, the one nearest the shared compute stands — also where the
    # tie lies beside the matched fraction and only shapes the interpolation towards it
    assert _interp([0.4, 0.4, 0.5], [10.0, 20.0, 30.0], 0.4, setting_means=[0.38, 0.41, 0.5]) == pytest.approx(20.0)
    assert _interp([0.4, 0.4, 0.6], [10.0, 20.0, 30.0], 0.5, setting_means=[0.40, 0.43, 0.6]) == pytest.approx(20.0)


def _row(method, nfe, psnr_by_sample):
    samples = [{"nfe_fraction": nfe, "psnr": p, "ssim": 0.9, "latent_rmse": 0.1} for p in psnr_by_sample]
    return {"method": method, "knob": nfe, "nfe_fraction": nfe, "psnr": float(np.mean(psnr_by_sample)),
            "ssim": 0.9, "latent_rmse": 0.1, "fidelity": None, "samples": samples}


def test_matched_values_spread_and_not_reached():
    rows = [_row("none", 1.0, [100, 100]), _row("a", 0.4, [30, 30]), _row("a", 0.8, [50, 50]), _row("b", 0.6, [40, 40]),
            _row("b", 0.9, [45, 45]), _row("c", 0.6, [20, 40]), _row("c", 1.0, [100, 100])]
    table = matched(rows, (0.5, 0.7))
    # a at 0.5, a quarter of the way from 0.4 to 0.8, in MSE: 0.75·1e-3 + 0.25·1e-5 = 7.525e-4 -> 31.235 dB
    assert table["0.5"]["a"]["psnr"] == pytest.approx(-10 * np.log10(7.525e-4))
    assert table["0.5"]["a"]["spread"] == pytest.approx(0.0)
    assert table["0.5"]["b"]["reached"] is False and table["0.5"]["b"]["psnr"] is None
    # c at 0.7 runs towards identical output (MSE 0) at 1.0: MSE 0.75 x (1e-2, 1e-4) -> 21.25 and 41.25 dB,
    # not a straight line towards the 100 dB cap
    assert table["0.7"]["c"]["psnr"] == pytest.approx(-10 * np.log10(0.75) + 30.0)
    assert table["0.7"]["c"]["spread"] == pytest.approx(10.0)
    assert "none" not in table["0.5"]


def test_matched_pairs_each_sample_with_uniform():
    # uniform at 0.5: samples 30 and 40 dB; x at 0.5: 31 and 43 dB. Paired: +1 and +3 -> mean +2,
    # s.e. std(1, 3)/sqrt(2) = 1/sqrt(2). The unpaired spreads (5 and 6 dB) hide that x wins on both.
    rows = [_row("none", 1.0, [100, 100]), _row("uniform", 0.5, [30, 40]), _row("x", 0.5, [31, 43]),
            _row("y", 0.2, [10, 10]), _row("y", 0.3, [20, 20])]
    table = matched(rows, (0.5,))["0.5"]
    assert table["x"]["vs_uniform"] == pytest.approx(2.0)
    assert table["x"]["vs_uniform_se"] == pytest.approx(1 / np.sqrt(2))
    assert "vs_uniform" not in table["uniform"] and "vs_uniform" not in table["y"]  # y never reaches 0.5


def test_matched_pairs_sencache_with_its_static_twin_and_taylorseer():
    # sencache 35, 45; its static twin 34, 41 -> +1, +4: mean +2.5, s.e. 1.5/sqrt(2);
    # taylorseer 36, 44 -> -1, +1: mean 0, s.e. 1/sqrt(2)
    rows = [_row("none", 1.0, [100, 100]), _row("sencache", 0.5, [35, 45]), _row("sencache-static", 0.5, [34, 41]),
            _row("taylorseer", 0.5, [36, 44])]
    table = matched(rows, (0.5,))["0.5"]
    assert table["sencache"]["vs_sencache-static"] == pytest.approx(2.5)
    assert table["sencache"]["vs_sencache-static_se"] == pytest.approx(1.5 / np.sqrt(2))
    assert table["sencache"]["vs_taylorseer"] == pytest.approx(0.0)
    assert table["sencache"]["vs_taylorseer_se"] == pytest.approx(1 / np.sqrt(2))
    assert "vs_uniform" not in table["sencache"]  # no uniform ran


def test_a_dominated_setting_does_not_pull_the_matched_curve_down():
    # sencache's fitted point computes 0.50 at 40 dB; an extra setting (the paper reference) computes
    # 0.51 at 30 dB. Nobody picks the second: at 0.5 the method is its fitted point, not a blend.
    rows = [_row("none", 1.0, [100, 100]), _row("sencache", 0.5, [40, 40]), _row("sencache", 0.51, [30, 30]),
            _row("sencache", 0.7, [50, 50]), _row("sencache", 0.3, [20, 20])]
    rows[2]["knob"] = "paper"
    table = matched(rows, (0.5, 0.6))
    assert table["0.5"]["sencache"]["psnr"] == pytest.approx(40.0)
    assert table["0.5"]["sencache"]["dominated"] == ["paper"]
    # between the kept settings 0.5 and 0.7, in MSE: (1e-4 + 1e-5) / 2
    assert table["0.6"]["sencache"]["psnr"] == pytest.approx(-10 * np.log10(5.5e-5))


# --- a real run on a tiny fixture ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    loaded = load_model("tiny-wan")
    policy = constant_policy(10.0, model_class="WanTransformer3DModel",
                             fingerprint=config_fingerprint(dict(loaded.pipe.transformer.config)), name="flat")
    policy_path = out.parent / "policy.json"
    policy.save(policy_path)
    result = run_bench(loaded, policy_path, out, methods="uniform,sencache", prompts=PROMPTS[:1], seeds=2, steps=6,
                       progress=False, knobs={"uniform": [0.8, 0.5, 0.3], "sencache": ["flat*0.00001", "flat", "flat*100"]})
    return out, result


@pytest.mark.slow
def test_bench_writes_the_documented_form(tiny_bench):
    out, result = tiny_bench
    on_disk = json.loads((out / "bench.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    for row in on_disk["results"]:
        assert {"method", "knob", "nfe_fraction", "psnr", "ssim", "latent_rmse", "wall_s", "speedup"} <= set(row)
    methods = [r["method"] for r in on_disk["results"]]
    assert methods == ["none", "uniform", "uniform", "uniform", "sencache", "sencache", "sencache"]
    none = on_disk["results"][0]
    assert none["nfe_fraction"] == 1.0 and none["psnr"] == PSNR_CAP and none["latent_rmse"] == 0.0
    for f in ("0.7", "0.5", "0.4"):
        for method in ("uniform", "sencache"):
            assert {"psnr", "ssim", "latent_rmse", "spread"} <= set(on_disk["matched"][f][method])
    for name in ("summary.md", "quality_vs_nfe.png", "schedules.png", "frames.png", "masks_sencache.png"):
        assert (out / name).stat().st_size > 0


@pytest.mark.slow
def test_bench_nfe_is_measured(tiny_bench):
    _, result = tiny_bench
    uniform = {r["knob"]: r for r in result["results"] if r["method"] == "uniform"}
    # 6 steps: 0.5 -> 3 evenly spaced steps (0, 2 or 3, 5) -> half the block-stack work
    assert uniform[0.5]["nfe_fraction"] == pytest.approx(0.5)
    assert uniform[0.8]["psnr"] >= uniform[0.3]["psnr"]
    sc = {r["knob"]: r for r in result["results"] if r["method"] == "sencache"}
    assert sc["flat*0.00001"]["nfe_fraction"] == pytest.approx(1.0)  # ε ~ 0: nothing skips
    assert sc["flat*100"]["nfe_fraction"] < 0.8
    # the runtime's own mask agrees with the measured fraction
    for sample in sc["flat*100"]["samples"]:
        assert np.mean(sample["mask"]) == pytest.approx(sample["nfe_fraction"])


def test_refuses_existing_output_unknown_method_and_foreign_policy(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(InputError, match="--overwrite"):
        run_bench("tiny-wan", None, out, methods="uniform")
    with pytest.raises(InputError, match="known methods"):
        run_bench("tiny-wan", None, tmp_path / "new", methods="uniform,warpcache")
    foreign = constant_policy(0.1)  # fingerprint of no real model
    foreign.save(tmp_path / "foreign.json")
    with pytest.raises(PolicyError, match="fingerprint"):
        run_bench("tiny-wan", tmp_path / "foreign.json", tmp_path / "new2")
    assert not (tmp_path / "new").exists() and not (tmp_path / "new2").exists()


def test_a_method_that_cannot_run_here_is_recorded_with_its_reason(tmp_path, monkeypatch):
    from calibration.baselines import METHODS, Method, MethodUnsupported

    def refuse(pipe, knob):
        raise MethodUnsupported("peer library has no adapter for WanPipeline")

    monkeypatch.setitem(METHODS, "refuser", Method("refuser", refuse, (1.0,), "nothing"))
    result = run_bench("tiny-wan", None, tmp_path / "out", methods="refuser", prompts=PROMPTS[:1], seeds=1, steps=3,
                       progress=False)
    assert result["unsupported"] == {"refuser": "peer library has no adapter for WanPipeline"}
    assert [r["method"] for r in result["results"]] == ["none"]
    assert "peer library has no adapter" in (tmp_path / "out" / "summary.md").read_text()
