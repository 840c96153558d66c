"""Write the analysis notebooks from the cell sources below, outputs stripped.

    python notebooks/build_notebooks.py          # rewrite notebooks/*.ipynb
    python notebooks/build_notebooks.py --check  # exit 1 when a committed notebook differs

The notebooks are generated so that a review reads Python, not JSON; edit the cells here and
rerun. Cell ids are derived from the notebook name and position, so a rebuild of unchanged cells
is byte-identical (the tests check that the committed files match this script).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def md(text: str) -> tuple[str, str]:
    return ("markdown", textwrap.dedent(text).strip())


def code(text: str) -> tuple[str, str]:
    return ("code", textwrap.dedent(text).strip())


def params(text: str) -> tuple[str, str]:
    return ("parameters", textwrap.dedent(text).strip())


SETUP = code(
    """
    import json
    import os
    import sys
    import warnings
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")  # figures are shown as PNG outputs by `show`, in Jupyter and headless alike
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    from IPython.display import display

    sys.path.insert(0, os.getcwd())  # Jupyter and nbclient run a notebook in its own folder
    from nbinputs import ENV, given, require, scratch, show

    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 30)
    """
)

# --------------------------------------------------------------------------------------------
# sensitivity.ipynb

SENSITIVITY = [
    md(
        """
        # Sensitivity: how well the score predicts the caching error

        Reads a calibration store (`sencache-calibrate collect`) and shows

        1. the sensitivities **J_x** and **J_t** over the denoising trajectory (median and per-run spread),
        2. the predicted score **J_x·‖Δx‖ + J_t·|Δt|** against the measured residual-reuse error (log-log, Spearman ρ),
        3. how much the runs (prompts × seeds) differ from one another,
        4. the propagation gain G(p) when the store has it (`collect --propagation`).

        **Input**: the `STORE` parameter, else `$SENCACHE_STORE`, else a small store collected here on
        the `tiny-wan` fixture (random weights: the numbers mean nothing, the plots show the layout).
        """
    ),
    params(
        """
        # Parameters (papermill: -p STORE calib.duckdb)
        STORE = None  # a calibration store; None: $SENCACHE_STORE, else collect a small one on tiny-wan
        ESTIMATOR = None  # "trajectory" or "reference"; None: the estimator most rows were made with
        """
    ),
    SETUP,
    code(
        """
        from scipy.stats import spearmanr

        from nbinputs import small_store
        from store import CalibrationStore

        path = given(STORE, ENV["store"])
        if path is None:
            path = small_store(scratch())
            print(f"no store given: collected a small one on tiny-wan at {path}")
        require(path, "store", "Collect one: `sencache-calibrate collect --model toy-wan --db calib.duckdb`.")
        with CalibrationStore(path, read_only=True) as db:
            meta = db.meta
            runs, steps, sens = db.runs(), db.steps(), db.sensitivities()
            errors, prop = db.cache_errors(), db.propagation()
        if runs.empty:
            raise ValueError(f"{path}: the store holds no runs; collect some with "
                             f"`sencache-calibrate collect --model MODEL --db {path}`")
        if ESTIMATOR is None:
            ESTIMATOR = sens["estimator"].value_counts().idxmax()
        sens = sens[sens["estimator"] == ESTIMATOR]
        if sens.empty:
            raise ValueError(f"{path}: no sensitivities of estimator {ESTIMATOR!r}")

        # step position p = i / (N - 1): the x axis every policy is written in
        steps = steps.merge(runs[["run_id", "num_steps", "split", "prompt", "seed"]], on="run_id")
        steps["p"] = steps["step"] / (steps["num_steps"] - 1).clip(lower=1)
        sens = sens.merge(steps[["run_id", "step", "timestep", "p", "split"]], on=["run_id", "step"])
        print(f"{path}: {len(runs)} run(s) of {runs['model_name'].iloc[0]} (fingerprint {meta.get('model_fingerprint')}), "
              f"estimator {ESTIMATOR!r}, {len(errors)} measured caching errors")
        runs[["run_id", "prompt", "seed", "num_steps", "split", "guidance_scale", "wall_s"]]
        """
    ),
    md(
        """
        ## 1. J_x and J_t over the trajectory

        Thin lines: one run each. Bold: the median over runs; band: 10–90% of runs. Denoising goes from
        high to low timestep, so the axis runs right to left.
        """
    ),
    code(
        """
        def spread_plot(ax, frame, column, label):
            for i, (_, run) in enumerate(frame.sort_values("timestep").groupby("run_id")):
                ax.plot(run["timestep"], run[column], color="tab:blue", alpha=0.3, lw=1,
                        label="one run" if i == 0 else None)
            by = frame.assign(t=frame["timestep"].round(3)).groupby("t")[column]
            q = by.quantile([0.1, 0.5, 0.9]).unstack()
            ax.fill_between(q.index, q[0.1], q[0.9], color="tab:orange", alpha=0.25, label="10-90% of runs")
            ax.plot(q.index, q[0.5], color="tab:orange", lw=2.5, marker="o", ms=4, label="median")
            ax.set_xlabel("timestep t (model units)")
            ax.set_ylabel(label)
            ax.invert_xaxis()
            if (frame[column].dropna() > 0).all():
                ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            ax.legend()

        fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
        spread_plot(axes[0], sens.dropna(subset=["J_x"]), "J_x", "J_x  = ‖Δf‖ / ‖Δx‖")
        spread_plot(axes[1], sens.dropna(subset=["J_t"]), "J_t", "J_t  = ‖Δf‖ / |Δt|")
        axes[0].set_title("Sensitivity to the latent, J_x")
        axes[1].set_title("Sensitivity to the timestep, J_t")
        fig.suptitle(f"Sensitivities over the trajectory ({ESTIMATOR} estimator, {sens['run_id'].nunique()} runs)")
        show(fig)
        """
    ),
    md(
        """
        ## 2. Predicted score vs measured residual-reuse error

        For every computed step i and lag k the store holds the error of reusing the block-stack
        residual of step i at step i + k. The paper's score with the run's own sensitivities at step i,
        `S = J_x·‖x_{i+k} − x_i‖ + J_t·|t_{i+k} − t_i|`, should rank those errors: Spearman ρ measures that
        ranking (1 = perfect). The dashed line is score = error.
        """
    ),
    code(
        """
        def rho(x, y):
            return spearmanr(x, y).statistic if len(x) >= 3 else float("nan")

        pairs = errors.merge(sens[["run_id", "step", "J_x", "J_t", "p"]], on=["run_id", "step"])
        pairs = pairs.dropna(subset=["J_x", "J_t", "dx", "dt", "residual_error"])
        pairs["score"] = pairs["J_x"] * pairs["dx"] + pairs["J_t"] * pairs["dt"]
        pairs = pairs[(pairs["score"] > 0) & (pairs["residual_error"] > 0)]
        overall = rho(pairs["score"], pairs["residual_error"])

        fig, ax = plt.subplots(figsize=(7.5, 6))
        for lag, g in pairs.groupby("lag"):
            ax.scatter(g["score"], g["residual_error"], s=18, alpha=0.75,
                       label=f"lag {lag}: ρ = {rho(g['score'], g['residual_error']):.2f} (n = {len(g)})")
        if len(pairs):
            lo = min(pairs["score"].min(), pairs["residual_error"].min())
            hi = max(pairs["score"].max(), pairs["residual_error"].max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=1, alpha=0.6, label="score = error")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("predicted score  J_x·‖Δx‖ + J_t·|Δt|")
        ax.set_ylabel("measured residual-reuse error (RMS)")
        ax.set_title(f"Score vs measured error: Spearman ρ = {overall:.2f} (n = {len(pairs)})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(title="lag k (steps reused)")
        show(fig)
        """
    ),
    md(
        """
        ## 3. Per-sample variation

        Left: each run's J_x over the median of all runs at the same step: how far one policy table
        (the median) is from each sample. Right: each run's lag-1 residual-reuse error over the step
        position, calibration runs solid, held-out runs dashed.
        """
    ),
    code(
        """
        median_jx = sens.groupby("step")["J_x"].transform("median")
        sens["J_x_rel"] = sens["J_x"] / median_jx
        lag1 = errors[errors["lag"] == 1].merge(steps[["run_id", "step", "p", "split"]], on=["run_id", "step"])

        fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
        colors = dict(zip(runs["run_id"], plt.cm.tab10.colors * (len(runs) // 10 + 1)))
        labels = {r.run_id: f"{r.prompt[:38]}… seed {r.seed}" for r in runs.itertuples()}
        for run_id, g in sens.sort_values("p").groupby("run_id"):
            axes[0].plot(g["p"], g["J_x_rel"], marker="o", ms=3, color=colors[run_id], label=labels[run_id])
        axes[0].axhline(1.0, color="k", lw=1, ls=":")
        axes[0].set_xlabel("step position p = i / (N − 1)")
        axes[0].set_ylabel("J_x / median over runs")
        axes[0].set_title("Each run's J_x relative to the median table")
        axes[0].legend(fontsize=8, loc="best")
        for run_id, g in lag1.sort_values("p").groupby("run_id"):
            dashed = g["split"].iloc[0] == "holdout"
            axes[1].plot(g["p"], g["residual_error"], marker="o", ms=3, color=colors[run_id],
                         ls="--" if dashed else "-", label=labels[run_id] + (" (holdout)" if dashed else ""))
        axes[1].set_yscale("log")
        axes[1].set_xlabel("step position p = i / (N − 1)")
        axes[1].set_ylabel("lag-1 residual-reuse error (RMS)")
        axes[1].set_title("Each run's error of reusing the residual one step later")
        for ax in axes:
            ax.grid(alpha=0.3, which="both")
        axes[1].legend(fontsize=8, loc="best")
        show(fig)

        per_run = pd.DataFrame({
            "median J_x": sens.groupby("run_id")["J_x"].median(),
            "median J_t": sens.groupby("run_id")["J_t"].median(),
            "mean lag-1 error": lag1.groupby("run_id")["residual_error"].mean(),
            "path length Σ‖Δx‖": steps.groupby("run_id")["dx_norm"].sum(),
        })
        runs.set_index("run_id")[["prompt", "seed", "split"]].join(per_run).round(5)
        """
    ),
    md(
        """
        ## 4. Propagation gain G(p)

        How much a unit error injected at step position p moves the final output (`collect --propagation`).
        Errors made where G is large are expensive: the threshold ε(p) should be strict there.
        """
    ),
    code(
        """
        if prop.empty:
            print("no propagation gains in this store: collect with `--propagation` to measure G(p)")
        else:
            prop = prop.merge(runs[["run_id", "num_steps"]], on="run_id")
            prop["p"] = prop["step"] / (prop["num_steps"] - 1).clip(lower=1)
            fig, ax = plt.subplots(figsize=(7.5, 4.5))
            for i, (_, g) in enumerate(prop.sort_values("p").groupby("run_id")):
                ax.plot(g["p"], g["gain"], color="tab:blue", alpha=0.35, marker="o", ms=3,
                        label="one run" if i == 0 else None)
            med = prop.groupby("p")["gain"].median()
            ax.plot(med.index, med.values, color="tab:red", lw=2.5, marker="s", label="median")
            ax.axhline(1.0, color="k", lw=1, ls=":", label="gain 1 (error neither grows nor shrinks)")
            if (prop["gain"].dropna() > 0).all():
                ax.set_yscale("log")
            ax.set_xlabel("step position p where the error is injected")
            ax.set_ylabel("final error / injected error")
            ax.set_title("Propagation gain G(p)")
            ax.grid(alpha=0.3, which="both")
            ax.legend()
            show(fig)
        """
    ),
]

# --------------------------------------------------------------------------------------------
# policies.ipynb

POLICIES = [
    md(
        """
        # Policies: the Pareto front, the thresholds, and what each sample computed

        Reads a fit result (`<store>.fit.json`, from `sencache-calibrate fit`) and/or a policy file
        (`sencache-calibrate export`) and shows

        1. the Pareto front of the search (final-output error vs fraction of steps computed) with the
           chosen operating points and the references (evenly spaced skipping, the paper's setting),
        2. which predictor tracks the measured caching error best,
        3. the threshold curve ε(p) of each operating point,
        4. the computed mask of every sample of a batch under each operating point (`sencache.apply`).

        **Input**: the `FIT` and `POLICY` parameters, else `$SENCACHE_FIT` and `$SENCACHE_POLICY`; with
        neither, a small store is collected on `tiny-wan`, fitted and exported here.
        """
    ),
    params(
        """
        # Parameters (papermill: -p FIT calib.fit.json -p POLICY policy.json)
        FIT = None  # <store>.fit.json; None: $SENCACHE_FIT
        POLICY = None  # a policy JSON; None: $SENCACHE_POLICY (with FIT only: built from the fitted store)
        STEPS = None  # steps of the masked runs; None: $SENCACHE_STEPS, else the fit's, else the model's default
        PROMPTS = 2  # samples in the masked batch (held-out zoo prompts)
        MASKS = True  # run the policy's model to show the computed masks
        """
    ),
    SETUP,
    code(
        """
        from nbinputs import small_fit, small_store
        from policies import Policy

        fit_path, policy_path = given(FIT, ENV["fit"]), given(POLICY, ENV["policy"])
        if fit_path is None and policy_path is None:
            fit_path, policy_path = small_fit(small_store(scratch()))
            print(f"no fit or policy given: fitted a small tiny-wan store: {fit_path}, {policy_path}")

        result = None
        if fit_path is not None:
            require(fit_path, "fit result", "Fit a store: `sencache-calibrate fit --db calib.duckdb`.")
            result = json.loads(fit_path.read_text())
            if result.get("format") != "sencache-fit":
                raise ValueError(f"{fit_path}: not a SenCache fit result (format 'sencache-fit' expected)")

        if policy_path is not None:
            policy = Policy.load(require(policy_path, "policy", "Export one: `sencache-calibrate export --db calib.duckdb --out policy.json`."))
        else:  # a fit result alone: build its policy from the fitted store (beside the fit result, or where it was)
            from calibration.export import build_policy
            from calibration.fitdata import load_fit_data

            stores = [p for p in (fit_path.parent / Path(result["store"]).name, Path(result["store"])) if p.exists()]
            policy = build_policy(result, load_fit_data(stores[0]), source=str(fit_path)) if stores else None
            if policy is None:
                print(f"no policy given and the fitted store {result['store']} is gone: no masks")

        source = result["operating_points"] if result is not None else [p.to_dict() for p in policy.operating_points]
        points = pd.DataFrame([{k: p.get(k) for k in ("name", "origin", "forecast", "target_nfe_fraction",
                                                      "expected_nfe_fraction", "expected_error", "max_skips",
                                                      "warmup_steps", "final_steps")}
                               for p in source])
        if result is not None:
            print(f"fit of {result['model']['name']}: objective {result['objective']}, {result['trials']} trials, "
                  f"validated on {result['validation']}")
        points.set_index("name")
        """
    ),
    md(
        """
        ## 1. Pareto front and operating points

        Filled markers: the Pareto front of the search, measured on the calibration runs. Each operating
        point is drawn where it was chosen (star, calibration runs) and where it landed on the held-out
        runs (ring); crosses are evenly spaced skipping at the same targets, measured the same way.
        """
    ),
    code(
        """
        fig, ax = plt.subplots(figsize=(8.5, 5.5))
        if result is not None:
            front = pd.DataFrame(result["pareto_front"]).sort_values("nfe_fraction")
            ax.plot(front["nfe_fraction"], front["error"], "o-", color="0.45", ms=6, label="Pareto front (calibration runs)")
            for i, p in enumerate(result["operating_points"]):
                color = plt.cm.tab10.colors[i % 10]
                if "calib" in p:
                    ax.plot(p["calib"]["nfe_fraction"], p["calib"]["error"], "*", ms=16, color=color,
                            label=f"{p['name']} (chosen)")
                v = p.get("validation") or {}
                if v:
                    ax.plot(v["nfe_fraction"], v["error"], "o", ms=11, mfc="none", mew=2, color=color,
                            label=f"{p['name']} on {result['validation'].split()[0]}")
                    if "calib" in p:
                        ax.annotate("", (v["nfe_fraction"], v["error"]), (p["calib"]["nfe_fraction"], p["calib"]["error"]),
                                    arrowprops={"arrowstyle": "->", "color": color, "alpha": 0.6})
            uniform = [u for u in (result.get("references", {}).get("uniform") or {}).values() if u]
            if uniform:
                ax.plot([u["nfe_fraction"] for u in uniform], [u["error"] for u in uniform], "x", ms=10, mew=2,
                        color="k", label="evenly spaced skipping")
            paper = (result.get("references", {}).get("paper") or {}).get("validation")
            if paper:
                ax.plot(paper["nfe_fraction"], paper["error"], "D", ms=8, color="tab:brown", label="paper setting (uncalibrated)")
            title = f"Error vs compute of {result['model']['name']} ({result['objective']} objective)"
        else:
            for i, p in enumerate(policy.operating_points):
                ax.plot(p.expected_nfe_fraction, p.expected_error, "*", ms=16, color=plt.cm.tab10.colors[i % 10],
                        label=p.name)
            title = f"Operating points of {policy.model.name} (no fit result: no Pareto front)"
        ax.set_xlim(0, 1.05)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("fraction of steps computed (NFE fraction)")
        ax.set_ylabel("final-output error (RMS vs full compute)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper right")
        show(fig)
        """
    ),
    md(
        """
        ## 2. Which signal tracks the caching error

        The fit compares its predictor with the paper's uncalibrated score and the peers' signals on the
        same held-out pairs: the higher the Spearman ρ, the better the signal ranks the real errors.
        """
    ),
    code(
        """
        comparison = pd.DataFrame(result["predictor_comparison"]) if result is not None else pd.DataFrame()
        if comparison.empty:
            print("no predictor comparison (needs a fit result)")
        else:
            comparison = comparison.dropna(subset=["spearman"]).sort_values("spearman")
            fig, ax = plt.subplots(figsize=(8.5, 0.45 * len(comparison) + 1.5))
            bars = ax.barh(comparison["name"], comparison["spearman"],
                           color=["tab:orange" if n.startswith("sencache") else "tab:gray" for n in comparison["name"]])
            ax.bar_label(bars, fmt="%.2f", padding=3)
            ax.set_xlim(min(0.0, comparison["spearman"].min()) - 0.05, 1.08)
            ax.set_xlabel("Spearman ρ with the measured residual-reuse error (held-out pairs)")
            ax.set_title("Predictors of the caching error")
            ax.grid(alpha=0.3, axis="x")
            show(fig)
            display(comparison.set_index("name")[["spearman", "r2", "n"]].round(3))
        """
    ),
    md(
        """
        ## 3. Threshold curves ε(p)

        A step is skipped when its score is at most ε at its position p = i / (N − 1), outside the
        warm-up and final zones and with fewer than K consecutive skips. Dots are the knots.
        """
    ),
    code(
        """
        from policies import OperatingPoint

        # a fit result's points carry more; static points (a schedule, no ε) are not plotted here
        fields = OperatingPoint.KEYS + OperatingPoint.STATIC_KEYS + OperatingPoint.OPTIONAL_KEYS
        ops = (list(policy.operating_points) if policy is not None
               else [OperatingPoint.from_dict({k: p[k] for k in fields if k in p}) for p in source])
        ops = [p for p in ops if not p.static]
        grid = np.linspace(0.0, 1.0, 401)
        fig, ax = plt.subplots(figsize=(8.5, 5))
        for i, point in enumerate(ops):
            color = plt.cm.tab10.colors[i % 10]
            ax.plot(grid, point.eps(grid), color=color, lw=2, ls=("-", "--", "-.", ":")[i % 4],
                    label=f"{point.name}: K = {point.max_skips}, warm-up {point.warmup_steps:.3g}, "
                          f"final {point.final_steps:.3g}, forecast {point.forecast}")
            ax.plot(point.eps.positions, point.eps.values, "o", color=color, ms=4)
        values = np.concatenate([np.asarray(p.eps.values) for p in ops]) if ops else np.ones(1)
        if (values > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("step position p = i / (N − 1)")
        ax.set_ylabel("threshold ε(p) (score units)")
        ax.set_title("ε(p) of each operating point")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        show(fig)
        """
    ),
    md(
        """
        ## 4. What each sample computed

        The policy is applied with `sencache.apply` to its own model and a batch of held-out prompts is
        generated once per operating point. Samples decide independently: a filled cell is a step at
        which that sample ran the block stack.
        """
    ),
    code(
        """
        from matplotlib.colors import ListedColormap

        reports = {}
        if not MASKS or policy is None:
            print("masks skipped (MASKS = False or no policy)")
        else:
            import torch

            import sencache
            from calibration.models import load_model
            from calibration.zoo.data import heldout_prompts

            loaded = load_model(policy.model.name)
            pipe = loaded.pipe
            pipe.set_progress_bar_config(disable=True)
            steps = STEPS or os.environ.get(ENV["steps"]) or (result or {}).get("search_space", {}).get("num_steps")
            kwargs = loaded.call_kwargs(num_inference_steps=int(steps) if steps else None)
            prompts = heldout_prompts()[:PROMPTS]
            for name in policy.operating_point_names:
                handle = sencache.apply(pipe, policy, operating_point=name)
                try:
                    pipe(prompt=prompts, negative_prompt=[""] * len(prompts), generator=torch.Generator().manual_seed(0),
                         output_type="latent", **kwargs)
                    reports[name] = handle.report()
                finally:
                    sencache.remove(pipe)
                print(f"{name:>9}: {reports[name].summary()}")

        if reports:
            fig, axes = plt.subplots(len(reports), 1, figsize=(10, 1.1 + 0.55 * PROMPTS * len(reports)), squeeze=False)
            for ax, (name, rep) in zip(axes[:, 0], reports.items()):
                ax.imshow(rep.computed.astype(float), aspect="auto", cmap=ListedColormap(["#eeeeee", "tab:blue"]),
                          vmin=0, vmax=1, interpolation="nearest")
                ax.set_yticks(range(rep.num_samples), [f"{p[:34]}… ({n})" for p, n in zip(prompts, rep.nfe_per_sample)],
                              fontsize=8)
                ax.set_xticks(range(rep.num_steps))
                ax.set_title(f"{name}: computed {rep.nfe_fraction.mean():.0%} of steps (blue = computed, grey = reused)",
                             fontsize=10)
            axes[-1, 0].set_xlabel("denoising step")
            fig.suptitle(f"Per-sample computed masks of {policy.model.name}, {rep.num_steps} steps")
            fig.tight_layout()
            show(fig)
        """
    ),
    code(
        """
        if reports:
            name = policy.default_operating_point if policy.default_operating_point in reports else next(iter(reports))
            rep = reports[name]
            fig, ax = plt.subplots(figsize=(9, 4.5))
            x = np.arange(rep.num_steps)
            ax.plot(x, rep.thresholds, "k-", lw=2, label="ε(p_i)")
            for s in range(rep.num_samples):
                color = plt.cm.tab10.colors[s % 10]
                skipped = ~rep.computed[s]
                ax.plot(x, rep.scores[s], "o-", color=color, ms=5, alpha=0.8, label=f"sample {s} score")
                ax.plot(x[skipped], rep.scores[s][skipped], "x", color=color, ms=10, mew=2)
            ax.set_xlabel("denoising step")
            ax.set_ylabel("score S_i (× = skipped)")
            ax.set_title(f"Scores against the threshold, operating point {name!r}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            show(fig)
        """
    ),
]

# --------------------------------------------------------------------------------------------
# bench.ipynb

BENCH = [
    md(
        """
        # Bench: SenCache against its peers

        Reads a bench folder (`sencache-calibrate bench --out bench/`, its `bench.json`) and shows

        1. quality against compute for every method: PSNR of the decoded frames, RMSE of the final
           latents, and wall-clock speedup, each against the fraction of block-stack work that ran,
        2. the methods compared at matched NFE fractions, as a chart and as a table.

        **Input**: the `BENCH` parameter (the folder or its `bench.json`), else `$SENCACHE_BENCH`; with
        neither, a tiny-wan store is collected, fitted, exported and benchmarked here (a few minutes on CPU).
        """
    ),
    params(
        """
        # Parameters (papermill: -p BENCH bench/)
        BENCH = None  # a bench folder or bench.json; None: $SENCACHE_BENCH, else build a small one on tiny-wan
        """
    ),
    SETUP,
    code(
        """
        from nbinputs import small_bench, small_fit, small_store

        path = given(BENCH, ENV["bench"])
        if path is None:
            folder = scratch()
            path = small_bench(folder, small_fit(small_store(folder))[1])
            print(f"no bench given: benchmarked a small tiny-wan policy into {path}")
        if path.is_dir():
            path = path / "bench.json"
        require(path, "bench result", "Run one: `sencache-calibrate bench --model toy-wan --policy POLICY --out bench/`.")
        bench = json.loads(path.read_text())
        if bench.get("format", "sencache-bench") != "sencache-bench" or "results" not in bench:
            raise ValueError(f"{path}: not a SenCache bench result (no `results`)")

        results = pd.DataFrame(bench["results"])
        results = results.drop(columns=[c for c in ("samples", "schedule", "config") if c in results])
        results["knob"] = [("" if k is None or k != k else str(k)) for k in results["knob"]]
        model = bench.get("model", {}).get("name", "?")
        print(f"{path}: {model}, {len(bench.get('prompts', []))} prompt(s) x {len(bench.get('seeds', []))} seed(s), "
              f"{results['method'].nunique()} method(s), call {bench.get('call_args')}")
        for name, why in (bench.get("unsupported") or {}).items():
            print(f"  {name}: not run here ({why})")
        cols = [c for c in ("method", "knob", "nfe_fraction", "psnr", "ssim", "latent_rmse", "wall_s", "speedup") if c in results]
        results[cols].round(4)
        """
    ),
    md(
        """
        ## 1. Quality against compute

        One curve per method, one point per knob of its sweep. Full compute is the reference (PSNR is
        capped where an output is identical to it: those points sit on the top edge, ▲). Dotted lines:
        the fractions at which methods are matched below.
        """
    ),
    code(
        """
        CAP = 100.0  # calibration.bench_report.PSNR_CAP: identical outputs
        fractions = sorted(float(f) for f in bench.get("matched", {}))
        methods = [m for m in dict.fromkeys(results["method"]) if m != "none"]
        colors = {m: plt.cm.tab10.colors[i % 10] for i, m in enumerate(methods)}
        finite = results.loc[(results["method"] != "none") & (results["psnr"] < CAP), "psnr"]
        top = (finite.max() + 3) if len(finite) else CAP

        fig, axes = plt.subplots(1, 3, figsize=(17, 5))
        for m in methods:
            g = results[results["method"] == m].sort_values("nfe_fraction")
            psnr = g["psnr"].clip(upper=top)
            axes[0].plot(g["nfe_fraction"], psnr, "o-", color=colors[m], label=m)
            capped = g["psnr"] >= CAP
            axes[0].plot(g.loc[capped, "nfe_fraction"], psnr[capped], "^", ms=10, color=colors[m])
            if m == "sencache":  # name the operating points; knobs landing on one spot share a label
                spots = g.assign(y=psnr.round(2), x=g["nfe_fraction"].round(3)).groupby(["x", "y"])["knob"]
                for (x, y), knobs in spots:
                    axes[0].annotate(", ".join(knobs), (x, y), fontsize=7, xytext=(4, -10), textcoords="offset points")
            axes[1].plot(g["nfe_fraction"], g["latent_rmse"], "o-", color=colors[m], label=m)
            if "speedup" in g:  # wall clock is noisy: points, not a curve
                axes[2].plot(g["nfe_fraction"], g["speedup"], "o", ms=7, alpha=0.8, color=colors[m], label=m)
        nfe = np.linspace(0.25, 1.0, 50)
        axes[2].plot(nfe, 1 / nfe, "k--", lw=1, label="ideal 1 / NFE fraction")
        axes[2].axhline(1.0, color="k", lw=0.8, ls=":")
        axes[0].set_ylim(top=top + 1)
        axes[0].set_ylabel("PSNR vs full compute (dB, higher is better)")
        axes[1].set_ylabel("final-latent RMSE vs full compute (lower is better)")
        if (results.loc[results["method"] != "none", "latent_rmse"] > 0).all():
            axes[1].set_yscale("log")
        axes[2].set_ylabel("wall-clock speedup over full compute")
        for ax, title in zip(axes, ("Frame quality", "Latent error", "Speed")):
            for f in fractions:
                ax.axvline(f, color="0.6", ls=":", lw=1)
            ax.set_xlabel("NFE fraction (block-stack work that ran)")
            ax.set_title(title)
            ax.grid(alpha=0.3, which="both")
        axes[0].legend(fontsize=8)
        axes[2].legend(fontsize=8)
        fig.suptitle(f"Quality vs compute on {model} ({bench.get('device', '?')})")
        show(fig)
        """
    ),
    md(
        """
        ## 2. At matched compute

        Each method's curve interpolated at the matched NFE fractions; error bars: the spread (standard
        deviation) over prompts and seeds. A method whose sweep does not reach a fraction has no bar there.
        """
    ),
    code(
        """
        rows = []
        for fraction, table in bench.get("matched", {}).items():
            for method, entry in table.items():
                rows.append({"fraction": float(fraction), "method": method,
                             **{k: entry.get(k) for k in ("psnr", "ssim", "latent_rmse", "spread")},
                             "reached": entry.get("reached", entry.get("psnr") is not None), "note": entry.get("note", "")})
        matched = pd.DataFrame(rows)
        if matched.empty:
            print("no matched comparison in this bench result")
        else:
            matched = matched.sort_values(["fraction", "psnr"], ascending=[False, False])
            fig, ax = plt.subplots(figsize=(10, 4.8))
            order = list(dict.fromkeys(matched["method"]))
            width = 0.7 / max(len(order), 1)
            xs = {f: i for i, f in enumerate(sorted(matched["fraction"].unique(), reverse=True))}
            for j, m in enumerate(order):
                g = matched[matched["method"] == m]
                x = np.array([xs[f] for f in g["fraction"]]) + (j - (len(order) - 1) / 2) * width
                reached = g["reached"].to_numpy(bool)
                y = g["psnr"].astype(float).clip(upper=top).to_numpy()
                ax.errorbar(x[reached], y[reached], yerr=g["spread"].astype(float).fillna(0).to_numpy()[reached],
                            fmt="o", ms=9, capsize=4, color=colors.get(m, "0.5"), label=m)
                for xi, yi in zip(x[reached], y[reached]):
                    ax.annotate(f"{yi:.1f}", (xi, yi), fontsize=7, xytext=(6, 0), textcoords="offset points", va="center")
                for xi in x[~reached]:
                    ax.annotate("not\\nreached", (xi, 0.02), xycoords=("data", "axes fraction"), fontsize=7,
                                ha="center", color=colors.get(m, "0.5"))
            ax.set_xticks(list(xs.values()), [f"NFE {f:g}" for f in xs])
            ax.set_xlim(-0.6, len(xs) - 0.4)
            ax.set_ylabel("PSNR vs full compute (dB)")
            ax.set_title(f"Methods at matched compute on {model}")
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=8, ncols=2)
            show(fig)
        matched.set_index(["fraction", "method"]).round(4) if not matched.empty else matched
        """
    ),
]

NOTEBOOKS = {"sensitivity": SENSITIVITY, "policies": POLICIES, "bench": BENCH}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook `name`, outputs empty, with deterministic cell ids."""
    cells = []
    for i, (kind, source) in enumerate(NOTEBOOKS[name]):
        cell_id = f"{name}-{i:02d}"
        if kind == "markdown":
            cells.append(new_markdown_cell(source, id=cell_id))
        else:
            cell = new_code_cell(source, id=cell_id)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
            cells.append(cell)
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(name)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a notebook on disk differs from this script")
    args = parser.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        path = HERE / f"{name}.ipynb"
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(path)
    if stale:
        print(f"out of date: {', '.join(stale)}; run `python notebooks/build_notebooks.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
