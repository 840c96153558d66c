"""Valid policy dicts for the policy tests: two operating points, a descending sensitivity table;
`VALID` in format version 2 (a predictor per reuse mode), `VALID_V1` the same policy in version 1."""

from __future__ import annotations

import copy

import pytest

VALID = {
    "format": "sencache-policy",
    "version": 2,
    "model": {"class": "WanTransformer3DModel", "fingerprint": "0123456789abcdef", "name": "toy-wan"},
    "scheduler": {"class": "FlowMatchEulerDiscreteScheduler", "config": {"shift": 3.0}},
    "sensitivity": {
        # Diffusion order (descending), in the model's units (sigma * 1000).
        "timesteps": [1000.0, 500.0, 0.0],
        "J_x": [2.0, 1.0, 0.5],
        "J_t": [0.01, 0.02, 0.04],
        "estimator": "trajectory",
    },
    "predictors": {
        "none": {"a": 1.2, "b": 0.8, "c": 0.01, "r2": 0.7, "spearman": 0.89},
        "linear": {"a": 0.6, "b": 0.3, "c": 0.02, "r2": 0.5, "spearman": 0.8, "d": 0.001},
    },
    "operating_points": [
        {
            "name": "balanced",
            "eps": {"positions": [0.0, 0.5, 1.0], "values": [0.05, 0.1, 0.3]},
            "max_skips": 2,
            "warmup_steps": 2,
            "final_steps": 1,
            "expected_nfe_fraction": 0.5,
            "expected_error": 0.02,
        },
        {
            "name": "fast",
            "eps": {"positions": [0.0, 0.25, 0.75, 1.0], "values": [0.1, 0.2, 0.4, 0.8]},
            "max_skips": 3,
            "warmup_steps": 0.1,
            "final_steps": 0,
            "expected_nfe_fraction": 0.4,
            "expected_error": 0.05,
            "forecast": "linear",
        },
    ],
    "default_operating_point": "balanced",
    "provenance": {
        "created": "2026-11-25T12:00:00+00:00",
        "package_version": "0.1.0",
        "store": "calib.duckdb",
        "runs": 16,
        "split": {"calib": 12, "holdout": 4},
        "metrics": {"psnr": {"balanced": 38.5, "fast": 35.0}},
    },
}


VALID_V1 = copy.deepcopy(VALID)
VALID_V1["version"] = 1
del VALID_V1["predictors"]
VALID_V1["predictor"] = copy.deepcopy(VALID["predictors"]["none"])


def fresh_v1() -> dict:
    """A deep copy of the valid version-1 policy dict."""
    return copy.deepcopy(VALID_V1)


def fresh_valid() -> dict:
    """A deep copy of the valid policy dict, safe to mutate."""
    return copy.deepcopy(VALID)


@pytest.fixture
def valid_dict() -> dict:
    return fresh_valid()


@pytest.fixture(scope="session")
def make_valid():
    """The factory itself, for hypothesis tests (a session fixture passes its health checks)."""
    return fresh_valid
