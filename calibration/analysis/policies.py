"""What `policies.ipynb` shows: the Pareto front, the predictors, ε(p), and each sample's mask.

Its input is a fit result (`<store>.fit.json`, from `sencache-calibrate fit`), a policy file
(`sencache-calibrate export`), or both. A fit result's operating points carry more than a
policy's (where they were chosen, how they validated), so the functions here take either and
use what is there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from calibration.analysis.style import color, finish, positive_log
from policies import OperatingPoint, Policy

if TYPE_CHECKING:
    from sencache.report import RunReport

__all__ = [
    "POINT_COLUMNS",
    "load_fit",
    "operating_points",
    "plot_masks",
    "plot_pareto",
    "plot_predictors",
    "plot_scores",
    "plot_thresholds",
    "points_table",
    "policy_of_fit",
    "predictor_table",
    "run_masks",
]

logger = logging.getLogger(__name__)

#: the columns of `points_table`, in order (a policy's points lack the fit-only ones: None there)
POINT_COLUMNS = ("name", "origin", "forecast", "target_nfe_fraction", "expected_nfe_fraction", "expected_error",
                 "max_skips", "warmup_steps", "final_steps")


def load_fit(path: str | Path) -> dict[str, Any]:
    """The fit result at `path`; ValueError when the file is not one."""
    result = json.loads(Path(path).read_text())
    if not isinstance(result, dict) or result.get("format") != "sencache-fit":
        raise ValueError(f"{path}: not a SenCache fit result (format 'sencache-fit' expected); "
                         "fit a store with `sencache-calibrate fit --db calib.duckdb`")
    return result


def policy_of_fit(result: Mapping[str, Any], fit_path: str | Path) -> Policy | None:
    """The policy `export` would build from a fit result alone; None when its store is gone.

    The store is looked for beside the fit result first (a moved folder), then where the fit read it.
    """
    from calibration.export import build_policy
    from calibration.fitdata import load_fit_data

    fit_path = Path(fit_path)
    stores = [p for p in (fit_path.parent / Path(result["store"]).name, Path(result["store"])) if p.exists()]
    if not stores:
        return None
    return build_policy(dict(result), load_fit_data(stores[0]), source=str(fit_path))


def _point_dicts(result: Mapping[str, Any] | None, policy: Policy | None) -> list[dict[str, Any]]:
    if result is not None:
        return list(result["operating_points"])
    if policy is None:
        raise ValueError("give a fit result, a policy or both")
    return [p.to_dict() for p in policy.operating_points]


def points_table(result: Mapping[str, Any] | None, policy: Policy | None = None) -> pd.DataFrame:
    """One row per operating point (`POINT_COLUMNS`), from the fit result when given, else the policy."""
    rows = [{k: p.get(k) for k in POINT_COLUMNS} for p in _point_dicts(result, policy)]
    return pd.DataFrame(rows, columns=list(POINT_COLUMNS)).set_index("name")


def operating_points(result: Mapping[str, Any] | None, policy: Policy | None = None) -> list[OperatingPoint]:
    """The operating points as `OperatingPoint`s: the policy's, else the fit result's (extra keys dropped)."""
    if policy is not None:
        return list(policy.operating_points)
    fields = set(OperatingPoint.KEYS + OperatingPoint.STATIC_KEYS + OperatingPoint.OPTIONAL_KEYS)
    points = []
    for p in _point_dicts(result, None):
        keep = {k: p[k] for k in fields if k in p}
        if keep.get("schedule") is not None:  # a static point: its schedule, none of ε's fields
            keep = {k: v for k, v in keep.items() if k in OperatingPoint.STATIC_KEYS + OperatingPoint.OPTIONAL_KEYS}
        else:
            keep.pop("schedule", None)
        points.append(OperatingPoint.from_dict(keep))
    return points


def plot_pareto(result: Mapping[str, Any] | None, policy: Policy | None = None) -> Figure:
    """Section 1: the search's Pareto front, each point chosen (★) and validated (○), and the references.

    With no fit result only the policy's expected points are drawn.
    """
    fig = Figure(figsize=(8.5, 5.5))
    ax = fig.subplots()
    if result is not None:
        front = pd.DataFrame(result["pareto_front"]).sort_values("nfe_fraction")
        ax.plot(front["nfe_fraction"], front["error"], "o-", color="0.45", ms=6,
                label="Pareto front (calibration runs)")
        where = str(result.get("validation", "validation")).split()[0]
        for i, p in enumerate(result["operating_points"]):
            chosen, valid = p.get("calib"), p.get("validation") or {}
            if chosen:
                ax.plot(chosen["nfe_fraction"], chosen["error"], "*", ms=16, color=color(i),
                        label=f"{p['name']} (chosen)")
            if valid:
                ax.plot(valid["nfe_fraction"], valid["error"], "o", ms=11, mfc="none", mew=2, color=color(i),
                        label=f"{p['name']} on {where}")
            if chosen and valid:
                ax.annotate("", (valid["nfe_fraction"], valid["error"]), (chosen["nfe_fraction"], chosen["error"]),
                            arrowprops={"arrowstyle": "->", "color": color(i), "alpha": 0.6})
        references = result.get("references", {})
        uniform = [u for u in (references.get("uniform") or {}).values() if u]
        if uniform:
            ax.plot([u["nfe_fraction"] for u in uniform], [u["error"] for u in uniform], "x", ms=10, mew=2,
                    color="k", label="evenly spaced skipping")
        paper = (references.get("paper") or {}).get("validation")
        if paper:
            ax.plot(paper["nfe_fraction"], paper["error"], "D", ms=8, color="tab:brown",
                    label="paper setting (uncalibrated)")
        ax.set_title(f"Error vs compute of {result['model']['name']} ({result['objective']} objective)")
    elif policy is not None:
        for i, p in enumerate(policy.operating_points):
            ax.plot(p.expected_nfe_fraction, p.expected_error, "*", ms=16, color=color(i), label=p.name)
        ax.set_title(f"Operating points of {policy.model.name} (no fit result: no Pareto front)")
    else:
        raise ValueError("give a fit result, a policy or both")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("fraction of steps computed (NFE fraction)")
    ax.set_ylabel("final-output error (RMS vs full compute)")
    finish(ax, fontsize=8)
    return fig


def predictor_table(result: Mapping[str, Any] | None) -> pd.DataFrame:
    """The fit's predictor comparison (name, spearman, r2, n), those with a ρ, worst first; empty without a fit."""
    comparison = pd.DataFrame((result or {}).get("predictor_comparison") or [])
    if comparison.empty:
        return comparison
    return comparison.dropna(subset=["spearman"]).sort_values("spearman")


def plot_predictors(comparison: pd.DataFrame) -> Figure | None:
    """Section 2: Spearman ρ of each signal with the measured error (SenCache's bars orange); None when empty."""
    if comparison.empty:
        return None
    fig = Figure(figsize=(8.5, 0.45 * len(comparison) + 1.5))
    ax = fig.subplots()
    bars = ax.barh(comparison["name"], comparison["spearman"],
                   color=["tab:orange" if n.startswith("sencache") else "tab:gray" for n in comparison["name"]])
    ax.bar_label(bars, fmt="%.2f", padding=3)
    ax.set_xlim(min(0.0, comparison["spearman"].min()) - 0.05, 1.08)
    ax.set_xlabel("Spearman ρ with the measured residual-reuse error (held-out pairs)")
    ax.set_title("Predictors of the caching error")
    finish(ax, legend=False, grid_axis="x")
    return fig


def plot_thresholds(points: Sequence[OperatingPoint], resolution: int = 401) -> Figure:
    """Section 3: ε(p) of each operating point over p in [0, 1] (one line each), its knots as dots.

    Static points (a schedule of compute positions) have no ε and are left out.
    """
    points = [p for p in points if not p.static]
    grid = np.linspace(0.0, 1.0, resolution)
    fig = Figure(figsize=(8.5, 5))
    ax = fig.subplots()
    for i, point in enumerate(points):
        ax.plot(grid, point.eps(grid), color=color(i), lw=2, ls=("-", "--", "-.", ":")[i % 4],
                label=f"{point.name}: K = {point.max_skips}, warm-up {point.warmup_steps:.3g}, "
                      f"final {point.final_steps:.3g}, forecast {point.forecast}")
        ax.plot(point.eps.positions, point.eps.values, "o", color=color(i), ms=4)
    positive_log(ax, np.concatenate([np.asarray(p.eps.values, dtype=float) for p in points]) if points else [], "y")
    ax.set_xlabel("step position p = i / (N − 1)")
    ax.set_ylabel("threshold ε(p) (score units)")
    ax.set_title("ε(p) of each operating point")
    finish(ax, fontsize=8)
    return fig


def run_masks(policy: Policy, prompts: Sequence[str], steps: int | None = None, seed: int = 0) -> dict[str, RunReport]:
    """Apply `policy` to its own model and generate `prompts` once per operating point; the run reports.

    `steps` None takes the model's default call (its zoo.json). The cache is removed after each call.
    """
    import torch

    import sencache
    from calibration.models import load_model

    loaded = load_model(policy.model.name)
    pipe = loaded.pipe
    pipe.set_progress_bar_config(disable=True)
    kwargs = loaded.call_kwargs(num_inference_steps=int(steps) if steps else None)
    reports: dict[str, RunReport] = {}
    for name in policy.operating_point_names:
        handle = sencache.apply(pipe, policy, operating_point=name)
        try:
            pipe(prompt=list(prompts), negative_prompt=[""] * len(prompts),
                 generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs)
            reports[name] = handle.report()
        finally:
            sencache.remove(pipe)
        logger.info("%s: %s", name, reports[name].summary())
    return reports


def plot_masks(reports: Mapping[str, RunReport], prompts: Sequence[str], model: str) -> Figure:
    """Section 4: one panel per operating point, a row per sample, a cell per step (blue = computed)."""
    rows = max((r.num_samples for r in reports.values()), default=1)
    fig = Figure(figsize=(10, 1.1 + 0.55 * rows * len(reports)))
    axes = fig.subplots(len(reports), 1, squeeze=False)[:, 0]
    for ax, (name, rep) in zip(axes, reports.items()):
        ax.imshow(rep.computed.astype(float), aspect="auto", cmap=ListedColormap(["#eeeeee", "tab:blue"]),
                  vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(rep.num_samples), [f"{p[:34]}… ({n})" for p, n in zip(prompts, rep.nfe_per_sample)],
                      fontsize=8)
        ax.set_xticks(range(rep.num_steps))
        ax.set_title(f"{name}: computed {rep.nfe_fraction.mean():.0%} of steps (blue = computed, grey = reused)",
                     fontsize=10)
    axes[-1].set_xlabel("denoising step")
    steps = next(iter(reports.values())).num_steps if reports else 0
    fig.suptitle(f"Per-sample computed masks of {model}, {steps} steps")
    fig.tight_layout()
    return fig


def plot_scores(report: RunReport, name: str) -> Figure:
    """Each sample's score S_i over the steps against ε(p_i) (black); skipped steps crossed."""
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    x = np.arange(report.num_steps)
    ax.plot(x, report.thresholds, "k-", lw=2, label="ε(p_i)")
    for s in range(report.num_samples):
        skipped = ~report.computed[s]
        ax.plot(x, report.scores[s], "o-", color=color(s), ms=5, alpha=0.8, label=f"sample {s} score")
        ax.plot(x[skipped], report.scores[s][skipped], "x", color=color(s), ms=10, mew=2)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("score S_i (× = skipped)")
    ax.set_title(f"Scores against the threshold, operating point {name!r}")
    finish(ax, fontsize=8)
    return fig
