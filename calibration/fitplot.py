"""The fit's picture: predicted vs measured caching error, and the Pareto front with the references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["plot_fit"]


def plot_fit(result: dict[str, Any], pairs: pd.DataFrame, study: optuna.Study, out: Path) -> Path:
    """Two panels; writes `out` (PNG) and returns it."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    pred = result["predictor"]
    y = pairs["residual_error"].to_numpy(np.float64)
    yhat = pred["a"] * pairs["u"].to_numpy(np.float64) + pred["b"] * pairs["v"].to_numpy(np.float64) + pred["c"]
    ok = np.isfinite(y) & np.isfinite(yhat) & (y > 0) & (yhat > 0)
    held = (pairs["split"] == "holdout").to_numpy() & ok
    for mask, colour, label in ((ok & ~held, "tab:blue", "calib"), (held, "tab:orange", "holdout")):
        if mask.any():
            left.scatter(yhat[mask], y[mask], s=4, alpha=0.4, c=colour, label=label)
    if ok.any():
        lo, hi = min(y[ok].min(), yhat[ok].min()), max(y[ok].max(), yhat[ok].max())
        left.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        left.set_xscale("log")
        left.set_yscale("log")
    rho = pred.get("spearman")
    left.set_title(f"predictor a={pred['a']:.3g} b={pred['b']:.3g} c={pred['c']:.3g}"
                   + (f", held-out ρ={rho:.2f}" if rho is not None else ""), fontsize=9)
    left.set_xlabel("predicted residual-reuse error")
    left.set_ylabel("measured residual-reuse error")
    left.legend(fontsize=8)

    done = [t for t in study.trials if t.values is not None]
    if done:
        right.scatter([t.values[1] for t in done], [t.values[0] for t in done], s=8, c="0.75", label="trials (calib)")
    front = result["pareto_front"]
    right.plot([p["nfe_fraction"] for p in front], [p["error"] for p in front], "-o", ms=3, c="tab:blue",
               label="Pareto front (calib)")
    measured_axis = right
    validate_kind = result.get("validation_objective", result["objective"])
    if validate_kind != result["objective"]:  # the holdout numbers are in other units: their own axis
        measured_axis = right.twinx()
        measured_axis.set_ylabel(f"holdout final error ({validate_kind})")
        measured_axis.set_yscale("symlog", linthresh=1e-4)
    for p in result["operating_points"]:
        label = "paper shape, fitted score" if p["name"] == "paper" else p["name"]
        measured_axis.scatter(p["expected_nfe_fraction"], p["expected_error"], marker="*", s=120, zorder=5,
                      label=f"{label} ({result['validation'].split()[0]})")
    uni = [v for v in result["references"]["uniform"].values() if v]
    if uni:
        measured_axis.plot([u["nfe_fraction"] for u in uni], [u["error"] for u in uni], "s--", c="tab:red", ms=5,
                   label="evenly spaced")
    paper = result["references"]["paper"]["validation"]
    if paper:
        measured_axis.scatter(paper["nfe_fraction"], paper["error"], marker="x", c="k", s=60, label="paper (a=b=1)")
    right.set_xlabel("fraction of steps computed")
    right.set_ylabel(f"final error ({result['objective']})")
    right.set_yscale("symlog", linthresh=1e-4)
    handles, labels = right.get_legend_handles_labels()
    if measured_axis is not right:
        more = measured_axis.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    right.legend(handles, labels, fontsize=7)
    right.set_title(f"{result['model']['name']}: {result['trials']} trials", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
