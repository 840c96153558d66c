"""Write the analysis notebooks from the short cells below, outputs stripped.

    python notebooks/build_notebooks.py          # rewrite notebooks/*.ipynb
    python notebooks/build_notebooks.py --check  # exit 1 when a committed notebook differs

The notebooks are generated so that a review reads Python, not JSON; edit the cells here and
rerun. What the cells call lives in `calibration/analysis/` (one module per notebook). Cell ids
are derived from the notebook name and position, so a rebuild of unchanged cells is
byte-identical (the tests check that the committed files match this script).
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
    import os
    import sys
    import warnings

    import pandas as pd
    from IPython.display import display

    sys.path.insert(0, os.getcwd())  # Jupyter and nbclient run a notebook in its own folder
    from nbinputs import ENV, given, require, scratch, show

    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 30)
    """
)

# The analysis lives in calibration/analysis/ (one module per notebook, unit-tested in
# tests/calibration/analysis/); a cell here only picks the input and calls it.

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
        The analysis is `calibration.analysis.sensitivity`.
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
        from calibration.analysis import sensitivity as sa
        from nbinputs import small_store

        path = given(STORE, ENV["store"])
        if path is None:
            path = small_store(scratch())
            print(f"no store given: collected a small one on tiny-wan at {path}")
        require(path, "store", "Collect one: `sencache-calibrate collect --model toy-wan --db calib.duckdb`.")
        data = sa.load_sensitivity(path, ESTIMATOR)
        print(data.summary())
        data.runs[["run_id", "prompt", "seed", "num_steps", "split", "guidance_scale", "wall_s"]]
        """
    ),
    md(
        """
        ## 1. J_x and J_t over the trajectory

        Thin lines: one run each. Bold: the median over runs; band: 10–90% of runs. Denoising goes from
        high to low timestep, so the axis runs right to left.
        """
    ),
    code("show(sa.plot_sensitivities(data))"),
    md(
        """
        ## 2. Predicted score vs measured residual-reuse error

        For every computed step i and lag k the store holds the error of reusing the block-stack
        residual of step i at step i + k. The paper's score with the run's own sensitivities at step i,
        `S = J_x·‖x_{i+k} − x_i‖ + J_t·|t_{i+k} − t_i|`, should rank those errors: Spearman ρ measures that
        ranking (1 = perfect). The dashed line is score = error.
        """
    ),
    code("show(sa.plot_score_vs_error(sa.score_pairs(data.errors, data.sens)))"),
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
        show(sa.plot_per_sample(data))
        sa.per_run_table(data).round(5)
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
        fig = sa.plot_propagation(data)
        if fig is None:
            print("no propagation gains in this store: collect with `--propagation` to measure G(p)")
        else:
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
        The analysis is `calibration.analysis.policies`.
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
        from calibration.analysis import policies as pa
        from nbinputs import small_fit, small_store
        from policies import Policy

        fit_path, policy_path = given(FIT, ENV["fit"]), given(POLICY, ENV["policy"])
        if fit_path is None and policy_path is None:
            fit_path, policy_path = small_fit(small_store(scratch()))
            print(f"no fit or policy given: fitted a small tiny-wan store: {fit_path}, {policy_path}")
        result = None
        if fit_path is not None:
            result = pa.load_fit(require(fit_path, "fit result", "Fit one: `sencache-calibrate fit --db calib.duckdb`."))
            print(f"fit of {result['model']['name']}: objective {result['objective']}, {result['trials']} trials, "
                  f"validated on {result['validation']}")
        if policy_path is not None:
            fix = "Export one: `sencache-calibrate export --db calib.duckdb --out policy.json`."
            policy = Policy.load(require(policy_path, "policy", fix))
        else:  # a fit result alone: build its policy from the fitted store
            policy = pa.policy_of_fit(result, fit_path)
            if policy is None:
                print(f"no policy given and the fitted store {result['store']} is gone: no masks")
        pa.points_table(result, policy)
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
    code("show(pa.plot_pareto(result, policy))"),
    md(
        """
        ## 2. Which signal tracks the caching error

        The fit compares its predictor with the paper's uncalibrated score and the peers' signals on the
        same held-out pairs: the higher the Spearman ρ, the better the signal ranks the real errors.
        """
    ),
    code(
        """
        comparison = pa.predictor_table(result)
        if comparison.empty:
            print("no predictor comparison (needs a fit result)")
        else:
            show(pa.plot_predictors(comparison))
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
    code("show(pa.plot_thresholds(pa.operating_points(result, policy)))"),
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
        reports = {}
        if not MASKS or policy is None:
            print("masks skipped (MASKS = False or no policy)")
        else:
            from calibration.zoo.data import heldout_prompts

            prompts = heldout_prompts()[:PROMPTS]
            steps = STEPS or os.environ.get(ENV["steps"]) or (result or {}).get("search_space", {}).get("num_steps")
            reports = pa.run_masks(policy, prompts, steps)
            for name, rep in reports.items():
                print(f"{name:>9}: {rep.summary()}")
            show(pa.plot_masks(reports, prompts, policy.model.name))
        """
    ),
    code(
        """
        if reports:
            name = policy.default_operating_point if policy.default_operating_point in reports else next(iter(reports))
            show(pa.plot_scores(reports[name], name))
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
        The analysis is `calibration.analysis.bench`.
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
        from calibration.analysis import bench as ba
        from nbinputs import small_bench, small_fit, small_store

        path = given(BENCH, ENV["bench"])
        if path is None:
            folder = scratch()
            path = small_bench(folder, small_fit(small_store(folder))[1])
            print(f"no bench given: benchmarked a small tiny-wan policy into {path}")
        path, bench = ba.load_bench(path)
        results = ba.results_table(bench)
        model = bench.get("model", {}).get("name", "?")
        print(f"{path}: {model}, {len(bench.get('prompts', []))} prompt(s) x {len(bench.get('seeds', []))} seed(s), "
              f"{results['method'].nunique()} method(s), call {bench.get('call_args')}")
        for name, why in (bench.get("unsupported") or {}).items():
            print(f"  {name}: not run here ({why})")
        results[[c for c in ba.RESULT_COLUMNS if c in results]].round(4)
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
    code("show(ba.plot_quality(bench, results))"),
    md(
        """
        ## 2. At matched compute

        Each method's curve interpolated at the matched NFE fractions; error bars: the spread (standard
        deviation) over prompts and seeds. A method whose sweep does not reach a fraction has no bar there.
        """
    ),
    code(
        """
        matched = ba.matched_table(bench)
        if matched.empty:
            print("no matched comparison in this bench result")
        else:
            show(ba.plot_matched(matched, results, model))
        matched.set_index(["fraction", "method"]).round(4)
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
