"""The predictor fit: measured residual-reuse error against the sensitivity terms.

For every stored reference step r and lag k the store holds the measured RMS error of reusing
the block-stack residual `R_r` at step r + k (`cache_errors.residual_error`), the latent change
`dx = ‖x_{r+k} − x_r‖` and the timestep change `dt = |t_{r+k} − t_r|`. With the sensitivities of
step r, the rule's terms are ``u = J_x(t_r)·dx`` and ``v = J_t(t_r)·dt`` and the predictor is

    error ≈ a·u + b·v + c,      a, b, c ≥ 0.

The loss: Huber on *relative* residuals ``(y − ŷ)/y``, non-negative coefficients, solved by
iteratively reweighted non-negative least squares (scikit-learn's
``LinearRegression(positive=True)`` with Huber weights, the constant as a fourth non-negative
column so that c ≥ 0 too). Why:

* relative, because the errors span orders of magnitude across the trajectory and across lags,
  and the noise grows with the error; a plain squared loss would be fitted to the few largest
  (early, long-lag) errors, which the rule never comes near skipping, and ignore the small ones
  around the thresholds where decisions are made;
* Huber, because a few pairs are outliers (a near-zero error where the latent barely moved, a
  spike at a scheduler boundary) and a squared loss lets them pull the slope;
* non-negative by construction rather than clipped after an unconstrained fit, because clipping
  a negative coefficient to 0 leaves the others at values fitted for a model that no longer
  exists; each IRLS step is a constrained optimum of its weighted problem.

Quality of fit (R² on the raw scale, R² on the log scale, Spearman ρ) is measured on held-out
runs: the store's ``holdout`` split when it has one, otherwise leave-runs-out folds. The same
numbers are computed for the peer signals the store recorded per step (TeaCache's modulated
input change, the first-block residual change, MagCache's magnitude ratio), accumulated from r
to r + k the way each method accumulates them, so the report shows which predictor tracks the
caching error best.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

__all__ = [
    "PEER_SIGNALS",
    "PredictorFit",
    "SignalQuality",
    "accumulate_peer_signal",
    "compare_predictors",
    "fit_nonneg_huber",
    "fit_predictor",
]

logger = logging.getLogger(__name__)

#: Huber threshold on the relative residual: residuals beyond 35% of the error count linearly.
HUBER_DELTA = 0.35
#: Errors below this fraction of the median error are floored when forming relative residuals.
_REL_FLOOR = 1e-3

#: Peer signals that `collect` may record per step in `steps`, with how each method
#: accumulates them between its reference step and the current one: column -> (label, mode).
PEER_SIGNALS: dict[str, tuple[str, str]] = {
    "teacache_signal": ("TeaCache modulated-input change (sum)", "sum"),
    "first_block_change": ("first-block residual change (sum)", "sum"),
    "mag_ratio": ("MagCache ratio (accumulated |1 - product|)", "magcache"),
}


@dataclass(frozen=True)
class SignalQuality:
    """How well one signal tracks the measured residual-reuse error on held-out runs."""

    name: str
    r2: float | None
    r2_log: float | None
    spearman: float | None
    n: int
    coef: list[float] = field(default_factory=list)
    needs: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PredictorFit:
    """The fitted coefficients and their quality on held-out runs."""

    a: float
    b: float
    c: float
    r2: float | None
    r2_log: float | None
    spearman: float | None
    n_train: int
    n_test: int
    validation: str
    loss: str = f"huber(delta={HUBER_DELTA}) on relative residuals, non-negative IRLS"

    def predict(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.a * np.asarray(u) + self.b * np.asarray(v) + self.c

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_nonneg_huber(
    X: np.ndarray, y: np.ndarray, delta: float = HUBER_DELTA, iterations: int = 30
) -> np.ndarray:
    """Non-negative coefficients minimising a Huber loss on relative residuals ``(y − X·β)/y``.

    IRLS: each iteration solves a weighted non-negative least squares problem whose weights are
    ``w_j = ψ(r_j)/r_j / s_j²`` with ``s_j`` the (floored) size of the target and ``ψ`` Huber's
    influence function, i.e. 1 inside ``|r| ≤ δ`` and ``δ/|r|`` outside. Returns β (one per column).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
        raise ValueError(f"need X [n, m] and y [n] with n > 0, got {X.shape} and {y.shape}")
    floor = max(float(np.median(np.abs(y))) * _REL_FLOOR, 1e-12)
    scale = np.maximum(np.abs(y), floor)
    # Rescale columns so the solver sees comparable magnitudes; undone at the end.
    col = np.maximum(np.abs(X).max(axis=0), 1e-300)
    Xs = X / col
    robust = np.ones_like(y)
    beta = np.zeros(X.shape[1])
    for _ in range(iterations):
        w = robust / scale**2
        model = LinearRegression(positive=True, fit_intercept=False).fit(Xs, y, sample_weight=w)
        new = np.asarray(model.coef_, dtype=np.float64)
        r = np.abs(y - Xs @ new) / scale
        robust = np.where(r <= delta, 1.0, delta / np.maximum(r, 1e-300))
        if np.allclose(new, beta, rtol=1e-7, atol=1e-12):
            beta = new
            break
        beta = new
    return np.clip(beta / col, 0.0, None)


def _quality(y: np.ndarray, pred: np.ndarray) -> tuple[float | None, float | None, float | None]:
    if len(y) < 3:
        return None, None, None
    r2 = float(r2_score(y, pred))
    pos = (y > 0) & (pred > 0)
    r2_log = float(r2_score(np.log(y[pos]), np.log(pred[pos]))) if pos.sum() >= 3 else None
    if np.ptp(y) == 0 or np.ptp(pred) == 0:
        rho = None
    else:
        rho = float(spearmanr(y, pred).statistic)
        rho = None if not np.isfinite(rho) else rho
    return r2, r2_log, rho


def _folds(pairs: pd.DataFrame) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Train/test row masks: the holdout split if present, else leave-runs-out folds."""
    split = pairs["split"].astype(str).to_numpy() if "split" in pairs else np.full(len(pairs), "calib")
    test = split == "holdout"
    if test.any() and (~test).any():
        return [(~test, test)], "holdout split"
    runs = pairs["run_id"].to_numpy()
    unique = np.unique(runs)
    if len(unique) < 2:
        everything = np.ones(len(pairs), dtype=bool)
        return [(everything, everything)], "in-sample (one run only: no held-out runs to test on)"
    k = min(5, len(unique))
    groups = np.array_split(unique, k)
    folds = [(~np.isin(runs, g), np.isin(runs, g)) for g in groups]
    return folds, f"leave-runs-out, {k} folds over {len(unique)} runs"


def _fit_and_score(
    pairs: pd.DataFrame, columns: list[str], intercept: bool = True
) -> tuple[np.ndarray, tuple[float | None, float | None, float | None], int, int, str]:
    """Fit on every calib row; score out-of-fold (holdout or leave-runs-out)."""
    y = pairs["residual_error"].to_numpy(np.float64)
    X = pairs[columns].to_numpy(np.float64)
    if intercept:
        X = np.column_stack([X, np.ones(len(X))])
    folds, how = _folds(pairs)
    preds = np.full(len(y), np.nan)
    n_train = 0
    for train, test in folds:
        beta = fit_nonneg_huber(X[train], y[train])
        preds[test] = X[test] @ beta
        n_train = max(n_train, int(train.sum()))
    tested = ~np.isnan(preds)
    quality = _quality(y[tested], preds[tested])
    split = pairs["split"].astype(str).to_numpy() if "split" in pairs else np.full(len(pairs), "calib")
    train_rows = split != "holdout"
    beta = fit_nonneg_huber(X[train_rows], y[train_rows])
    return beta, quality, n_train, int(tested.sum()), how


def fit_predictor(pairs: pd.DataFrame) -> PredictorFit:
    """Fit ``a, b, c ≥ 0`` on `pairs` (columns ``run_id, split, u, v, residual_error``).

    The returned coefficients are fitted on every non-holdout row; R², R² (log) and Spearman ρ
    come from held-out runs (see the module docstring).
    """
    usable = _usable(pairs, ["u", "v"])
    beta, (r2, r2_log, rho), n_train, n_test, how = _fit_and_score(usable, ["u", "v"])
    a, b, c = (float(x) for x in beta)
    logger.info("predictor: a=%.4g b=%.4g c=%.4g, held-out R²=%s ρ=%s (%s)", a, b, c, _fmt(r2), _fmt(rho), how)
    return PredictorFit(a, b, c, r2, r2_log, rho, n_train, n_test, how)


def _usable(pairs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    keep = np.isfinite(pairs["residual_error"].to_numpy(np.float64))
    for col in columns:
        keep &= np.isfinite(pairs[col].to_numpy(np.float64))
    return pairs.loc[keep]


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def accumulate_peer_signal(steps: pd.DataFrame, pairs: pd.DataFrame, column: str, mode: str) -> np.ndarray:
    """The peer signal between each pair's reference step r and step r + k, per the peer's rule.

    `steps` holds the per-step signal ``s_j`` (the change from step j − 1 to step j, or MagCache's
    ratio at step j). ``sum`` (TeaCache, first-block cache): ``Σ_{j=r+1}^{r+k} s_j``.
    ``magcache``: ``Σ_{m=1}^{k} |1 − Π_{j=r+1}^{r+m} s_j|`` (MagCache's accumulated error).
    NaN where a step in the range has no value.
    """
    table = steps.pivot_table(index="run_id", columns="step", values=column, aggfunc="first")
    out = np.full(len(pairs), np.nan)
    runs = pairs["run_id"].to_numpy()
    ref = pairs["step"].to_numpy(int)
    lag = pairs["lag"].to_numpy(int)
    for j, (run, r, k) in enumerate(zip(runs, ref, lag)):
        if run not in table.index:
            continue
        row = table.loc[run]
        values = np.array([row.get(s, np.nan) for s in range(r + 1, r + k + 1)], dtype=np.float64)
        if values.size == 0 or not np.all(np.isfinite(values)):
            continue
        if mode == "magcache":
            out[j] = float(np.abs(1.0 - np.cumprod(values)).sum())
        else:
            out[j] = float(np.abs(values).sum())
    return out


def compare_predictors(pairs: pd.DataFrame, steps: pd.DataFrame | None, fit: PredictorFit) -> list[SignalQuality]:
    """Held-out quality of the fitted score, the paper's score and every recorded peer signal.

    Each peer signal gets the same treatment as the score (a non-negative linear map fitted with
    the same loss, scored on held-out runs), so the comparison is of signals, not of scalings.
    """
    usable = _usable(pairs, ["u", "v"])
    rows = [
        SignalQuality("sencache (fitted a, b, c)", fit.r2, fit.r2_log, fit.spearman, fit.n_test, [fit.a, fit.b, fit.c]),
    ]
    paper = (usable["u"] + usable["v"]).to_numpy(np.float64)
    folds, _ = _folds(usable)
    test = np.zeros(len(usable), dtype=bool)
    for _, t in folds:
        test |= t
    r2, r2_log, rho = _quality(usable["residual_error"].to_numpy(np.float64)[test], paper[test])
    rows.append(SignalQuality("sencache paper (a=b=1, c=0)", r2, r2_log, rho, int(test.sum()), [1.0, 1.0, 0.0]))
    if steps is not None and len(steps):
        seen: set[str] = set()
        for column, (label, mode) in PEER_SIGNALS.items():
            if column not in steps.columns or label in seen:
                continue
            peer = usable.copy()
            peer["signal"] = accumulate_peer_signal(steps, usable, column, mode)
            peer = _usable(peer, ["signal"])
            if len(peer) < 3:
                continue
            seen.add(label)
            beta, (r2, r2_log, rho), _, n_test, _ = _fit_and_score(peer, ["signal"])
            needs = "block 0 computed at every step" if "first-block" in label else ""
            rows.append(SignalQuality(label, r2, r2_log, rho, n_test, [float(x) for x in beta], needs))
    for row in rows:
        logger.info("  %-45s held-out ρ=%s R²=%s", row.name, _fmt(row.spearman), _fmt(row.r2))
    return rows
