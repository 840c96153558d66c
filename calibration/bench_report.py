"""Scoring, matched comparison, plots and the Markdown summary of a bench run.

Quality metrics (no new dependency): PSNR and SSIM on decoded frames in [0, 1], RMSE on final
latents. SSIM is the usual Gaussian-window form (11 x 11, σ = 1.5, K1 = 0.01, K2 = 0.03; Wang et
al. 2004) per channel and frame, 'valid' windows only; the window shrinks for frames smaller
than 11 px. Identical outputs give PSNR = `PSNR_CAP` (JSON has no infinity).

Matched comparison: each method's quality-vs-NFE curve (one point per knob) is linearly
interpolated at each target fraction, PSNR through MSE (see `matched`); a method whose sweep
does not span the fraction is "not reached" there. The spread is the standard deviation over
(prompt, seed) samples of each sample's own curve interpolated at the same fraction.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PSNR_CAP",
    "fidelity_scorer",
    "latent_rmse",
    "matched",
    "progress_bar",
    "psnr",
    "score_row",
    "ssim",
    "summary_markdown",
    "write_plots",
]

logger = logging.getLogger(__name__)

PSNR_CAP = 100.0
_METRICS = ("psnr", "ssim", "latent_rmse")

def psnr(video: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over every pixel of every frame (capped at `PSNR_CAP`)."""
    mse = float(np.mean((np.asarray(video, np.float64) - np.asarray(reference, np.float64)) ** 2))
    if mse <= 0.0:
        return PSNR_CAP
    return float(min(PSNR_CAP, 10.0 * np.log10(data_range**2 / mse)))


def _window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(video: np.ndarray, reference: np.ndarray, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of frames [..., H, W, C] (any leading dims); the window shrinks to fit small frames."""
    a = torch.as_tensor(np.asarray(video, np.float64))
    b = torch.as_tensor(np.asarray(reference, np.float64))
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    h, w, c = a.shape[-3:]
    # [N, C, H, W] with one image per frame and channel
    a = a.reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    b = b.reshape(-1, h, w, c).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    size = min(window, h, w)
    if size % 2 == 0:
        size -= 1
    kernel = _window(size, sigma * size / window).view(1, 1, size, size)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = F.conv2d(a, kernel), F.conv2d(b, kernel)
    var_a = F.conv2d(a * a, kernel) - mu_a**2
    var_b = F.conv2d(b * b, kernel) - mu_b**2
    cov = F.conv2d(a * b, kernel) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float((num / den).mean())


def latent_rmse(latent: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray) -> float:
    """Root mean square difference of two latents (any shape)."""
    a = torch.as_tensor(latent).double()
    b = torch.as_tensor(reference).double()
    return float((a - b).pow(2).mean().sqrt())


# --- scoring ------------------------------------------------------------------------------------


def fidelity_scorer(prompts: list[str]):
    """`video, prompt -> share of the prompt's factors read back`, or None when unusable.

    Uses the zoo's read-out (`calibration.zoo.fidelity.score`) when it exists and every prompt
    is a zoo prompt; otherwise the bench reports no fidelity.
    """
    try:
        from calibration.zoo import data, fidelity
    except ImportError:
        return None
    try:
        for prompt in prompts:
            data.parse_prompt(prompt)
    except ValueError:
        return None

    def score(video: np.ndarray, prompt: str) -> float:
        hits = fidelity.score(prompt, video)
        return float(np.mean([bool(v) for v in hits.values()]))

    return score


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _std(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.std(vals)) if vals else None


def score_row(method: str, knob: Any, config: dict[str, Any], samples: list[Any], outputs: list[Any],
              reference: list[Any], fidelity: Any) -> dict[str, Any]:
    """One `results` row: means over samples, their spread, and every sample's own numbers."""
    per_sample = []
    for sample, out, ref in zip(samples, outputs, reference):
        entry = {
            "prompt": sample.prompt,
            "seed": sample.seed,
            "nfe_fraction": out.macs / ref.macs if ref.macs > 0 else None,
            "psnr": psnr(out.frames, ref.frames),
            "ssim": ssim(out.frames, ref.frames),
            "latent_rmse": latent_rmse(out.latents, ref.latents),
            "fidelity": fidelity(out.frames, sample.prompt) if fidelity is not None else None,
            "wall_s": out.wall_s,
            "block_calls": out.calls,
            "step_compute": _step_compute(out.per_call, ref.per_call),
        }
        if out.mask is not None:
            entry["mask"] = out.mask.astype(int).tolist()
        per_sample.append(entry)
    wall = float(np.mean([o.wall_s for o in outputs]))
    wall_ref = float(np.mean([o.wall_s for o in reference]))
    tr = float(np.mean([o.transformer_s for o in outputs]))
    tr_ref = float(np.mean([o.transformer_s for o in reference]))
    row: dict[str, Any] = {
        "method": method,
        "knob": knob,
        "nfe_fraction": _mean([s["nfe_fraction"] for s in per_sample]),
        "psnr": _mean([s["psnr"] for s in per_sample]),
        "ssim": _mean([s["ssim"] for s in per_sample]),
        "latent_rmse": _mean([s["latent_rmse"] for s in per_sample]),
        "wall_s": wall,
        "speedup": wall_ref / wall if wall > 0 else None,
        "transformer_s": tr,
        "transformer_speedup": tr_ref / tr if tr > 0 else None,
        "fidelity": _mean([s["fidelity"] for s in per_sample]),
        "nfe_std": _std([s["nfe_fraction"] for s in per_sample]),
        "psnr_std": _std([s["psnr"] for s in per_sample]),
        "ssim_std": _std([s["ssim"] for s in per_sample]),
        "latent_rmse_std": _std([s["latent_rmse"] for s in per_sample]),
        "schedule": np.mean([s["step_compute"] for s in per_sample], axis=0).tolist() if per_sample else [],
        "config": config,
        "samples": per_sample,
    }
    return row


def _step_compute(per_call: list[float], ref_per_call: list[float]) -> list[float]:
    """Share of full compute each transformer call ran (Wan's CFG branches are separate calls)."""
    n = len(ref_per_call)
    if n == 0 or len(per_call) != n:
        return []
    frac = [c / r if r > 0 else 0.0 for c, r in zip(per_call, ref_per_call)]
    return [float(v) for v in frac]


# --- matched comparison -----------------------------------------------------------------------


def _interp(xs: list[float], ys: list[float], at: float, setting_means: list[float] | None = None) -> float | None:
    """Linear interpolation of y(x) at `at`; None outside [min x, max x].

    Equal x: the mean y, or with `setting_means` (each entry's setting's mean compute over all
    samples) the y of the setting whose mean lies nearest that x. Two settings that compute the
    same steps on one sample are two knobs a user picks between by their mean compute, so the one
    meant for that compute stands. Averaging them blended settings: the quickstart's `paper*2`
    (0.392 of the steps on average) computed exactly `fast`'s 12 of 30 on 3 of 4 samples and
    pulled SenCache's 0.4 from 40.0 to 38.3 dB, below its own static twin with the very same mask.
    """
    pts: dict[float, list[tuple[float, float]]] = {}
    means = setting_means if setting_means is not None else [math.nan] * len(xs)
    for x, y, mean in zip(xs, ys, means):
        if x is not None and y is not None and np.isfinite(x) and np.isfinite(y):
            pts.setdefault(round(float(x), 12), []).append((float(mean) if mean is not None else math.nan, float(y)))
    if not pts:
        return None
    x_sorted = sorted(pts)
    if at < x_sorted[0] - 1e-9 or at > x_sorted[-1] + 1e-9:
        return None

    def at_x(x: float) -> float:
        entries = pts[x]
        distance = [abs(mean - x) if math.isfinite(mean) else math.inf for mean, _ in entries]
        if setting_means is None or not any(math.isfinite(d) for d in distance):
            return float(np.mean([y for _, y in entries]))
        nearest = min(distance)
        return float(np.mean([y for d, (_, y) in zip(distance, entries) if d == nearest]))

    return float(np.interp(at, x_sorted, [at_x(x) for x in x_sorted]))


def _to_mse(value: float | None) -> float | None:
    """PSNR (dB, data range 1) -> MSE; the cap (identical outputs) -> 0."""
    if value is None:
        return None
    return 0.0 if value >= PSNR_CAP else 10.0 ** (-value / 10.0)


def _to_psnr(mse: float | None) -> float | None:
    if mse is None:
        return None
    return PSNR_CAP if mse <= 0.0 else float(min(PSNR_CAP, -10.0 * np.log10(mse)))


def pareto_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A method's settings split into (kept, dominated): a setting is dominated when another one
    computes no more (mean NFE) and has a higher mean PSNR over the same samples (the quantity the
    matched table reports).

    Why: a method is compared at its best setting for the compute, as every knob sweep is.
    SenCache's sweep holds its fitted points and extra ones (the paper reference, ε scaled ×2 …);
    one of those computing 0.501 at 1.3 dB below the fitted 0.500 point (toy-cogvideox) is a
    setting nobody would pick, and interpolating through it pulled the matched value below the
    fitted point itself. The dominated settings are listed beside the table, never hidden.
    """
    def mean_psnr(row: dict[str, Any]) -> float:
        values = [s.get("psnr") for s in row.get("samples", []) if s.get("psnr") is not None]
        return float(np.mean(values)) if values else -math.inf

    scored = [(r.get("nfe_fraction"), mean_psnr(r), r) for r in rows]
    kept, dominated = [], []
    for nfe, quality, row in scored:
        beaten = nfe is not None and any(
            other is not row and o_nfe is not None and o_nfe <= nfe + 1e-9 and o_quality > quality
            for o_nfe, o_quality, other in scored)
        (dominated if beaten else kept).append(row)
    return kept, dominated


#: the methods every other is compared with sample by sample (`vs_<method>` in `matched`)
PAIRED_REFERENCES = ("uniform", "sencache-static", "taylorseer")


def matched(rows: list[dict[str, Any]], fractions: tuple[float, ...]) -> dict[str, dict[str, Any]]:
    """`{"0.5": {method: {psnr, ssim, latent_rmse, spread, ..., reached}}}` for every method but `none`.

    Only a method's non-dominated settings make its curve (`pareto_rows`; the others are listed
    under `dominated`). Each (prompt, seed) sample's own curve is interpolated at the fraction (clamped to that
    sample's span, which may be narrower than the mean curve's; where two settings compute the same
    on a sample, the one whose mean compute lies nearest that compute, see `_interp`); the value is the mean over
    samples, `spread` the standard deviation of PSNR (`spread_ssim`, `spread_latent_rmse` too).
    PSNR is interpolated as MSE, never in dB: identical outputs have an infinite (capped) PSNR,
    and a straight line towards the cap would invent quality. A method is "reached" at a
    fraction when its mean-NFE curve spans it. `vs_uniform` is the paired difference in PSNR
    against evenly spaced skipping, sample by sample (same prompt and seed), with its standard
    error `vs_uniform_se`: prompts differ far more from each other than methods do, so the
    unpaired spread hides differences that every single sample agrees on. The same paired
    difference is given against SenCache's static twin (`vs_sencache-static`: what the score
    adds) and against TaylorSeer (`vs_taylorseer`), when those ran.
    """
    by_method: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["method"] != "none":
            by_method.setdefault(row["method"], []).append(row)
    dominated: dict[str, list[Any]] = {}
    for method in list(by_method):
        by_method[method], left_out = pareto_rows(by_method[method])
        dominated[method] = [r.get("knob") for r in left_out]
    out: dict[str, dict[str, Any]] = {}
    for f in fractions:
        table: dict[str, Any] = {}
        psnr_by_sample: dict[str, dict[int, float | None]] = {}
        for method, mrows in by_method.items():
            xs = [r["nfe_fraction"] for r in mrows]
            finite_xs = [x for x in xs if x is not None]
            reached = bool(finite_xs) and min(finite_xs) - 1e-9 <= f <= max(finite_xs) + 1e-9
            entry: dict[str, Any] = {"psnr": None, "ssim": None, "latent_rmse": None, "spread": None,
                                     "fidelity": _interp(xs, [r.get("fidelity") for r in mrows], f), "reached": reached}
            if dominated[method]:
                entry["dominated"] = dominated[method]
            if not reached:
                entry["note"] = ("not reached: the sweep spans NFE %.2f-%.2f" % (min(finite_xs), max(finite_xs))
                                 if finite_xs else "not reached: no measured NFE")
                table[method] = entry
                continue
            per: dict[str, list[float | None]] = {m: [] for m in _METRICS}
            by_sample = psnr_by_sample.setdefault(method, {})
            for s in range(len(mrows[0]["samples"])):
                sx = [r["samples"][s]["nfe_fraction"] for r in mrows]
                span = [x for x in sx if x is not None]
                if not span:
                    continue
                at = min(max(f, min(span)), max(span))
                per["psnr"].append(_to_psnr(_interp(sx, [_to_mse(r["samples"][s]["psnr"]) for r in mrows], at, xs)))
                by_sample[s] = per["psnr"][-1]
                for metric in ("ssim", "latent_rmse"):
                    per[metric].append(_interp(sx, [r["samples"][s][metric] for r in mrows], at, xs))
            for metric in _METRICS:
                entry[metric] = _mean(per[metric])
                entry["spread" if metric == "psnr" else f"spread_{metric}"] = _std(per[metric])
            table[method] = entry
        for reference in PAIRED_REFERENCES:
            _paired(table, psnr_by_sample, reference)
        out[f"{f:g}"] = table
    return out


def _paired(table: dict[str, Any], psnr_by_sample: dict[str, dict[int, float | None]], reference: str) -> None:
    """Add `vs_<reference>` (mean per-sample PSNR difference) and its standard error to each entry."""
    ref = psnr_by_sample.get(reference)
    if not ref or not table.get(reference, {}).get("reached"):
        return
    for method, values in psnr_by_sample.items():
        if method == reference or not table[method].get("reached"):
            continue
        diffs = [values[s] - ref[s] for s in values if s in ref and values[s] is not None and ref[s] is not None]
        if diffs:
            table[method][f"vs_{reference}"] = float(np.mean(diffs))
            table[method][f"vs_{reference}_se"] = float(np.std(diffs) / np.sqrt(len(diffs)))


def ranking(table: dict[str, Any]) -> list[str]:
    """Methods that reached a fraction, best PSNR first."""
    reached = [(m, e["psnr"]) for m, e in table.items() if e.get("reached")]
    return [m for m, _ in sorted(reached, key=lambda item: -item[1])]


# --- progress, plots, summary -----------------------------------------------------------------


def progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    disable = (not enabled) or bool(os.environ.get("TQDM_DISABLE")) or not sys.stderr.isatty()
    return tqdm(total=total, disable=disable, unit="video", desc="bench")


def _closest(rows: list[dict[str, Any]], method: str, target: float = 0.5) -> dict[str, Any] | None:
    cands = [r for r in rows if r["method"] == method and r["nfe_fraction"] is not None]
    return min(cands, key=lambda r: abs(r["nfe_fraction"] - target)) if cands else None


#: how much frames.png amplifies each method's difference to full compute
DIFF_GAIN = 10.0
#: ours bold and warm, the baseline to beat black, each peer a colour of its own
_COLOURS = {"sencache": "tab:red", "sencache-paper": "tab:orange", "uniform": "black", "teacache": "tab:blue",
            "magcache": "tab:purple", "fbcache": "tab:green", "taylorseer": "tab:cyan", "easycache": "tab:brown",
            "dbcache": "tab:pink"}
_AXIS_LABELS = {"psnr": "PSNR vs full compute (dB, higher is better)", "ssim": "SSIM vs full compute",
                "latent_rmse": "final-latent RMSE (lower is better)"}


def write_plots(result: dict[str, Any], frames: dict[tuple[str, Any], np.ndarray], out_dir: Path) -> list[Path]:
    """quality_vs_nfe.png, schedules.png, masks.png (SenCache), frames.png; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["results"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    written = []

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for method in methods:
        if method == "none":  # the reference itself: PSNR infinite, SSIM 1, RMSE 0 at NFE 1
            continue
        # points that computed every step equal the reference: off the quality axes
        mrows = sorted((r for r in rows if r["method"] == method and (r["psnr"] or 0) < PSNR_CAP),
                       key=lambda r: r["nfe_fraction"] or 0)
        xs = [r["nfe_fraction"] for r in mrows]
        for ax, metric in zip(axes, _METRICS):
            ours = method.startswith("sencache")
            ax.plot(xs, [r[metric] for r in mrows], label=method, marker="o", markersize=5 if ours else 3,
                    color=_COLOURS.get(method),
                    linewidth=2.6 if ours else 1.1, alpha=1.0 if ours or method == "uniform" else 0.75,
                    linestyle="-" if ours or method == "uniform" else "--")
    for ax, metric in zip(axes, _METRICS):
        for f in result["matched"]:
            ax.axvline(float(f), color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel("fraction of block-stack compute (measured)")
        ax.set_ylabel(_AXIS_LABELS.get(metric, metric))
        ax.set_xlim(0.15, 1.0)
        ax.grid(alpha=0.3)
    high = [r["psnr"] for r in rows if r["method"] != "none" and r["psnr"] is not None and (r["nfe_fraction"] or 1) < 0.95]
    if high:  # near-identical outputs (PSNR towards the cap) would squash the range that matters
        axes[0].set_ylim(top=min(PSNR_CAP, max(high) + 5))
    if axes[0].get_legend_handles_labels()[0]:  # a bench of `none` alone draws no curve
        axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle(f"{result['model']['name']}: quality vs compute against full compute")
    fig.tight_layout()
    written.append(out_dir / "quality_vs_nfe.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    sched_rows = [r for r in (_closest(rows, m) for m in methods) if r is not None and r["schedule"]]
    if sched_rows:
        fig, ax = plt.subplots(figsize=(10, 0.45 * len(sched_rows) + 1.2))
        ax.imshow(np.array([r["schedule"] for r in sched_rows]), aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax.set_yticks(range(len(sched_rows)), [f"{r['method']} ({r['knob']}, {r['nfe_fraction']:.2f})" for r in sched_rows])
        ax.set_xlabel("transformer call (CFG branches called separately count separately)")
        ax.set_title("share of block-stack compute per call, knob closest to NFE 0.5 (mean over samples)")
        fig.tight_layout()
        written.append(out_dir / "schedules.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    for method in ("sencache", "sencache-paper"):
        row = _closest(rows, method)
        if row is None or not all("mask" in s for s in row["samples"]):
            continue
        masks = np.array([np.asarray(s["mask"]).reshape(-1, len(s["mask"][0]))[0] for s in row["samples"]])
        fig, ax = plt.subplots(figsize=(10, 0.35 * len(masks) + 1.4))
        ax.imshow(masks, aspect="auto", cmap="Greys", vmin=0, vmax=1)
        ax.set_yticks(range(len(masks)), [f"{s['prompt'][:38]} / seed {s['seed']}" for s in row["samples"]], fontsize=7)
        ax.set_xlabel("denoising step (black: computed)")
        ax.set_title(f"{method} per-sample computed steps, knob {row['knob']} (NFE {row['nfe_fraction']:.2f})")
        fig.tight_layout()
        written.append(out_dir / f"masks_{method}.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    from calibration.generate import frames_grid

    picks = [("none", None)]
    for method in ("uniform", "sencache", "taylorseer", "sencache-paper"):
        row = _closest(rows, method)
        if row is not None:
            picks.append((method, row["knob"]))
    videos, labels = [], []
    reference = frames.get(("none", None))
    for method, knob in picks:
        key = (method, knob)
        if key in frames:
            videos.append(frames[key])
            nfe = next(r["nfe_fraction"] for r in rows if r["method"] == method and r["knob"] == knob)
            labels.append(f"{method} {'' if knob is None else knob} NFE {nfe:.2f}")
            if reference is not None and method != "none":
                # at half compute the frames look alike: the amplified difference shows where they are not
                videos.append(np.clip(np.abs(frames[key] - reference) * DIFF_GAIN, 0.0, 1.0))
                labels.append(f"  |{method} - none| x {DIFF_GAIN:g}")
    if videos:
        written.append(out_dir / "frames.png")
        frames_grid(np.stack(videos), labels=labels).save(written[-1])
    return written


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def summary_markdown(result: dict[str, Any]) -> str:
    """The matched table at each fraction, SenCache's rank, the full curves, what could not run."""
    m = result["model"]
    lines = [
        f"# Bench: {m['name']} ({m['class']}, {m['blocks']} blocks)",
        "",
        f"{len(result['prompts'])} held-out prompt(s) x {len(result['seeds'])} seed(s), "
        f"{result['call_args'].get('num_inference_steps')} steps; policy: {result['policy'] or '—'}. "
        f"Quality against full compute of the same prompt and seed; NFE = {result['nfe_measure']}. "
        "Wall-clock speedups compare runs of this bench only, and only mean something on an otherwise idle machine.",
        "",
    ]
    for f, table in result["matched"].items():
        lines += [f"## Matched at NFE fraction {f}", "",
                  "| rank | method | PSNR (dB) ± spread | vs uniform, paired (dB ± s.e.) | SSIM | latent RMSE | fidelity |",
                  "|---:|---|---|---|---|---|---|"]
        order = ranking(table)
        for i, method in enumerate(order, 1):
            e = table[method]
            paired = f"{e['vs_uniform']:+.2f} ± {e['vs_uniform_se']:.2f}" if "vs_uniform" in e else "—"
            lines.append(f"| {i} | {method} | {_fmt(e['psnr'])} ± {_fmt(e['spread'])} | {paired} | "
                         f"{_fmt(e['ssim'], '.4f')} | {_fmt(e['latent_rmse'], '.4f')} | {_fmt(e.get('fidelity'), '.2f')} |")
        for method, e in table.items():
            if not e.get("reached"):
                lines.append(f"| — | {method} | not reached | | | | {e.get('note', '')} |")
        for name in ("sencache", "sencache-paper"):
            if name in table:
                rank = f"{order.index(name) + 1} of {len(order)}" if name in order else "not reached"
                lines.append(f"\n**{name}** rank at {f}: {rank}")
        left_out = {m: e["dominated"] for m, e in table.items() if e.get("dominated")}
        if left_out:
            lines.append("\nLeft out of the curves (another setting of the method computes no more and is closer to "
                         "full compute): " + "; ".join(f"{m}: {', '.join(map(str, k))}" for m, k in left_out.items()))
        lines.append("")
    lines += ["## All runs", "", "| method | knob | NFE | PSNR | SSIM | latent RMSE | wall s | speedup | transformer speedup |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        lines.append(f"| {r['method']} | {r['knob']} | {_fmt(r['nfe_fraction'], '.3f')} | {_fmt(r['psnr'])} | "
                     f"{_fmt(r['ssim'], '.4f')} | {_fmt(r['latent_rmse'], '.4f')} | {_fmt(r['wall_s'])} | "
                     f"{_fmt(r['speedup'])} | {_fmt(r['transformer_speedup'])} |")
    if result["unsupported"]:
        lines += ["", "## Unsupported", ""]
        lines += [f"- **{k}**: {v}" for k, v in result["unsupported"].items()]
    lines += ["", "## Method preparation", ""]
    for name, note in result["preparation"].items():
        if note:
            short = {k: v for k, v in note.items() if k not in ("mag_ratios", "coefficients")}
            lines.append(f"- **{name}**: {short}")
    return "\n".join(lines) + "\n"
