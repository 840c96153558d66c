"""benchmarks/headroom_probe.py: its masks obey the probe's constraints and its summary orders as it must."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "headroom_probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("headroom_probe", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n,m,k,count", [(30, 15, 2, 50), (20, 10, 2, 20), (10, 4, 2, 1), (12, 7, 1, 6)])
def test_masks_obey_the_constraints(probe, n, m, k, count):
    """(10, 4, 2) has one mask, (0, 3, 6, 9); (12, 7, 1) has six (one of six gaps without a skip)."""
    masks = probe.random_masks(count, n, m, k, seed=3)
    assert len(masks) == count
    assert len(set(masks)) == len(masks)
    for mask in masks:
        assert len(mask) == m and list(mask) == sorted(set(mask))
        assert mask[0] == 0 and mask[-1] == n - 1
        assert max(np.diff(mask)) - 1 <= k, mask


def test_masks_refuse_impossible_constraints(probe):
    with pytest.raises(ValueError, match="cannot keep runs"):
        probe.random_masks(1, 30, 5, 2)
    with pytest.raises(ValueError, match="found only 6"):
        probe.random_masks(7, 12, 7, 1)


def test_a_mask_is_forced_exactly(probe):
    mask = probe.random_masks(1, 30, 15, 2, seed=1)[0]
    point = probe.mask_point(mask, 30, "linear")
    assert point.static and point.forecast == "linear"
    assert sorted(point.schedule.steps(30)) == list(mask)


def test_summary_orders_oracle_best_single_evenly(probe):
    rng = np.random.default_rng(0)
    table = rng.normal(40.0, 2.0, size=(6, 4))
    evenly = np.full(4, 38.0)
    h = probe.summarise(table, evenly)
    assert h.oracle >= h.best_single_split
    assert h.oracle >= h.best_single_in_sample >= h.evenly
    assert h.evenly == pytest.approx(38.0)
    # the in-sample best is the best row mean; the oracle the mean of column maxima
    full = np.vstack([table, evenly[None]])
    assert h.best_single_in_sample == pytest.approx(full.mean(axis=1).max())
    assert h.oracle == pytest.approx(full.max(axis=0).mean())
    # picked on prompts {0, 1}, scored on {2, 3}, and the other way round
    a = full[np.argmax(full[:, :2].mean(axis=1)), 2:].mean()
    b = full[np.argmax(full[:, 2:].mean(axis=1)), :2].mean()
    assert h.best_single_split == pytest.approx((a + b) / 2)
