"""Synthetic calibration stores with known answers, written through the store API; and `fit`'s
refusals of stores it cannot use.

The synthetic model (every run identical in J, so the median table is exact):
    N steps, t_i = 1000·(1 − i/N)                         (descending, model units)
    J_x(t) = 1 + t/1000,  J_t(t) = 0.001                  (per run and per step: the same)
    per-step latent change d_i = 0.1·(1 + 0.5·sin(seed + i))
    dx(r, k) = Σ_{j=r}^{r+k−1} d_j,   dt(r, k) = 1000·k/N
    residual_error(r, k) = (A·J_x(t_r)·dx + B·J_t(t_r)·dt + C)·(1 + noise),  A=2, B=0.5, C=0.01
    noise: ±5% (seeded), plus one outlier per run (×8) that a robust loss must shrug off
    propagation gain G(p) = 10·exp(−3p): early errors matter ×20 more than late ones
    reuse_errors: mode "none" = residual_error; mode "linear" (a forecast: second order in the gap)
    = (AL·J_x(t_r)·dx + DL·J_t(t_r)·dt² + CL)·(1 + noise),  AL=0.4, DL=0.002, CL=0.005
    residual_change (per step) = d_i·0.5
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from calibration.fit import fit
from calibration.fitdata import load_fit_data
from policies import InputError
from store.database import CalibrationStore

A, B, C = 2.0, 0.5, 0.01
AL, DL, CL = 0.4, 0.002, 0.005
SYNTH_FP = "5" * 16


def j_x(t: np.ndarray) -> np.ndarray:
    return 1.0 + np.asarray(t) / 1000.0


def make_store(
    path: Path,
    runs: int = 4,
    holdout: int = 2,
    num_steps: int = 12,
    max_lag: int = 4,
    fingerprint: str = SYNTH_FP,
    model_name: str = "synthetic",
    sensitivities: bool = True,
    noise: float = 0.05,
    call: dict | None = None,
    modes: bool = True,
    propagation: bool = True,
    propagation_direction: str = "cache",
    gain_modes: tuple[str, ...] | None = None,
    masks: int = 0,
) -> Path:
    """Write `runs` calib + `holdout` holdout runs of the synthetic model to a new store."""
    store = CalibrationStore(path)
    n = num_steps
    t = 1000.0 * (1.0 - np.arange(n) / n)
    for seed in range(runs + holdout):
        rng = np.random.default_rng(seed)
        d = 0.1 * (1.0 + 0.5 * np.sin(seed + np.arange(n)))
        rows = []
        for r in range(n - 1):
            for k in range(1, max_lag + 1):
                if r + k >= n:
                    break
                dx = float(d[r : r + k].sum())
                dt = 1000.0 * k / n
                err = (A * j_x(t[r]) * dx + B * 0.001 * dt + C) * (1.0 + noise * rng.uniform(-1, 1))
                lin = (AL * j_x(t[r]) * dx + DL * 0.001 * dt**2 + CL) * (1.0 + noise * rng.uniform(-1, 1))
                rows.append({"step": r, "lag": k, "dx": dx, "dt": dt, "residual_error": err, "output_error": 2 * err,
                             "linear": lin})
        errors = pd.DataFrame(rows)
        errors.loc[3, "residual_error"] *= 8.0  # the outlier
        reuse = pd.concat([errors[["step", "lag"]].assign(mode="none", error=errors["residual_error"]),
                           errors[["step", "lag"]].assign(mode="linear", error=errors["linear"])]) if modes else None
        errors = errors.drop(columns="linear")
        steps = pd.DataFrame({
            "step": np.arange(n), "timestep": t, "dx_norm": d, "x_norm": np.ones(n),
            "teacache_signal": d * (1 + 0.3 * rng.uniform(-1, 1, n)),
            "mag_ratio": 1.0 + d * 0.1, "residual_change": np.r_[np.nan, d[1:] * 0.5],
        })
        sens = pd.DataFrame({"step": np.arange(n), "J_x": j_x(t), "J_t": np.full(n, 0.001)}) if sensitivities else None
        # a gain per measured reuse mode (store schema 3), a forecast's twice plain reuse's
        prop = pd.concat([pd.DataFrame({"step": np.arange(n), "mode": mode,
                                        "gain": (1.0 if mode == "none" else 2.0) * 10.0
                                        * np.exp(-3.0 * np.arange(n) / (n - 1))})
                          for mode in (gain_modes or (("none", "linear") if modes else ("none",)))]) \
            if propagation else None
        run = {
            "model_name": model_name, "model_fingerprint": fingerprint, "pipeline_class": "WanPipeline",
            "scheduler_class": "FlowMatchEulerDiscreteScheduler", "scheduler_config": {"shift": 3.0},
            "prompt": f"a red circle moving left number {seed}", "seed": seed, "num_steps": n,
            "split": "holdout" if seed >= runs else "calib", "estimator": "trajectory",
            "extra": {"propagation_direction": propagation_direction} if propagation else None,
            **(call or {}),
        }
        # `masks` whole static masks per run (store schema 4): every other step computed and more, an
        # error that grows with the skips (what compounding replay calibrates on)
        mask_rows = None
        if masks:
            mask_rows = pd.DataFrame([{"mode": "none" if j % 2 == 0 else "linear",
                                       "mask": ",".join(str(i) for i in sorted({0, n - 1} | set(range(0, n, 2 + j)))),
                                       "error": 0.01 * (1 + j) ** 1.5} for j in range(masks)])
        store.write_run(run, steps, sens, errors, prop, reuse_errors=reuse, mask_errors=mask_rows)
    store.close()
    return path


@pytest.fixture
def synth_db(tmp_path: Path) -> Path:
    return make_store(tmp_path / "synth.duckdb")


def test_load_fit_data_reads_the_synthetic_store(synth_db):
    data = load_fit_data(synth_db)
    assert data.run_ids("calib") and len(data.run_ids("holdout")) == 2
    table = data.sensitivity_table()
    # J_x at t = 1000 is 1 + 1000/1000 = 2; the table is descending in t.
    assert table.timesteps[0] == pytest.approx(1000.0)
    assert table.J_x[0] == pytest.approx(2.0)
    assert data.model_class == "WanTransformer3DModel"


def test_missing_store_names_the_collect_command(tmp_path):
    with pytest.raises(InputError, match="sencache-calibrate collect"):
        load_fit_data(tmp_path / "nope.duckdb")


def test_empty_store_is_refused(tmp_path):
    CalibrationStore(tmp_path / "empty.duckdb").close()
    with pytest.raises(InputError, match="no complete runs.*sencache-calibrate collect"):
        load_fit_data(tmp_path / "empty.duckdb")


def test_store_without_sensitivities_is_refused(tmp_path):
    db = make_store(tmp_path / "nosens.duckdb", runs=2, holdout=0, sensitivities=False)
    with pytest.raises(InputError, match="no sensitivities.*collect"):
        load_fit_data(db)


def test_store_mixing_models_is_refused(tmp_path):
    db = make_store(tmp_path / "mixed.duckdb", runs=2, holdout=0)
    # The store API refuses a second model, so smuggle one in with plain SQL, as a bad merge could.
    import duckdb

    con = duckdb.connect(str(db))
    con.execute("INSERT INTO runs SELECT * REPLACE ('other' AS run_id, 'f00dfeedf00dfeed' AS model_fingerprint) "
                "FROM runs LIMIT 1")
    con.close()
    with pytest.raises(InputError, match="mixes runs of 2 models.*own store"):
        load_fit_data(db)


def test_zero_trials_is_refused(synth_db):
    with pytest.raises(InputError, match="--trials must be a positive integer"):
        fit(synth_db, trials=0, objective="replay", plot=False)


def test_gain_curve_is_the_stored_median(synth_db):
    pos, gain = load_fit_data(synth_db).gain_curve()
    # G(0) = 10·e^0 = 10 and G(1) = 10·e^-3 ≈ 0.498 in every run.
    assert gain[0] == pytest.approx(10.0)
    assert gain[-1] == pytest.approx(10 * math.exp(-3))
