"""Deterministic synthetic runs for the store tests (no model needed).

Run `i` has `num_steps` steps, one sensitivity row per step, `k_max` lags per step (fewer near
the end: step s has lags 1..min(k_max, num_steps-1-s)), and optional latents; the values come
from a generator seeded with `i`, so two calls give identical rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from store import RunRecord

FP = "fp-toy-wan-0001"


def expected_cache_error_rows(num_steps: int, k_max: int) -> int:
    return sum(min(k_max, num_steps - 1 - s) for s in range(num_steps))


def synthetic_run(
    i: int,
    *,
    fingerprint: str = FP,
    num_steps: int = 6,
    k_max: int = 3,
    split: str = "calib",
    latent_shape: tuple[int, ...] | None = None,
    with_propagation: bool = True,
    wall_s: float | None = 1.5,
) -> RunRecord:
    rng = np.random.default_rng(i)
    t = np.linspace(1000.0, 0.0, num_steps + 1)
    steps = pd.DataFrame(
        {
            "step": np.arange(num_steps),
            "timestep": t[:-1],
            "t_next": t[1:],
            "dx_norm": rng.random(num_steps),
            "x_norm": rng.random(num_steps) + 1.0,
            "out_norm": rng.random(num_steps),
            "residual_change": np.r_[np.nan, rng.random(num_steps - 1)],
        }
    )
    j_x = rng.random(num_steps)
    j_x[0] = np.nan  # the first step has no estimate (x_1 = x_0 in this toy)
    sensitivities = pd.DataFrame({"step": np.arange(num_steps), "J_x": j_x, "J_t": rng.random(num_steps)})
    pairs = [(s, k) for s in range(num_steps) for k in range(1, min(k_max, num_steps - 1 - s) + 1)]
    n = len(pairs)
    cache_errors = pd.DataFrame(
        {
            "step": [s for s, _ in pairs],
            "lag": [k for _, k in pairs],
            "dx": rng.random(n),
            "dt": [abs(t[s + k] - t[s]) for s, k in pairs],
            "residual_error": rng.random(n),
            "output_error": rng.random(n),
        }
    )
    reuse_errors = pd.DataFrame(
        {
            "step": [s for s, _ in pairs] * 2,
            "lag": [k for _, k in pairs] * 2,
            "mode": ["none"] * n + ["linear"] * n,
            "error": np.r_[cache_errors["residual_error"].to_numpy(), rng.random(n)],
        }
    )
    propagation = pd.DataFrame({"step": np.arange(num_steps), "gain": rng.random(num_steps) * 10}) if with_propagation else None
    latents = None
    if latent_shape is not None:
        latents = {s: rng.standard_normal(latent_shape).astype(np.float32) for s in range(num_steps + 1)}
    run = {
        "model_name": "toy-wan",
        "model_fingerprint": fingerprint,
        "pipeline_class": "WanPipeline",
        "scheduler_class": "FlowMatchEulerDiscreteScheduler",
        "scheduler_config": {"shift": 3.0, "num_train_timesteps": 1000},
        "prompt": f"prompt {i // 2}",
        "seed": i % 2,
        "num_steps": num_steps,
        "guidance_scale": 5.0,
        "height": 32,
        "width": 32,
        "num_frames": 5,
        "split": split,
        "estimator": "trajectory",
        "wall_s": wall_s,
    }
    return RunRecord(run, steps, sensitivities, cache_errors, propagation, latents, reuse_errors)


def write(store, record: RunRecord) -> bool:
    return store.write_run(
        record.run, record.steps, record.sensitivities, record.cache_errors, record.propagation, record.latents,
        record.reuse_errors,
    )
