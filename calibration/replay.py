"""Replay: score a candidate operating point on stored trajectories, with no model run.

A real checkpoint cannot afford a re-run per trial, so replay is the fit large models get, and it
must rank candidates as re-runs do. Each step's decision is taken by `sencache.rule.decide`
itself, fed the stored latent and timestep changes from the reference step, so replay and the
runtime cannot disagree about *what* is skipped. What a skip costs in final error:

* **the point's own reuse mode's error** — ``e_m(r, k)`` from `reuse_errors`, the measured output
  error of mode m (plain reuse, the linear residual forecast, the module-level Taylor forecast)
  reusing step r at step r + k; a store without `reuse_errors` gives every mode the plain-reuse
  error (`cache_errors.residual_error`), and the trust report says so. The store measures a
  forecast from r and r − 1; at inference the forecast's second point is the previous *computed*
  step, which is r − 1 only when that step computed (`calibration.replay_trust` notes it).
* **its propagation to the final output** — the gain G_m(p) measured by the runs of
  `collect --propagation` that skip step p alone with mode m: per run where the run has its own
  measured positions (the gain varies between samples), else plain reuse's curve, else the
  median curve over runs, else 1. A gain per mode because each mode's error points its own way:
  a toy-wan "taylor" skip replayed with plain reuse's gain came to 0.43–0.76 of its re-run.
* **skips past the store's largest lag K** (a static schedule may leave longer gaps than K
  allows a score-driven point): ``e(r, K)·(lag/K)^γ_m``, the largest measured lag's error grown
  at the rate the store's own two largest lags show for that mode: γ_m = log(e(K)/e(K−1)) /
  log(K/(K−1)), the median over every run and step, kept in [1, 3] (`tail_exponents`). Plain
  reuse grows about linearly (toy-wan 1.05); a forecast's error grows faster (1.40–1.42), and
  growing it linearly put static forecast points too low: ρ against re-runs 0.907 with γ = 1,
  0.938 with the measured γ over 30 toy-wan candidates (`benchmarks/replay_vs_rerun.py`).
* **how the skips add up** (`COMPOUNDING`): ``"segments"`` (default): the skips of one reference
  reuse the same stale value, so their errors point the same way and add linearly within the run
  of skips; runs of skips from different references are independent and add in quadrature.
  ``"linear"`` sums every skip (the earlier rule) and ``"quadrature"`` adds every skip in
  quadrature; `benchmarks/replay_vs_rerun.py` measures all three against re-runs.
* **the compounding, calibrated** (`SegmentCorrection`, `fit_corrections`): "segments" put a
  forecast's masks with long runs of skips at 0.6–0.8 of their re-runs and masks of single skips at
  1.0–1.7× (toy-cogvideox), so replay fits preferred long runs. Where the store holds whole masks
  really run (`mask_errors`, `collect --mask-runs`, drawn as the search draws static candidates),
  each mode's rule becomes ``(Σ_runs (L^β·run sum)^q)^(1/q)``, L the run's skips, with β and q
  fitted by least squares on log(re-run ÷ replay) over those masks. A mask of one skip keeps its
  exact replay (L = 1, one run), whatever β and q: the gain already makes it exact, and the
  masks calibrate only how skips combine. β > 0 weighs long runs of skips up (a stale reference
  drifts further than the sum of its single skips says); q < 2 makes separate runs add more than
  in quadrature (their errors partly point the same way), q > 2 less (the denoiser damps each
  before the next). On the toys' stores β came out 0–0.2 and q 1.25–3.5, mostly below 2.
* **measured masks and their neighbours** (`measured_masks`, `local_moves`): where a point makes,
  on one run in one mode, a mask the store re-ran there (the anchors, the drawn masks), its error
  is the measured one. A mask within `local_moves` one-step moves of a measured mask (symmetric
  difference ≤ 2·`local_moves` steps; the nearest such) takes its estimate scaled by that mask's
  measured ÷ estimated error on the same run (not a mask of one skip, which replays exactly as it
  is). Without the scaling a neighbour's estimate was
  compared with its anchor's *measurement*, so replay's bias at that mask decided the comparison:
  a static refinement that starts at an anchor never left one replay overrates, and left for any
  neighbour replay underrates. Scaled, the two are compared estimate against estimate. On one-step
  neighbours of the anchors re-run on the calibration runs, the RMS of log(replay ÷ re-run) fell
  from 0.21–0.68 to 0.02–0.24, and from 0.27–0.65 to 0.06–0.48 at two moves
  (`benchmarks/neighbor_masks.py`); far from any measured mask the ratio of the nearest one did
  not help (its scatter is the mask's own), so it is not used there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from calibration.objectives import Evaluation, rule_params_for
from policies import OperatingPoint, Predictor, SensitivityTable
from sencache.rule import RuleParams, decide

__all__ = ["COMPOUNDING", "LOCAL_MOVES", "ReplayObjective", "SegmentCorrection", "compound", "compound_runs", "fit_corrections",
           "tail_exponent"]

COMPOUNDING = ("segments", "linear", "quadrature")
#: one-step moves within which a mask takes its nearest measured mask's measured ÷ estimated ratio
LOCAL_MOVES = 2
#: the range a measured tail exponent is kept in (linear growth at least; no runaway from noise)
TAIL_EXPONENT_RANGE = (1.0, 3.0)


def tail_exponent(errs: list[np.ndarray]) -> float:
    """How a mode's error grows with the lag at the store's largest lags: the median over runs
    and steps of log(e(K)/e(K−1)) / log(K/(K−1)) from arrays [B, N, K+1] (one per step count, the
    same K), within `TAIL_EXPONENT_RANGE`; 1 (linear) when K < 2 or nothing is measured at both lags."""
    top = errs[0].shape[2] - 1 if errs else 0
    if top < 2:
        return 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.concatenate([(e[:, :, top] / e[:, :, top - 1]).ravel() for e in errs])
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    if ratio.size == 0:
        return 1.0
    gamma = float(np.log(np.median(ratio)) / np.log(top / (top - 1)))
    return float(np.clip(gamma, *TAIL_EXPONENT_RANGE))


@dataclass
class _ReplayGroup:
    """Runs of one step count, as arrays: timesteps [B, N], dx/dt [B, N, L+1] and per mode the
    error [B, N, L+1] by (ref, lag), the propagation gain [B, N] by step."""

    num_steps: int
    run_ids: list
    timesteps: np.ndarray
    dx: np.ndarray
    dt: np.ndarray
    err: dict[str, np.ndarray]
    #: per reuse mode, the gain [B, N] (a mode the store has no gain for carries plain reuse's)
    gain: dict[str, np.ndarray]
    #: the residual change per step at each step [B, N] (‖R_r − R_{r−1}‖; NaN: not stored)
    residual_change: np.ndarray | None = None


class _MeasuredMask(NamedTuple):
    """A mask the store re-ran on one run in one mode, and its measured final error."""

    computed: frozenset[int]
    error: float


class SegmentCorrection(NamedTuple):
    """One reuse mode's calibrated "segments" rule: final error = (Σ (L^length_exponent·run sum)^norm)
    ^(1/norm) over the runs of skips, L a run's skipped steps; fitted on `masks` whole-mask re-runs.
    The identity (exponent 0, norm 2) is the uncalibrated rule."""

    length_exponent: float = 0.0
    norm: float = 2.0
    masks: int = 0


#: the grids `fit_corrections` searches (least squares over a grid: robust, no optimiser)
LENGTH_EXPONENTS = np.round(np.linspace(-1.0, 2.0, 31), 3)
NORMS = np.round(np.linspace(1.0, 6.0, 21), 3)
#: whole masks a mode needs before its compounding is calibrated
MIN_MASKS = 4


def compound(contributions: np.ndarray, segment: np.ndarray, rule: str, skipped: np.ndarray | None = None,
             correction: SegmentCorrection | None = None) -> np.ndarray:
    """Final error per run from per-step contributions G·e [B, N] (0 where the step computed) and
    each step's segment id [B, N] (the reference it reused), by `rule` (`COMPOUNDING`); under
    "segments" a `correction` weighs each run of skips by its length (the skipped steps [B, N])."""
    if rule == "linear":
        return contributions.sum(axis=1)
    if rule == "quadrature":
        return np.sqrt((contributions**2).sum(axis=1))
    if rule != "segments":
        raise ValueError(f"compounding must be one of {COMPOUNDING}, got {rule!r}")
    corrected = correction is not None and skipped is not None
    out = np.zeros(contributions.shape[0])
    for b in range(contributions.shape[0]):
        sums = np.bincount(segment[b], weights=contributions[b], minlength=contributions.shape[1])
        if corrected:
            lengths = np.bincount(segment[b], weights=skipped[b].astype(np.float64), minlength=contributions.shape[1])
            out[b] = compound_runs(sums[lengths > 0], lengths[lengths > 0], correction)
        else:
            out[b] = float(np.sqrt((sums**2).sum()))
    return out


def _gains(runs: list, n: int, gains: np.ndarray | None, positions: np.ndarray | None,
           run_gains: pd.DataFrame | None, modes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per mode the gain [B, N]: each run's own measured curve of that mode where it has one (two
    positions or more), else its plain-reuse curve, else the median curve `gains`."""
    p = np.arange(n) / max(n - 1, 1)
    median = np.ones(n) if gains is None else np.interp(p, positions, gains)
    base = np.tile(median, (len(runs), 1))
    if run_gains is None or run_gains.empty:
        return {m: base for m in modes}
    if "mode" not in run_gains:
        run_gains = run_gains.assign(mode="none")
    by_key = {key: df.sort_values("step") for key, df in run_gains.groupby(["run_id", "mode"])}

    def curves(mode: str, fallback: np.ndarray) -> np.ndarray:
        out = fallback.copy()
        for j, run in enumerate(runs):
            df = by_key.get((run, mode))
            if df is not None and len(df) >= 2:
                out[j] = np.interp(p, df["step"].to_numpy(np.float64) / max(n - 1, 1), df["gain"].to_numpy(np.float64))
        return out

    plain = curves("none", base)
    return {m: plain if m == "none" else curves(m, plain) for m in modes}


class ReplayObjective:
    """Simulate the rule on stored trajectories (see the module docstring)."""

    kind = "replay"

    def __init__(
        self,
        table: SensitivityTable,
        steps: pd.DataFrame,
        cache_errors: pd.DataFrame,
        gains: np.ndarray | None = None,
        gain_positions: np.ndarray | None = None,
        reuse_errors: pd.DataFrame | None = None,
        run_gains: pd.DataFrame | None = None,
        compounding: str = "segments",
        corrections: dict[str, SegmentCorrection] | None = None,
        measured_masks: pd.DataFrame | None = None,
        local_moves: int = LOCAL_MOVES,
    ) -> None:
        """`steps`: ``run_id, step, timestep``; `cache_errors`: ``run_id, step, lag, dx, dt,
        residual_error``; `reuse_errors`: ``run_id, step, lag, mode, error``; `gains` at
        `gain_positions` (normalised p), plain reuse's median curve; `run_gains`: ``run_id, step,
        gain`` and optionally ``mode`` (a gain per reuse mode, store schema 3; absent: "none");
        `corrections`: per mode, the calibrated compounding (`fit_corrections`; absent: uncalibrated);
        `measured_masks`: ``run_id, mode, mask, error`` of whole masks really run, whose measured
        error replaces the estimate wherever a point makes that mask on that run in that mode, and
        scales the estimate of a mask within `local_moves` one-step moves of it (0: no scaling)."""
        if compounding not in COMPOUNDING:
            raise ValueError(f"compounding must be one of {COMPOUNDING}, got {compounding!r}")
        if cache_errors.empty:
            raise ValueError("replay needs stored cache errors")
        self.table = table
        self.compounding = compounding
        self.corrections: dict[str, SegmentCorrection] = dict(corrections or {})
        self.measured: dict[tuple[str, str, str], float] = {} if measured_masks is None or measured_masks.empty else {
            (str(r), str(m), str(k)): float(e) for r, m, k, e in zip(measured_masks["run_id"], measured_masks["mode"],
                                                                      measured_masks["mask"], measured_masks["error"])}
        if isinstance(local_moves, bool) or not isinstance(local_moves, int) or local_moves < 0:
            raise ValueError(f"local_moves must be a non-negative integer, got {local_moves!r}")
        self.local_moves = local_moves
        self._estimates: dict[tuple, float] = {}
        self._by_run_mode: dict[tuple[str, str], list[_MeasuredMask]] | None = None
        self.max_lag = int(cache_errors["lag"].max())
        self.modes = ("none",) if reuse_errors is None or reuse_errors.empty else \
            tuple(sorted(set(reuse_errors["mode"].astype(str)) | {"none"}))
        self.groups = self._groups(steps, cache_errors, reuse_errors, gains, gain_positions, run_gains)
        #: per mode, how its error grows past the largest measured lag (`tail_exponent`)
        self.tail_exponents = {m: tail_exponent([g.err[m] for g in self.groups]) for m in self.modes}

    def _groups(self, steps, errors, reuse, gains, positions, run_gains) -> list[_ReplayGroup]:
        n_of = steps.groupby("run_id")["step"].max() + 1
        lags = self.max_lag + 1
        by_run = {run: df for run, df in errors.groupby("run_id")}
        reuse_by = {} if reuse is None or reuse.empty else {key: df for key, df in reuse.groupby(["run_id", "mode"])}
        t_by_run = {run: df.sort_values("step")["timestep"].to_numpy(np.float64) for run, df in steps.groupby("run_id")}
        rc_by_run = {} if "residual_change" not in steps else {
            run: df.sort_values("step")["residual_change"].to_numpy(np.float64) for run, df in steps.groupby("run_id")}
        groups: list[_ReplayGroup] = []
        for n, runs in n_of.groupby(n_of):
            run_ids = [r for r in runs.index if r in by_run and len(t_by_run[r]) == n]
            if not run_ids:
                continue
            shape = (len(run_ids), n, lags)
            dx, dt = np.full(shape, np.nan), np.full(shape, np.nan)
            err = {m: np.full(shape, np.nan) for m in self.modes}
            for j, run in enumerate(run_ids):
                df = by_run[run]
                s, k = df["step"].to_numpy(int), df["lag"].to_numpy(int)
                ok = (s >= 0) & (s < n) & (k >= 1) & (k < lags)
                dx[j, s[ok], k[ok]] = df["dx"].to_numpy(np.float64)[ok]
                dt[j, s[ok], k[ok]] = df["dt"].to_numpy(np.float64)[ok]
                err["none"][j, s[ok], k[ok]] = df["residual_error"].to_numpy(np.float64)[ok]
                for mode in self.modes:
                    measured = reuse_by.get((run, mode))
                    if measured is None:
                        continue
                    s, k = measured["step"].to_numpy(int), measured["lag"].to_numpy(int)
                    ok = (s >= 0) & (s < n) & (k >= 1) & (k < lags)
                    err[mode][j, s[ok], k[ok]] = measured["error"].to_numpy(np.float64)[ok]
            timesteps = np.stack([t_by_run[r] for r in run_ids])
            gain = _gains(run_ids, int(n), gains, positions, run_gains, self.modes)
            change = np.stack([rc_by_run[r] if r in rc_by_run else np.full(n, np.nan) for r in run_ids])
            groups.append(_ReplayGroup(int(n), run_ids, timesteps, dx, dt, err, gain, change))
        if not groups:
            raise ValueError("no run has both per-step timesteps and cache errors")
        return groups

    def masks(self, predictor: Predictor, point: OperatingPoint) -> list[frozenset[int]]:
        """The steps `point` computes on each stored run (replay's decisions are the runtime's own)."""
        params, mode = rule_params_for(predictor, self.table, point), self._mode(point)
        out: list[frozenset[int]] = []
        for g in self.groups:
            steps: list = []
            _replay_group(params, g, g.err[mode], g.gain[mode], self.tail_exponents[mode], steps_out=steps)
            decided = np.stack(steps, axis=1)  # [B, N]
            out.extend(frozenset(int(i) for i in np.flatnonzero(row)) for row in decided)
        return out

    def usual_mask(self, predictor: Predictor, point: OperatingPoint) -> frozenset[int] | None:
        """The mask `point` computes on most stored runs: what it would be as a static schedule."""
        return _mode_mask(self.masks(predictor, point))

    def _mode(self, point: OperatingPoint) -> str:
        """The measured errors `point` is scored with: its own mode's, else plain reuse's."""
        return point.forecast if point.forecast in self.modes else "none"

    def evaluate(self, predictor: Predictor, point: OperatingPoint) -> Evaluation:
        params, mode = rule_params_for(predictor, self.table, point), self._mode(point)
        errors: list[float] = []
        nfes: list[float] = []
        correction = self.corrections.get(mode)
        for g in self.groups:
            decided: list = []
            contributions, segment, computed = _replay_group(params, g, g.err[mode], g.gain[mode],
                                                             self.tail_exponents[mode], steps_out=decided)
            skipped = ~np.stack(decided, axis=1)
            estimated = compound(contributions, segment, self.compounding, skipped, correction)
            errors.extend(self._measured_or_scaled(g, mode, skipped, estimated))
            nfes.extend(computed.tolist())
        return Evaluation(float(np.mean(errors)), float(np.mean(nfes)), errors, nfes)

    def _measured_or_scaled(self, g: _ReplayGroup, mode: str, skipped: np.ndarray, estimated: np.ndarray) -> list:
        """Each run's error: the store's measured one where the point makes a mask the store re-ran
        on that run in that mode; else replay's estimate, scaled by the nearest measured mask's
        measured ÷ estimated error where one lies within `local_moves` moves (module docstring)."""
        if not self.measured:
            return estimated.tolist()
        from calibration.mask_runs import mask_key

        out = []
        for b, run_id in enumerate(g.run_ids):
            computed = frozenset(int(i) for i in np.flatnonzero(~skipped[b]))
            exact = self.measured.get((str(run_id), mode, mask_key(computed)))
            # one skip replays exactly already (the gain is measured by skipping it alone)
            alone = int(skipped[b].sum()) <= 1
            near = None if exact is not None or alone else self._nearest_measured(str(run_id), mode, computed)
            own = None if near is None else self._static_estimate(g, b, mode, near.computed)
            if exact is not None:
                out.append(exact)
            elif own is not None and own > 0 and near.error > 0:
                out.append(float(estimated[b]) * near.error / own)
            else:
                out.append(float(estimated[b]))
        return out

    def _nearest_measured(self, run_id: str, mode: str, computed: frozenset[int]) -> _MeasuredMask | None:
        """The measured mask of this run and mode nearest `computed` (fewest steps in one and not
        the other; the first key on a tie) when within `local_moves` one-step moves, else None."""
        if self.local_moves <= 0:
            return None
        if self._by_run_mode is None:
            from calibration.mask_runs import parse_mask

            by: dict[tuple[str, str], list[_MeasuredMask]] = {}
            for (r, m, k), e in sorted(self.measured.items()):
                by.setdefault((r, m), []).append(_MeasuredMask(parse_mask(k), e))
            self._by_run_mode = by
        best = None
        for candidate in self._by_run_mode.get((run_id, mode), ()):
            distance = len(candidate.computed ^ computed)
            if distance <= 2 * self.local_moves and (best is None or distance < best[0]):
                best = (distance, candidate)
        return None if best is None else best[1]

    def _static_estimate(self, g: _ReplayGroup, b: int, mode: str, computed: frozenset[int]) -> float:
        """Replay's own estimate (no measured value) of the static mask `computed` on run b of `g`."""
        from calibration.mask_runs import mask_key

        correction = self.corrections.get(mode)
        key = (g.run_ids[b], mode, mask_key(computed), self.compounding, correction)
        if key not in self._estimates:
            contributions, ref, skipped = self._mask_contributions(g, b, mode, computed)
            self._estimates[key] = float(compound(contributions[None], ref[None], self.compounding, skipped[None],
                                                  correction)[0])
        return self._estimates[key]

    def _mask_contributions(self, g: _ReplayGroup, b: int, mode: str,
                            computed: frozenset[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A static mask on run b of `g` under `mode`: per step the contribution G·e (0 where it
        computes), the reference it reuses, and whether it skips."""
        mask = np.zeros(g.num_steps, dtype=bool)
        mask[[i for i in computed if 0 <= i < g.num_steps]] = True
        ref, lag = _references(mask)
        local = _local_errors(g.err[mode][b], g.dx.shape[2] - 1, ref, lag, self.tail_exponents[mode])
        return np.where(mask, 0.0, np.nan_to_num(local, nan=0.0) * g.gain[mode][b]), ref, ~mask

    def mask_segments(self, run_id: str, mode: str, computed: frozenset[int]) -> tuple[np.ndarray, np.ndarray] | None:
        """The runs of skips a static mask makes on one stored run under `mode`: per run of skips
        its uncorrected contribution sum and its length; None when the run is not replayed here."""
        for g in self.groups:
            if run_id not in g.run_ids:
                continue
            b, n = g.run_ids.index(run_id), g.num_steps
            mode = mode if mode in self.modes else "none"
            contributions, ref, skipped = self._mask_contributions(g, b, mode, computed)
            mask = ~skipped
            sums = np.bincount(ref[~mask], weights=contributions[~mask], minlength=n)
            lengths = np.bincount(ref[~mask], minlength=n)
            keep = lengths > 0
            return sums[keep], lengths[keep].astype(np.float64)
        return None


def _references(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per step of a mask (True: computed) the reference it reuses (the last computed step before
    it; its own index where it computes) and the lag from it (0 where it computes)."""
    idx = np.arange(len(mask))
    ref = np.maximum.accumulate(np.where(mask, idx, 0))
    previous = np.concatenate([[0], ref[:-1]])
    ref = np.where(mask, idx, previous)
    return ref, np.where(mask, 0, idx - ref)


def _local_errors(err: np.ndarray, top: int, ref: np.ndarray, lag: np.ndarray, tail: float) -> np.ndarray:
    """Per step, the measured error e(ref, lag) from one run's `err` [N, K+1], or past the largest
    lag `top` e(ref, top)·(lag/top)^tail (`tail_exponent`); NaN where unmeasured."""
    in_range = (lag >= 1) & (lag <= top)
    safe = np.where(in_range, lag, 0)
    beyond = err[ref, np.full(len(ref), top)] * (lag / max(top, 1)) ** tail
    return np.where(in_range, err[ref, safe], beyond)


def fit_corrections(replay: ReplayObjective, mask_errors: pd.DataFrame) -> dict[str, SegmentCorrection]:
    """Per reuse mode, the `SegmentCorrection` that makes replay's "segments" rule meet the stored
    whole-mask re-runs (`mask_errors`: ``run_id, mode, mask, error``) in least squares on
    log(re-run ÷ replay), over the grid `LENGTH_EXPONENTS` × `NORMS`. A mode with fewer than
    `MIN_MASKS` usable masks keeps the uncalibrated rule."""
    from calibration.mask_runs import parse_mask

    out: dict[str, SegmentCorrection] = {}
    if mask_errors is None or mask_errors.empty:
        return out
    for mode, rows in mask_errors.groupby("mode"):
        observed = []
        for run_id, key, error in zip(rows["run_id"], rows["mask"], rows["error"]):
            parts = replay.mask_segments(str(run_id), str(mode), parse_mask(str(key)))
            if parts is None or not (error > 0) or parts[0].sum() <= 0:
                continue
            observed.append((parts[0], parts[1], float(error)))
        if len(observed) < MIN_MASKS:
            continue
        log_real = np.log([o[2] for o in observed])
        best = None
        for beta in LENGTH_EXPONENTS:
            for q in NORMS:
                candidate = SegmentCorrection(float(beta), float(q))
                predicted = np.array([compound_runs(sums, lengths, candidate) for sums, lengths, _ in observed])
                loss = float(((log_real - np.log(np.maximum(predicted, 1e-30))) ** 2).sum())
                # ties (e.g. masks of one run of skips each, where q cannot matter) keep the plainer rule
                key = (round(loss, 12), abs(float(beta)), abs(float(q) - 2.0))
                if best is None or key < best[0]:
                    best = (key, float(beta), float(q))
        out[str(mode)] = SegmentCorrection(best[1], best[2], len(observed))
    return out


def compound_runs(sums: np.ndarray, lengths: np.ndarray, correction: SegmentCorrection) -> float:
    """One run's final error from its runs of skips (each run's contribution sum and length):
    (Σ (L^β·sum)^q)^(1/q); `SegmentCorrection()` (β = 0, q = 2) is the uncalibrated "segments"."""
    return _norm(np.asarray(sums, dtype=np.float64) * np.asarray(lengths, dtype=np.float64) ** correction.length_exponent,
                 correction.norm)


def _norm(values: np.ndarray, q: float) -> float:
    """(Σ |v|^q)^(1/q), scaled by the largest |v| so a large q neither overflows nor underflows."""
    values = np.abs(np.asarray(values, dtype=np.float64))
    top = float(values.max()) if values.size else 0.0
    if top <= 0:
        return 0.0
    return top * float(((values / top) ** q).sum() ** (1.0 / q))


def _mode_mask(masks: list[frozenset[int]]) -> frozenset[int] | None:
    """The most common of `masks` (the first on a tie), or None."""
    from collections import Counter

    return Counter(masks).most_common(1)[0][0] if masks else None


def _replay_group(params: RuleParams, g: _ReplayGroup, err: np.ndarray, gain: np.ndarray,
                  tail: float = 1.0, steps_out: list | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run `decide` step by step for every run of the group; returns the per-step contributions
    G·e [B, N], each step's reference [B, N] and the fraction computed [B].

    The rule sees ``x = [dx]`` against ``ref_x = [0]``, whose RMS difference is exactly the stored
    ``‖x_i − x_r‖``; the timesteps are the stored ones, and the residual-change term reads the
    stored ``‖R_r − R_{r−1}‖`` carried over the lag (the runtime's r' is its previous *computed*
    step, the change per step alike). A lag the store does not cover gives a NaN
    score, which never passes ``S ≤ ε``, so the step computes.
    """
    b, n = g.timesteps.shape
    rows = np.arange(b)
    ref = np.zeros(b, dtype=int)
    computed = np.zeros(b)
    contributions = np.zeros((b, n))
    segment = np.zeros((b, n), dtype=int)
    ref_t = skips = None
    zeros = torch.zeros(b, 1, dtype=torch.float64)
    for i in range(n):
        lag = i - ref
        in_range = (lag >= 1) & (lag < g.dx.shape[2])
        safe = np.where(in_range, lag, 0)
        dx = np.where(in_range, g.dx[rows, ref, safe], np.nan)
        t_now = torch.from_numpy(g.timesteps[:, i].copy())
        change = None if g.residual_change is None else g.residual_change[rows, ref] * lag
        decision = decide(params, i, n, torch.from_numpy(dx.reshape(b, 1)), t_now,
                          None if ref_t is None else zeros, ref_t, skips, change)
        compute = decision.compute.numpy()
        skipped = ~compute
        if skipped.any():
            # a static schedule may skip past the store's largest lag K: extrapolate e(r, K)·(lag/K)^γ
            top = g.dx.shape[2] - 1
            beyond = err[rows, ref, np.full(b, top)] * (lag / max(top, 1)) ** tail
            local = np.where(skipped, np.where(in_range, err[rows, ref, safe], beyond), 0.0)
            contributions[:, i] = np.nan_to_num(local, nan=0.0) * gain[:, i]
        segment[:, i] = ref
        computed += compute
        if steps_out is not None:
            steps_out.append(compute.copy())
        ref = np.where(compute, i, ref)
        ref_t = torch.from_numpy(g.timesteps[rows, ref].copy())
        prev = np.zeros(b, dtype=np.int64) if skips is None else skips.numpy()
        skips = torch.from_numpy(np.where(compute, 0, prev + 1).astype(np.int64))
    return contributions, segment, computed / n
