"""What `sensitivity.ipynb` shows: how well the sensitivity score predicts the caching error.

The notebook is a few calls into this module so that the analysis is code that can be read,
linted and tested, not text inside a notebook generator. `load_sensitivity` reads a store into
one `SensitivityData`; the `plot_*` functions each draw one section and return the figure
(never shown here: the caller decides where it goes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from calibration.analysis.style import color, finish, positive_log

__all__ = [
    "SensitivityData",
    "load_sensitivity",
    "per_run_table",
    "plot_per_sample",
    "plot_propagation",
    "plot_score_vs_error",
    "plot_sensitivities",
    "score_pairs",
    "spearman",
]


@dataclass
class SensitivityData:
    """One store's tables joined for plotting, restricted to one estimator.

    `steps` and `sens` carry the step position ``p = i / (N - 1)`` (the axis every policy is
    written in) and the run's split; `errors` are the measured caching errors as stored.
    """

    path: Path
    estimator: str
    meta: dict[str, str]
    runs: pd.DataFrame
    steps: pd.DataFrame
    sens: pd.DataFrame
    errors: pd.DataFrame
    prop: pd.DataFrame

    def summary(self) -> str:
        """One line: runs, model, fingerprint, estimator, number of measured errors."""
        return (f"{self.path}: {len(self.runs)} run(s) of {self.runs['model_name'].iloc[0]} "
                f"(fingerprint {self.meta.get('model_fingerprint')}), estimator {self.estimator!r}, "
                f"{len(self.errors)} measured caching errors")


def step_position(frame: pd.DataFrame) -> pd.Series:
    """``p = step / (num_steps - 1)``; a one-step run sits at p = step."""
    return frame["step"] / (frame["num_steps"] - 1).clip(lower=1)


def join_tables(path: Path, meta: dict[str, str], runs: pd.DataFrame, steps: pd.DataFrame, sens: pd.DataFrame,
                errors: pd.DataFrame, prop: pd.DataFrame, estimator: str | None = None) -> SensitivityData:
    """The store's tables as `SensitivityData`; `estimator` None picks the one most rows were made with.

    Separate from `load_sensitivity` so that it can be given DataFrames made by hand.
    """
    if runs.empty:
        raise ValueError(f"{path}: the store holds no runs; collect some with "
                         f"`sencache-calibrate collect --model MODEL --db {path}`")
    if estimator is None:
        estimator = str(sens["estimator"].value_counts().idxmax())
    sens = sens[sens["estimator"] == estimator]
    if sens.empty:
        raise ValueError(f"{path}: no sensitivities of estimator {estimator!r}; "
                         f"the store has {sorted(set(sens['estimator']))}")
    steps = steps.merge(runs[["run_id", "num_steps", "split", "prompt", "seed"]], on="run_id")
    steps["p"] = step_position(steps)
    sens = sens.merge(steps[["run_id", "step", "timestep", "p", "split"]], on=["run_id", "step"])
    return SensitivityData(Path(path), estimator, dict(meta), runs, steps, sens, errors, prop)


def load_sensitivity(path: str | Path, estimator: str | None = None) -> SensitivityData:
    """Read the store at `path` (read-only) into `SensitivityData`."""
    from store import CalibrationStore

    with CalibrationStore(path, read_only=True) as db:
        tables = (db.meta, db.runs(), db.steps(), db.sensitivities(), db.cache_errors(), db.propagation())
    return join_tables(Path(path), *tables, estimator=estimator)


def spearman(x: pd.Series | np.ndarray, y: pd.Series | np.ndarray) -> float:
    """Spearman's ρ of `x` and `y`; NaN below three points, where a rank correlation means nothing."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic) if len(x) >= 3 else math.nan


def score_pairs(errors: pd.DataFrame, sens: pd.DataFrame) -> pd.DataFrame:
    """Each measured error beside the paper's score ``J_x·‖Δx‖ + J_t·|Δt|`` with step i's sensitivities.

    Rows missing a term, or with a non-positive score or error (which a log-log plot cannot
    show), are dropped.
    """
    pairs = errors.merge(sens[["run_id", "step", "J_x", "J_t", "p"]], on=["run_id", "step"])
    pairs = pairs.dropna(subset=["J_x", "J_t", "dx", "dt", "residual_error"])
    pairs = pairs.assign(score=pairs["J_x"] * pairs["dx"] + pairs["J_t"] * pairs["dt"])
    return pairs[(pairs["score"] > 0) & (pairs["residual_error"] > 0)]


def _spread(ax: Axes, frame: pd.DataFrame, column: str, label: str) -> None:
    """One thin line per run, the median over runs bold, the 10-90% band between."""
    for i, (_, run) in enumerate(frame.sort_values("timestep").groupby("run_id")):
        ax.plot(run["timestep"], run[column], color="tab:blue", alpha=0.3, lw=1, label="one run" if i == 0 else None)
    q = frame.assign(t=frame["timestep"].round(3)).groupby("t")[column].quantile([0.1, 0.5, 0.9]).unstack()
    ax.fill_between(q.index, q[0.1], q[0.9], color="tab:orange", alpha=0.25, label="10-90% of runs")
    ax.plot(q.index, q[0.5], color="tab:orange", lw=2.5, marker="o", ms=4, label="median")
    ax.set_xlabel("timestep t (model units)")
    ax.set_ylabel(label)
    ax.invert_xaxis()  # denoising runs from high to low timestep
    positive_log(ax, frame[column], "y")
    finish(ax)


def plot_sensitivities(data: SensitivityData) -> Figure:
    """Section 1: J_x and J_t over the trajectory, one panel each."""
    fig = Figure(figsize=(13, 4.5))
    left, right = fig.subplots(1, 2)
    _spread(left, data.sens.dropna(subset=["J_x"]), "J_x", "J_x  = ‖Δf‖ / ‖Δx‖")
    _spread(right, data.sens.dropna(subset=["J_t"]), "J_t", "J_t  = ‖Δf‖ / |Δt|")
    left.set_title("Sensitivity to the latent, J_x")
    right.set_title("Sensitivity to the timestep, J_t")
    runs = data.sens["run_id"].nunique()
    fig.suptitle(f"Sensitivities over the trajectory ({data.estimator} estimator, {runs} runs)")
    return fig


def plot_score_vs_error(pairs: pd.DataFrame) -> Figure:
    """Section 2: score against measured residual-reuse error, log-log, one colour per lag."""
    fig = Figure(figsize=(7.5, 6))
    ax = fig.subplots()
    for lag, g in pairs.groupby("lag"):
        ax.scatter(g["score"], g["residual_error"], s=18, alpha=0.75,
                   label=f"lag {lag}: ρ = {spearman(g['score'], g['residual_error']):.2f} (n = {len(g)})")
    if len(pairs):
        lo = min(pairs["score"].min(), pairs["residual_error"].min())
        hi = max(pairs["score"].max(), pairs["residual_error"].max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, alpha=0.6, label="score = error")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted score  J_x·‖Δx‖ + J_t·|Δt|")
    ax.set_ylabel("measured residual-reuse error (RMS)")
    overall = spearman(pairs["score"], pairs["residual_error"])
    ax.set_title(f"Score vs measured error: Spearman ρ = {overall:.2f} (n = {len(pairs)})")
    finish(ax, title="lag k (steps reused)")
    return fig


def _lag1(data: SensitivityData) -> pd.DataFrame:
    errors = data.errors[data.errors["lag"] == 1]
    return errors.merge(data.steps[["run_id", "step", "p", "split"]], on=["run_id", "step"])


def plot_per_sample(data: SensitivityData) -> Figure:
    """Section 3: each run's J_x over the median table (left) and its lag-1 error (right, holdout dashed)."""
    sens = data.sens.assign(J_x_rel=data.sens["J_x"] / data.sens.groupby("step")["J_x"].transform("median"))
    colors = {run_id: color(i) for i, run_id in enumerate(data.runs["run_id"])}
    labels = {r.run_id: f"{r.prompt[:38]}… seed {r.seed}" for r in data.runs.itertuples()}
    fig = Figure(figsize=(13, 4.5))
    left, right = fig.subplots(1, 2)
    for run_id, g in sens.sort_values("p").groupby("run_id"):
        left.plot(g["p"], g["J_x_rel"], marker="o", ms=3, color=colors[run_id], label=labels[run_id])
    left.axhline(1.0, color="k", lw=1, ls=":")
    left.set_ylabel("J_x / median over runs")
    left.set_title("Each run's J_x relative to the median table")
    for run_id, g in _lag1(data).sort_values("p").groupby("run_id"):
        held = g["split"].iloc[0] == "holdout"
        right.plot(g["p"], g["residual_error"], marker="o", ms=3, color=colors[run_id], ls="--" if held else "-",
                   label=labels[run_id] + (" (holdout)" if held else ""))
    right.set_yscale("log")
    right.set_ylabel("lag-1 residual-reuse error (RMS)")
    right.set_title("Each run's error of reusing the residual one step later")
    for ax in (left, right):
        ax.set_xlabel("step position p = i / (N − 1)")
        finish(ax, fontsize=8)
    return fig


def per_run_table(data: SensitivityData) -> pd.DataFrame:
    """Per run: prompt, seed, split, median J_x and J_t, mean lag-1 error, latent path length Σ‖Δx‖."""
    per_run = pd.DataFrame({
        "median J_x": data.sens.groupby("run_id")["J_x"].median(),
        "median J_t": data.sens.groupby("run_id")["J_t"].median(),
        "mean lag-1 error": _lag1(data).groupby("run_id")["residual_error"].mean(),
        "path length Σ‖Δx‖": data.steps.groupby("run_id")["dx_norm"].sum(),
    })
    return data.runs.set_index("run_id")[["prompt", "seed", "split"]].join(per_run)


def plot_propagation(data: SensitivityData) -> Figure | None:
    """Section 4: the propagation gain G(p) per run and its median; None when the store has none."""
    if data.prop.empty:
        return None
    prop = data.prop.merge(data.runs[["run_id", "num_steps"]], on="run_id")
    prop["p"] = step_position(prop)
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    for i, (_, g) in enumerate(prop.sort_values("p").groupby("run_id")):
        ax.plot(g["p"], g["gain"], color="tab:blue", alpha=0.35, marker="o", ms=3, label="one run" if i == 0 else None)
    median = prop.groupby("p")["gain"].median()
    ax.plot(median.index, median.values, color="tab:red", lw=2.5, marker="s", label="median")
    ax.axhline(1.0, color="k", lw=1, ls=":", label="gain 1 (error neither grows nor shrinks)")
    positive_log(ax, prop["gain"], "y")
    ax.set_xlabel("step position p where the error is injected")
    ax.set_ylabel("final error / injected error")
    ax.set_title("Propagation gain G(p)")
    finish(ax)
    return fig
