"""One predictor per reuse mode: the error of plain reuse and of a forecast are different quantities.

For every computed step r, lag k and reuse mode the store holds the measured error of what that
mode reuses at step r + k (`reuse_errors`). Each mode gets its own non-negative robust fit
(`calibration.regression.fit_nonneg_huber`, the same loss as the paper score's fit) of

    error ≈ a·J_x(t_r)·dx + b·J_t(t_r)·dt + d·J_t(t_r)·dt² + c,

the terms the runtime computes (`sencache.rule`). A forecast removes the first-order change of
the residual, so what is left grows like the gap squared: ``dt²`` is the term that can carry it.

Each fit is judged on held-out runs by Spearman ρ and R² (pooled over steps and lags) and by
the **within-step ranking**: for each (step, lag), Spearman ρ across the samples, averaged. A
pooled fit can drop the per-sample term (a = 0) and still score well, because the timestep
explains most of the pooled variance; the within-step ρ says whether the score can tell one
sample from another at the same step, which is what a per-sample decision needs. The paper
score (a = b = 1, c = d = 0) is measured on the same rows, and a mode whose fitted ρ falls below
it is flagged (`below_paper`).

Where the pooled fit drops the per-sample term (a ≈ 0: on toy-cogvideox and toy-ltx, plain
reuse), the score is a function of the timestep alone and no threshold on it can decide per
sample, although J_x·dx still ranks samples within a step there. Such a mode keeps a weight taken
from the within-(step, lag) variation alone (a two-stage, fixed-effects fit: a from the samples'
deviations from their step's mean, then b, d, c refit on what is left), shrunk until the pooled
leave-runs-out ρ on the calibration runs stays within `RHO_SLACK` of the a = 0 fit's
(`_per_sample_weight`); the holdout runs judge the result as they judge every fit.

The residual change ``‖R_r − R_{r−1}‖`` (`steps.residual_change`), carried over the lag, is the
fourth term, weight e: the sample's own change between its last two computed residuals, which
the runtime tracks at no model cost (`sencache.residual_change`). It is what a forecast
extrapolates, so it tells where a forecast will miss: on toy-wan it lifts the forecast modes'
held-out ρ from 0.86 to 0.96. It is offered only on request (`fit --residual-change`: toy-wan's
shipped policy uses it; refits with it trade quality between compute fractions, docs/experiments.md), and a mode then keeps it
only where it lifts the held-out ρ by `RC_MIN_GAIN` on the rows that have it (a reference with
no computed step before it has none); `with_residual_change` records both fits either way.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from calibration.regression import _folds, _quality, fit_nonneg_huber
from policies import Predictor, SensitivityTable

__all__ = ["ModeFit", "TERMS", "below_paper", "fit_modes", "mode_pairs", "within_step_spearman"]

logger = logging.getLogger(__name__)

#: the predictor's terms (columns of `mode_pairs`) and the coefficient each one fits
TERMS = {"u": "a", "v": "b", "v2": "d"}
#: the residual-change term and its coefficient, kept where it lifts held-out ρ by `RC_MIN_GAIN`
CANDIDATE = "rc"
RC_WEIGHT = "e"
RC_MIN_GAIN = 0.005
#: shrink factors tried, largest first, for the within-step weight of a mode whose pooled a = 0
SHRINKS = (1.0, 0.5, 0.2, 0.1, 0.05)
#: below this share of the mean score the pooled fit's per-sample term counts as dropped
MIN_PER_SAMPLE_SHARE = 0.01
#: how much pooled ρ (leave-runs-out, calibration runs) the per-sample weight may cost
RHO_SLACK = 0.01

Fitter = Callable[[pd.DataFrame, np.ndarray, np.ndarray], np.ndarray]


def _pooled(rows: pd.DataFrame, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    return fit_nonneg_huber(X, y)


def within_step_weight(rows: pd.DataFrame) -> float:
    """The weight of u from its variation within each (step, lag) alone: the least-squares slope of
    the samples' error deviations on their u deviations, each group weighted by 1 / its mean error²
    (relative errors, as the pooled fit); >= 0."""
    group = rows.groupby(["step", "lag"])
    y = rows["error"].to_numpy(np.float64)
    u = rows["u"].to_numpy(np.float64)
    dy = y - group["error"].transform("mean").to_numpy(np.float64)
    du = u - group["u"].transform("mean").to_numpy(np.float64)
    w = 1.0 / np.maximum(group["error"].transform("mean").to_numpy(np.float64), 1e-12) ** 2
    return max(0.0, float((w * du * dy).sum() / max(float((w * du * du).sum()), 1e-300)))


def _fixed_weight(a: float) -> Fitter:
    """A fitter that keeps u's weight at `a` and fits b, d, c on ``error − a·u`` (X: u, v, v2, 1)."""
    def fit(rows: pd.DataFrame, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.concatenate([[a], fit_nonneg_huber(X[:, 1:], y - a * X[:, 0])])
    return fit


def _per_sample_weight(rows: pd.DataFrame) -> tuple[Fitter, dict[str, Any]]:
    """The pooled fitter, or, when it sets a ≈ 0 on the calibration runs (a·u below
    `MIN_PER_SAMPLE_SHARE` of the mean score) while u ranks samples
    within a step, a fixed-weight fitter (see the module docstring) and what was tried."""
    calib = rows[rows["split"].astype(str).to_numpy() != "holdout"].reset_index(drop=True)
    X = np.column_stack([calib[list(TERMS)].to_numpy(np.float64), np.ones(len(calib))])
    y = calib["error"].to_numpy(np.float64)
    if len(calib) < 3:
        return _pooled, {}
    beta = _pooled(calib, X, y)
    share = float(np.mean(beta[0] * X[:, 0]) / max(float(np.mean(X @ beta)), 1e-300))
    if share >= MIN_PER_SAMPLE_SHARE:
        return _pooled, {}
    u_rank = within_step_spearman(calib, calib["u"].to_numpy(np.float64))
    weight = within_step_weight(calib)
    record: dict[str, Any] = {"pooled_a": float(beta[0]), "pooled_share": share, "u_within_step_spearman": u_rank, "within_step_weight": weight}
    if u_rank is None or u_rank <= 0 or weight <= 0 or calib["run_id"].nunique() < 2:
        return _pooled, {**record, "kept": False}
    calib = calib.assign(split="calib")  # leave-runs-out folds over the calibration runs only
    base = _scores(calib, _held_out(calib, list(TERMS), _pooled)[0])["spearman"]
    for shrink in SHRINKS:
        fitter = _fixed_weight(weight * shrink)
        rho = _scores(calib, _held_out(calib, list(TERMS), fitter)[0])["spearman"]
        if base is None or (rho is not None and rho >= base - RHO_SLACK):
            return fitter, {**record, "kept": True, "shrink": shrink, "calib_spearman": rho, "calib_spearman_a0": base}
    return _pooled, {**record, "kept": False, "calib_spearman_a0": base}


@dataclass(frozen=True)
class ModeFit:
    """One reuse mode's fitted predictor and its held-out quality beside the paper score's."""

    mode: str
    a: float
    b: float
    c: float
    d: float
    r2: float | None
    r2_log: float | None
    spearman: float | None
    within_step_spearman: float | None
    n_train: int
    n_test: int
    validation: str
    #: weight of the residual-change term (0: left out, see `with_residual_change`)
    e: float = 0.0
    paper: dict[str, float | None] = field(default_factory=dict)
    with_residual_change: dict[str, float | None] = field(default_factory=dict)
    per_sample_weight: dict[str, Any] = field(default_factory=dict)  # `_per_sample_weight`'s record

    @property
    def below_paper(self) -> bool:
        """True when the fitted score ranks held-out errors worse than the paper score does."""
        paper = self.paper.get("spearman")
        return self.spearman is not None and paper is not None and self.spearman < paper - 1e-9

    def predictor(self) -> Predictor:
        r2 = None if self.r2 is None else min(self.r2, 1.0)
        return Predictor(self.a, self.b, self.c, r2, self.spearman, d=self.d, e=self.e)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["below_paper"] = self.below_paper
        return out


def mode_pairs(steps: pd.DataFrame, runs: pd.DataFrame, cache_errors: pd.DataFrame, reuse_errors: pd.DataFrame,
               table: SensitivityTable) -> pd.DataFrame:
    """One row per (run, step r, lag k, mode): the terms u, v, v2, rc and the measured `error`.

    A store without `reuse_errors` rows gives mode "none" from `cache_errors.residual_error`.
    """
    base = cache_errors[["run_id", "step", "lag", "dx", "dt", "residual_error"]]
    if reuse_errors is None or reuse_errors.empty:
        pairs = base.assign(mode="none", error=base["residual_error"])
    else:
        pairs = reuse_errors[["run_id", "step", "lag", "mode", "error"]].merge(
            base, on=["run_id", "step", "lag"], how="inner")
    cols = ["run_id", "step", "timestep"] + (["residual_change"] if "residual_change" in steps else [])
    pairs = pairs.merge(steps[cols], on=["run_id", "step"], how="left")
    pairs = pairs.merge(runs[["run_id", "split", "num_steps"]], on="run_id", how="left")
    jx, jt = table.interpolate(pairs["timestep"].to_numpy(np.float64))
    dt = pairs["dt"].to_numpy(np.float64)
    pairs["u"] = np.asarray(jx) * pairs["dx"].to_numpy(np.float64)
    pairs["v"] = np.asarray(jt) * dt
    pairs["v2"] = np.asarray(jt) * dt**2
    rc = pairs["residual_change"].to_numpy(np.float64) if "residual_change" in pairs else np.full(len(pairs), np.nan)
    pairs["rc"] = rc * pairs["lag"].to_numpy(np.float64)  # the change per step, over k steps
    return pairs


def within_step_spearman(pairs: pd.DataFrame, pred: np.ndarray, min_samples: int = 3) -> float | None:
    """Spearman ρ of `pred` against `error` across samples within each (step, lag), averaged
    (weighted by the group's size); None when no group has `min_samples` distinct samples."""
    frame = pairs[["step", "lag", "error"]].assign(pred=pred)
    total = weight = 0.0
    for _, g in frame.groupby(["step", "lag"]):
        if len(g) < min_samples or np.ptp(g["error"]) == 0 or np.ptp(g["pred"]) == 0:
            continue
        rho = spearmanr(g["error"], g["pred"]).statistic
        if np.isfinite(rho):
            total += float(rho) * len(g)
            weight += len(g)
    return None if weight == 0 else total / weight


def _held_out(pairs: pd.DataFrame, columns: list[str], fitter: Fitter = _pooled) -> tuple[np.ndarray, np.ndarray, int, str]:
    """Out-of-fold predictions (holdout split, else leave-runs-out) and the all-calib coefficients."""
    y = pairs["error"].to_numpy(np.float64)
    X = np.column_stack([pairs[columns].to_numpy(np.float64), np.ones(len(pairs))])
    folds, how = _folds(pairs)
    preds = np.full(len(y), np.nan)
    n_train = 0
    for train, test in folds:
        preds[test] = X[test] @ fitter(pairs[train], X[train], y[train])
        n_train = max(n_train, int(train.sum()))
    train_rows = pairs["split"].astype(str).to_numpy() != "holdout"
    return preds, fitter(pairs[train_rows], X[train_rows], y[train_rows]), n_train, how


def _scores(pairs: pd.DataFrame, pred: np.ndarray) -> dict[str, float | None]:
    tested = np.isfinite(pred)
    r2, r2_log, rho = _quality(pairs["error"].to_numpy(np.float64)[tested], pred[tested])
    return {"r2": r2, "r2_log": r2_log, "spearman": rho,
            "within_step_spearman": within_step_spearman(pairs[tested], pred[tested])}


def _usable(pairs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    keep = np.isfinite(pairs["error"].to_numpy(np.float64)) & (pairs["error"].to_numpy(np.float64) >= 0)
    for col in columns:
        keep &= np.isfinite(pairs[col].to_numpy(np.float64))
    return pairs.loc[keep]


def fit_one_mode(pairs: pd.DataFrame, mode: str, residual_change: bool = False) -> ModeFit:
    """Fit `mode`'s predictor on its rows of `pairs` and measure it (see the module docstring);
    `residual_change` False measures the residual-change term but never keeps it."""
    rows = _usable(pairs[pairs["mode"] == mode], list(TERMS)).reset_index(drop=True)
    if len(rows) < 3:
        raise ValueError(f"reuse mode {mode!r}: {len(rows)} usable error rows, too few to fit a predictor")
    fitter, per_sample = _per_sample_weight(rows)
    preds, beta, n_train, how = _held_out(rows, list(TERMS), fitter)
    quality = _scores(rows, preds)
    tested = np.isfinite(preds)
    paper = _scores(rows, np.where(tested, rows["u"] + rows["v"], np.nan))
    candidate: dict[str, Any] = {}
    e = 0.0
    with_rc = _usable(rows, [CANDIDATE]).reset_index(drop=True)
    if len(with_rc) >= 3:
        rc_preds, rc_beta, rc_train, _ = _held_out(with_rc, list(TERMS) + [CANDIDATE])
        candidate = _scores(with_rc, rc_preds)
        candidate["without"] = _scores(with_rc, _held_out(with_rc, list(TERMS), fitter)[0])["spearman"]
        gain = None if candidate["spearman"] is None or candidate["without"] is None else \
            candidate["spearman"] - candidate["without"]
        candidate["offered"] = residual_change
        candidate["kept"] = bool(residual_change and gain is not None and gain >= RC_MIN_GAIN and rc_beta[3] > 0)
        if candidate["kept"]:  # the rows without a change (no earlier computed step) compute at runtime
            rows, preds, n_train = with_rc, rc_preds, rc_train
            quality = {k: candidate[k] for k in ("r2", "r2_log", "spearman", "within_step_spearman")}
            tested = np.isfinite(preds)
            paper = _scores(rows, np.where(tested, rows["u"] + rows["v"], np.nan))
            beta, e = np.delete(rc_beta, 3), float(rc_beta[3])
    a, b, d, c = (float(x) for x in beta)
    fit = ModeFit(mode, a, b, c, d, quality["r2"], quality["r2_log"], quality["spearman"],
                  quality["within_step_spearman"], n_train, int(tested.sum()), how, e=e,
                  paper={k: paper[k] for k in ("spearman", "r2", "within_step_spearman")},
                  with_residual_change=candidate, per_sample_weight=per_sample)
    logger.info("predictor %-6s a=%.4g b=%.4g d=%.4g e=%.4g c=%.4g  held-out ρ=%s R²=%s within-step ρ=%s "
                "(paper ρ=%s within-step %s)", mode, a, b, d, e, c, _fmt(fit.spearman), _fmt(fit.r2),
                _fmt(fit.within_step_spearman), _fmt(paper["spearman"]), _fmt(paper["within_step_spearman"]))
    if fit.below_paper:
        logger.warning("predictor %s: held-out ρ %.3f is below the paper score's %.3f on the same errors",
                       mode, fit.spearman, paper["spearman"])
    return fit


def fit_modes(pairs: pd.DataFrame, modes: tuple[str, ...], residual_change: bool = False) -> dict[str, ModeFit]:
    """A `ModeFit` for every mode of `modes` that the pairs measure (`fit_one_mode`)."""
    present = set(pairs["mode"].astype(str).unique())
    return {m: fit_one_mode(pairs, m, residual_change) for m in modes if m in present}


def below_paper(fits: dict[str, ModeFit]) -> list[str]:
    """The modes whose fitted predictor ranks held-out errors worse than the paper score."""
    return [m for m, f in fits.items() if f.below_paper]


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
