"""Whole-mask re-runs: how the skips of a whole static schedule really compound.

Replay (`calibration.replay`) builds a candidate's final error from single-skip measurements: the
local error of each skip, its propagation gain (a run that skips that step alone), and a rule for
how the skips of one mask add up. Single skips replay exactly; whole masks do not: on
toy-cogvideox a forecast's replay ÷ re-run falls from about 1.05 for masks whose runs of skips
are one step long to 0.6–0.8 past 2.5 (`benchmarks/replay_vs_rerun.py`), and a periodic mask
measured on one toy did not carry over to another (`benchmarks/compounding_models.py`).

So `collect` measures what replay has to predict, on the masks a fit will look at: for each run,
`count` static schedules drawn as the search draws its static candidates (the same shape family,
`calibration.shapes.shape_schedule`, a compute fraction in `NFE_RANGE`, the reuse modes in turn),
really run under the runtime, and the final error of each against the run's full compute is
stored (`mask_errors`, store schema 4). Replay calibrates its compounding on them
(`calibration.replay.fit_corrections`). Each run also re-runs the fit's own evenly spaced
candidates at its targets in every mode (`anchor_masks`), and replay takes those measured errors
as they are wherever a point makes one of those masks on that run: on toy-cogvideox replay put
evenly spaced "linear" refined at 0.5 1.5–1.8× above its re-run, so a replay fit passed it over,
and the worst regret on 10 held-out prompts fell from 4.7 to 1.8 dB with the anchors (docs/experiments.md, "Replay against re-runs").
Each mask costs one more pipeline call per run.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from calibration.fit import TARGETS
from calibration.shapes import NFE_RANGE, SHAPE_RANGES, shape_schedule

__all__ = ["ANCHOR_FRACTIONS", "MASK_RUNS", "CalibrationMask", "anchor_masks", "draw_masks", "mask_key",
           "measure_mask_errors", "parse_mask"]

#: whole masks re-run per calibration run by default when `collect --propagation` is on
MASK_RUNS = 12


@dataclass(frozen=True)
class CalibrationMask:
    """One static schedule to re-run: the reuse mode of its skips and the steps it computes."""

    mode: str
    computed: tuple[int, ...]

    @property
    def key(self) -> str:
        return mask_key(self.computed)


def mask_key(computed: Sequence[int]) -> str:
    """The stored form of a mask: its computed steps, ascending, comma-separated."""
    return ",".join(str(int(i)) for i in sorted(set(computed)))


def parse_mask(key: str) -> frozenset[int]:
    """The computed steps of a stored mask (`mask_key`'s inverse)."""
    return frozenset(int(part) for part in key.split(",") if part.strip())


def draw_masks(num_steps: int, count: int, modes: Sequence[str], prompt: str, seed: int) -> list[CalibrationMask]:
    """`count` masks for one run, drawn as the search draws static candidates; the modes take turns.

    Seeded by the run's prompt and seed, so a resumed or repeated collect draws the same masks,
    and different runs draw different ones (more shapes covered for the same cost)."""
    if num_steps < 3 or count <= 0 or not modes:
        return []
    rng = np.random.default_rng([zlib.crc32(prompt.encode()), int(seed)])
    out: list[CalibrationMask] = []
    for _ in range(10 * count):  # a short run has few masks: a repeat is drawn again, within reason
        if len(out) == count:
            break
        params = {name: float(rng.uniform(*SHAPE_RANGES[name])) for name in ("tilt", "bump", "bump_at")}
        target = float(rng.uniform(*NFE_RANGE))
        computed = int(min(num_steps - 1, max(2, round(target * num_steps))))
        steps = shape_schedule(params, computed, num_steps).steps(num_steps)
        mask = CalibrationMask(str(modes[len(out) % len(modes)]), tuple(sorted(steps)))
        if mask not in out:
            out.append(mask)
    return out


#: the compute fractions whose evenly spaced masks every run also re-runs in each mode: the fit's
#: targets, where its `uniform` candidates and its static refinement's usual start lie
ANCHOR_FRACTIONS = tuple(TARGETS.values())


def anchor_masks(num_steps: int, modes: Sequence[str], skip_costs: Any = None) -> list[CalibrationMask]:
    """Evenly spaced skipping at `ANCHOR_FRACTIONS` of the compute in every mode, as the fit makes
    its `uniform` candidates (a mode whose skips still cost compute, `skip_costs`, computes fewer
    steps): masks every fit considers, so replay can use their measured errors (`ReplayObjective`)."""
    from policies import evenly_spaced

    if num_steps < 3:
        return []
    out = []
    for f in ANCHOR_FRACTIONS:
        for mode in modes:
            fraction = skip_costs.static_steps(mode, f, num_steps) / num_steps \
                if skip_costs is not None and skip_costs.of(mode) else f
            out.append(CalibrationMask(str(mode), tuple(sorted(evenly_spaced(fraction, num_steps).steps(num_steps)))))
    return out


def measure_mask_errors(pipe: Any, run: Callable[[], torch.Tensor], baseline_final: torch.Tensor,
                        masks: Sequence[CalibrationMask], num_steps: int) -> list[dict[str, Any]]:
    """Rows (mode, mask, error) of the `mask_errors` table: each mask run under the runtime as a
    static operating point of its mode, its final latents against `baseline_final` (RMS)."""
    from calibration.propagation import run_point
    from policies import OperatingPoint, StaticSchedule
    from sencache.norms import rms_diff

    rows = []
    for mask in masks:
        positions = tuple(i / (num_steps - 1) for i in mask.computed)
        point = OperatingPoint("calibration-mask", schedule=StaticSchedule(positions), forecast=mask.mode)
        final, computed = run_point(pipe, run, point)
        got = {int(i) for i in np.flatnonzero(np.asarray(computed[0]))}
        if got != set(mask.computed):
            raise AssertionError(f"the mask run meant to compute {mask.key} computed {mask_key(got)}")
        rows.append({"mode": mask.mode, "mask": mask.key, "error": float(rms_diff(final, baseline_final).mean())})
    return rows
