"""What `bench.ipynb` shows: every method's quality against compute, and the methods at matched NFE.

Its input is the `bench.json` that `sencache-calibrate bench --out DIR` writes (see
`calibration.bench`): one row per method × knob under `results`, and under `matched` each method
interpolated at the matched NFE fractions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from calibration.analysis.style import color, finish, positive_log
from calibration.bench_report import PSNR_CAP

__all__ = [
    "RESULT_COLUMNS",
    "colors_of",
    "load_bench",
    "matched_table",
    "plot_matched",
    "plot_quality",
    "psnr_top",
    "results_table",
]

#: the columns `results_table` shows first, those the bench wrote
RESULT_COLUMNS = ("method", "knob", "nfe_fraction", "psnr", "ssim", "latent_rmse", "wall_s", "speedup")
_MATCHED_METRICS = ("psnr", "ssim", "latent_rmse", "spread")


def load_bench(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The bench result at `path` (a bench folder or its bench.json) and the file it was read from."""
    path = Path(path)
    if path.is_dir():
        path = path / "bench.json"
    if not path.exists():
        raise FileNotFoundError(f"bench result {path}: no such file. Run one: "
                                "`sencache-calibrate bench --model toy-wan --policy POLICY --out bench/`.")
    bench = json.loads(path.read_text())
    if not isinstance(bench, dict) or bench.get("format", "sencache-bench") != "sencache-bench" \
            or "results" not in bench:
        raise ValueError(f"{path}: not a SenCache bench result (no `results`)")
    return path, bench


def results_table(bench: dict[str, Any]) -> pd.DataFrame:
    """`results` as a DataFrame without the per-sample detail; `knob` as text ("" for none)."""
    results = pd.DataFrame(bench["results"])
    results = results.drop(columns=[c for c in ("samples", "schedule", "config") if c in results])
    results["knob"] = ["" if k is None or k != k else str(k) for k in results["knob"]]  # k != k: NaN
    first = [c for c in RESULT_COLUMNS if c in results]
    return results[first + [c for c in results if c not in first]]


def colors_of(results: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """A colour per method but `none` (the reference), in the order the methods first appear."""
    methods = [m for m in dict.fromkeys(results["method"]) if m != "none"]
    return {m: color(i) for i, m in enumerate(methods)}


def psnr_top(results: pd.DataFrame) -> float:
    """Where the PSNR axis stops: 3 dB above the best finite PSNR; `PSNR_CAP` when every output is identical.

    Capped points (outputs identical to full compute) are drawn at this height, not at 100 dB.
    """
    finite = results.loc[(results["method"] != "none") & (results["psnr"] < PSNR_CAP), "psnr"]
    return float(finite.max() + 3) if len(finite) else PSNR_CAP


def plot_quality(bench: dict[str, Any], results: pd.DataFrame) -> Figure:
    """Section 1: PSNR, latent RMSE and wall-clock speedup against the NFE fraction, a curve per method."""
    colors, top = colors_of(results), psnr_top(results)
    fig = Figure(figsize=(17, 5))
    frames, latents, speed = fig.subplots(1, 3)
    for m, c in colors.items():
        g = results[results["method"] == m].sort_values("nfe_fraction")
        psnr = g["psnr"].clip(upper=top)
        frames.plot(g["nfe_fraction"], psnr, "o-", color=c, label=m)
        capped = g["psnr"] >= PSNR_CAP
        frames.plot(g.loc[capped, "nfe_fraction"], psnr[capped], "^", ms=10, color=c)
        if m == "sencache":  # name the operating points; knobs landing on one spot share a label
            spots = g.assign(y=psnr.round(2), x=g["nfe_fraction"].round(3)).groupby(["x", "y"])["knob"]
            for (x, y), knobs in spots:
                frames.annotate(", ".join(knobs), (x, y), fontsize=7, xytext=(4, -10), textcoords="offset points")
        latents.plot(g["nfe_fraction"], g["latent_rmse"], "o-", color=c, label=m)
        if "speedup" in g:  # wall clock is noisy: points, not a curve
            speed.plot(g["nfe_fraction"], g["speedup"], "o", ms=7, alpha=0.8, color=c, label=m)
    nfe = np.linspace(0.25, 1.0, 50)
    speed.plot(nfe, 1 / nfe, "k--", lw=1, label="ideal 1 / NFE fraction")
    speed.axhline(1.0, color="k", lw=0.8, ls=":")
    frames.set_ylim(top=top + 1)
    frames.set_ylabel("PSNR vs full compute (dB, higher is better)")
    latents.set_ylabel("final-latent RMSE vs full compute (lower is better)")
    positive_log(latents, results.loc[results["method"] != "none", "latent_rmse"], "y")
    speed.set_ylabel("wall-clock speedup over full compute")
    fractions = sorted(float(f) for f in bench.get("matched", {}))
    for ax, title in ((frames, "Frame quality"), (latents, "Latent error"), (speed, "Speed")):
        for f in fractions:
            ax.axvline(f, color="0.6", ls=":", lw=1)
        ax.set_xlabel("NFE fraction (block-stack work that ran)")
        ax.set_title(title)
        finish(ax, legend=ax is not latents, fontsize=8)
    model = bench.get("model", {}).get("name", "?")
    fig.suptitle(f"Quality vs compute on {model} ({bench.get('device', '?')})")
    return fig


def matched_table(bench: dict[str, Any]) -> pd.DataFrame:
    """One row per (matched fraction, method): psnr, ssim, latent_rmse, spread, reached, note; best first."""
    rows = []
    for fraction, table in bench.get("matched", {}).items():
        for method, entry in table.items():
            rows.append({"fraction": float(fraction), "method": method,
                         **{k: entry.get(k) for k in _MATCHED_METRICS},
                         "reached": bool(entry.get("reached", entry.get("psnr") is not None)),
                         "note": entry.get("note", "")})
    columns = ["fraction", "method", *_MATCHED_METRICS, "reached", "note"]
    matched = pd.DataFrame(rows, columns=columns)
    return matched.sort_values(["fraction", "psnr"], ascending=[False, False], ignore_index=True)


def plot_matched(matched: pd.DataFrame, results: pd.DataFrame, model: str = "?") -> Figure | None:
    """Section 2: PSNR of each method at each matched fraction, ± its spread; None when nothing is matched.

    A method that does not reach a fraction is written "not reached" at the foot of its slot.
    """
    if matched.empty:
        return None
    colors, top = colors_of(results), psnr_top(results)
    fig = Figure(figsize=(10, 4.8))
    ax = fig.subplots()
    order = list(dict.fromkeys(matched["method"]))
    width = 0.7 / max(len(order), 1)
    xs = {f: i for i, f in enumerate(sorted(matched["fraction"].unique(), reverse=True))}
    for j, m in enumerate(order):
        g = matched[matched["method"] == m]
        c = colors.get(m, "0.5")
        x = np.array([xs[f] for f in g["fraction"]]) + (j - (len(order) - 1) / 2) * width
        reached = g["reached"].to_numpy(bool)
        y = g["psnr"].astype(float).clip(upper=top).to_numpy()
        spread = g["spread"].astype(float).fillna(0).to_numpy()
        ax.errorbar(x[reached], y[reached], yerr=spread[reached], fmt="o", ms=9, capsize=4, color=c, label=m)
        for xi, yi in zip(x[reached], y[reached]):
            ax.annotate(f"{yi:.1f}", (xi, yi), fontsize=7, xytext=(6, 0), textcoords="offset points", va="center")
        for xi in x[~reached]:
            ax.annotate("not\nreached", (xi, 0.02), xycoords=("data", "axes fraction"), fontsize=7, ha="center",
                        color=c)
    ax.set_xticks(list(xs.values()), [f"NFE {f:g}" for f in xs])
    ax.set_xlim(-0.6, len(xs) - 0.4)
    ax.set_ylabel("PSNR vs full compute (dB)")
    ax.set_title(f"Methods at matched compute on {model}")
    finish(ax, legend=False, grid_axis="y")
    ax.legend(fontsize=8, ncols=2)
    return fig
