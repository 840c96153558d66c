"""`sencache-calibrate`: argument parsing and error reporting only; the work is in `calibration`.

Exit codes: 0 ok, 1 the work failed, 2 bad input (a file, a flag, a model). Errors print as one
line; `--debug` shows the traceback. Heavy imports happen inside the command that needs them.
Each `_add_<command>` function below owns one sub-command: its parser and its one library call.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2

Handler = Callable[[argparse.Namespace], int | None]


def _command(sub: argparse._SubParsersAction, name: str, handler: Handler, doc: str) -> argparse.ArgumentParser:
    """Add a sub-command whose `--help` is `doc` (first line: summary; the rest: an example)."""
    doc = inspect.cleandoc(doc)
    parser = sub.add_parser(
        name,
        help=doc.splitlines()[0],
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="toy-wan",
        help="zoo name (toy-wan, toy-cogvideox, toy-ltx), tiny fixture (tiny-wan, ...), "
        "pipeline folder, or Hub repo id (default: %(default)s)",
    )


# --- quickstart ------------------------------------------------------------------------------


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from calibration.quickstart import quickstart

    result = quickstart(
        model=args.model,
        out=args.out,
        prompts=args.prompts,
        seeds=args.seeds,
        steps=args.steps,
        trials=args.trials,
        bench_seeds=args.bench_seeds,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(result.summary())
    return EXIT_OK


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "quickstart",
        _cmd_quickstart,
        """Run collect -> fit -> export -> bench on a bundled toy model and print what it found.

        About 13 minutes on 2 busy CPU cores with the defaults. Everything lands in --out: the calibration
        store, the fit report, the policy JSON and the benchmark (bench.json, plots, summary.md).

        Example:
          sencache-calibrate quickstart --model toy-wan --out sencache-quickstart
        """,
    )
    _add_model_args(p)
    p.add_argument("--out", default="sencache-quickstart", help="folder for every output (default: %(default)s)")
    p.add_argument("--prompts", type=int, default=8, help="calibration prompts (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per calibration prompt (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's zoo.json)")
    p.add_argument("--trials", type=int, default=20, help="Optuna trials of the fit (default: %(default)s)")
    p.add_argument("--bench-seeds", type=int, default=1,
                   help="seeds per held-out prompt in the bench (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out folder")


# --- generate ---------------------------------------------------------------------------------


def _cmd_generate(args: argparse.Namespace) -> int:
    from calibration.generate import generate_grid

    path = generate_grid(
        model=args.model,
        prompts=args.prompt,
        out=Path(args.out),
        steps=args.steps,
        seed=args.seed,
        policy=args.policy,
    )
    logging.getLogger("sencache.cli").info("wrote %s", path)
    print(path)
    return EXIT_OK


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "generate",
        _cmd_generate,
        """Generate videos from prompts and write a PNG grid of their frames.

        Example:
          sencache-calibrate generate --model toy-wan --prompt "a red circle moving left on a blue background" --out grid.png
        """,
    )
    _add_model_args(p)
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    p.add_argument("--out", default="grid.png", help="PNG file to write (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's zoo.json)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: %(default)s)")
    p.add_argument("--policy", default=None, help="a SenCache policy JSON to apply while generating")


# --- fit ---------------------------------------------------------------------------------------


def _cmd_fit(args: argparse.Namespace) -> int:
    from calibration.fit import fit, fit_result_path

    fit(
        args.db,
        trials=args.trials,
        objective=args.objective,
        seed=args.seed,
        storage=args.storage,
        knots=args.knots,
        model=args.model,
        show_progress=not args.quiet and sys.stderr.isatty(),
        validate=args.validate,
        static_evals=args.static_evals,
        residual_change=args.residual_change,
        replay_compounding=args.replay_compounding,
        twin_margin_db=args.twin_margin,
        replay_local_moves=args.replay_local_moves,
    )
    print(fit_result_path(args.db))
    return EXIT_OK


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "fit",
        _cmd_fit,
        """Fit the predictor and search the operating points of a calibration store.

        Regresses the measured caching error on the sensitivity terms (a, b, c >= 0), then runs an
        Optuna study over the threshold knots, K and the warm-up/final zones, scoring each trial on
        final-output error vs fraction of steps computed; validates the chosen points on the
        holdout runs. Writes <store>.fit.json and <store>.fit.png beside the store; the study lives
        in --storage (default <store>.optuna.log) and resumes where it stopped.

        Example:
          sencache-calibrate fit --db calib.duckdb --trials 60 --objective rerun --seed 0
        """,
    )
    p.add_argument("--db", required=True, help="the calibration store (from `collect`)")
    p.add_argument("--trials", type=int, default=60, help="finished trials the study must hold (default: %(default)s)")
    p.add_argument("--objective", choices=("rerun", "replay"), default=None,
                   help="rerun: real cached re-runs (default for zoo/tiny models and local folders); "
                   "replay: simulate on stored trajectories, no model needed (default otherwise)")
    p.add_argument("--validate", choices=("rerun", "replay"), default=None,
                   help="objective that measures the chosen points on the holdout runs (default: --objective's)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed: same store + seed, same fit (default: %(default)s)")
    p.add_argument("--storage", default=None, help="Optuna storage URL or journal file (default: <store>.optuna.log)")
    p.add_argument("--knots", type=int, default=10, help="threshold knots over the step position, 8-16 (default: %(default)s)")
    p.add_argument("--model", default=None, help="model to re-run (default: the store's model name)")
    p.add_argument("--static-evals", type=int, default=40, metavar="EVALS",
                   help="evaluations per operating point spent moving the best static schedule's computed steps "
                   "one at a time while the error falls; the result competes for the point and is a candidate "
                   "static twin; 0 turns it off (default: %(default)s)")
    p.add_argument("--residual-change", action="store_true",
                   help="let the score weigh each sample's residual change between its last two computed steps "
                   "(predictor term e), in every reuse mode where it lifts the held-out rank correlation; the "
                   "runtime tracks it per sample. Off by default: on the toys it lifts the forecast modes' "
                   "held-out rho from 0.69-0.86 to 0.94-0.97; toy-wan's shipped policy uses it (every point "
                   "score-driven and ahead of its static twin), but a refit with it trades quality between "
                   "compute fractions (docs/experiments.md, 'The residual-change term')")
    p.add_argument("--twin-margin", type=float, default=None, metavar="DB",
                   help="a point ships score-driven only when it beats its static twin (the best static schedule "
                   "of the same reuse mode at its compute) on the holdout runs by more than this many dB of "
                   "paired per-run error; otherwise the twin ships, labelled static (default: 0.5)")
    p.add_argument("--replay-compounding", choices=("calibrated", "segments"), default="calibrated",
                   help="how replay adds up a mask's skips: calibrated: per reuse mode, fitted on the store's "
                   "whole-mask re-runs (`collect --mask-runs`) where it has them; segments: the uncalibrated "
                   "rule (linear within a run of skips, quadrature across) (default: %(default)s)")
    p.add_argument("--replay-local-moves", type=int, default=None, metavar="MOVES",
                   help="a mask within this many one-step moves of a mask the store re-ran on a run (the evenly "
                   "spaced anchors, the drawn masks of `collect --mask-runs`) takes replay's estimate scaled by "
                   "that mask's measured / estimated error on the run, so replay compares a neighbour with its "
                   "anchor estimate against estimate; 0: only an exact match takes the measured error "
                   "(default: 2)")


# --- export ------------------------------------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
    from calibration.export import export

    export(args.db, args.out, fit_path=args.fit)
    print(args.out)
    return EXIT_OK


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "export",
        _cmd_export,
        """Write the policy file of a fitted calibration store.

        Reads <store>.fit.json and the store's sensitivities, validates the policy with the same
        checks as Policy.load, and only then writes it.

        Example:
          sencache-calibrate export --db calib.duckdb --out policies/my-model.json
        """,
    )
    p.add_argument("--db", required=True, help="the fitted calibration store")
    p.add_argument("--out", required=True, help="policy JSON to write")
    p.add_argument("--fit", default=None, help="fit result to read (default: <store>.fit.json)")


# --- recheck -----------------------------------------------------------------------------------


def _cmd_recheck(args: argparse.Namespace) -> int:
    from calibration.recheck import recheck

    verdicts, _ = recheck(args.db, args.policy, twin_margin_db=args.twin_margin, model=args.model, out=args.out)
    for v in verdicts:
        print(f"{v.name}: the score gains {v.gain_db:+.2f} ± {v.gain_db_standard_error:.2f} dB over its own usual "
              f"mask on {v.runs} holdout runs: ships {'static' if v.ships_static else 'score-driven'}")
    print(args.out)
    return EXIT_OK


def _add_recheck(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "recheck",
        _cmd_recheck,
        """Judge a policy's score-driven points by the twin rule, on a store's holdout runs.

        A point ships score-driven only when it beats its own most common mask by more than the
        margin (fit --twin-margin); recheck applies that rule to a policy made before it, or by
        hand, without a refit: each score-driven point (not the paper reference) against its usual
        mask on the store's calibration runs, both re-run on the holdout runs. A point that does
        not win is written as that mask, a static schedule of its reuse mode; the provenance
        records every verdict. The store must be of the policy's model.

        Example:
          sencache-calibrate recheck --db calib.duckdb --policy policies/my-model.json --out policies/my-model.json
        """,
    )
    p.add_argument("--db", required=True, help="a calibration store of the policy's model, with holdout runs")
    p.add_argument("--policy", required=True, help="the policy JSON to judge")
    p.add_argument("--out", required=True, help="policy JSON to write (may be --policy itself)")
    p.add_argument("--twin-margin", type=float, default=None, metavar="DB",
                   help="dB the score must gain over the usual mask to stay score-driven (default: 0.5, as fit)")
    p.add_argument("--model", default=None, help="model to re-run (default: the store's model name)")


# --- collect -----------------------------------------------------------------------------------


def _cmd_collect(args: argparse.Namespace) -> int:
    from calibration.collect import collect, read_prompts

    summary = collect(
        model=args.model,
        prompts=read_prompts(args.prompts) if args.prompts is not None else None,
        seeds=args.seeds,
        steps=args.steps,
        db=args.db,
        k_max=args.k_max,
        estimator=args.estimator,
        no_latents=args.no_latents,
        holdout_fraction=args.holdout_fraction,
        holdout_prompts=read_prompts(args.holdout_prompts, "--holdout-prompts")
        if args.holdout_prompts is not None else None,
        propagation=args.propagation,
        progress=not args.quiet,
        propagation_direction=args.propagation_direction,
        mask_runs=args.mask_runs,
    )
    print(summary.db)
    return EXIT_OK


def _add_collect(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "collect",
        _cmd_collect,
        """Record full-compute runs (prompts x seeds) into a calibration store.

        Per step: timestep, latent change, output norms, the sensitivity estimate (J_x, J_t) and
        the measured errors of reusing the cached residual (and the output) at lags 1..K. One run
        per (prompt, seed), each committed whole; rerunning skips the runs already stored. Under
        `torchrun --nproc-per-node N` each rank writes its own shard <db stem>.rank<k>.duckdb;
        combine them with `sencache-calibrate store merge`.

        Example:
          sencache-calibrate collect --model toy-wan --prompts prompts.txt --seeds 4 --steps 30 --db calib.duckdb
          torchrun --nproc-per-node 4 -m cli collect --model toy-wan --seeds 4 --db calib.duckdb
          sencache-calibrate store merge --out calib.duckdb
        """,
    )
    _add_model_args(p)
    p.add_argument("--prompts", default=None,
                   help="text file, one prompt per line (default for zoo models: 12 of the zoo's training prompts; bench's held-out prompts stay unseen)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt: 0..N-1 (default: %(default)s)")
    p.add_argument("--steps", type=int, default=30, help="denoising steps per run, at least 2 (default: %(default)s)")
    p.add_argument("--db", default="calib.duckdb", help="the store to write (default: %(default)s)")
    p.add_argument("--k-max", type=int, default=4,
                   help="largest lag of the measured caching errors; each lag costs a cheap bypassed forward per step "
                   "(default: %(default)s)")
    p.add_argument("--estimator", choices=("trajectory", "reference"), default="trajectory",
                   help="trajectory: one extra forward per step on the run itself; reference: the paper's, from the "
                   "zoo's clean clips, three extra forwards per step (default: %(default)s)")
    p.add_argument("--no-latents", action="store_true", help="do not store per-step latents (large models)")
    p.add_argument("--holdout-fraction", type=float, default=None,
                   help="share of prompts (by hash) whose runs are marked holdout (default: 0.25)")
    p.add_argument("--holdout-prompts", default=None, metavar="FILE",
                   help="text file of prompts, one per line, collected after --prompts and held out: every run of "
                   "these is a holdout run, every run of --prompts a calibration run (instead of the hashed "
                   "--holdout-fraction), so fit can choose its points on all of --prompts and still judge them "
                   "on held-out runs")
    p.add_argument("--propagation", type=int, nargs="?", const=6, default=0, metavar="POINTS",
                   help="also measure the propagation gain G(p) at POINTS steps (default when given: 6); "
                   "each point costs one more pipeline call per run and reuse mode measured (the 'cache' gain "
                   "skips the step once with each mode). For `fit --objective replay` give the step count: "
                   "between measured steps the gain is interpolated, and on toy-cogvideox 8 of 30 steps put single "
                   "skips at 0.89-1.64x their re-runs")
    p.add_argument("--propagation-direction", choices=("cache", "trajectory", "random"), default="cache",
                   help="what perturbs step p: cache: step p really skipped (its final error over the measured "
                   "local error; replay of one skip is then exact); trajectory: a small δ along the output's change; "
                   "random: a Gaussian δ, which the denoiser removes (replay then underestimates re-runs) "
                   "(default: %(default)s)")
    p.add_argument("--mask-runs", type=int, default=None, metavar="MASKS",
                   help="whole static schedules re-run per run, drawn as the fit draws its static candidates (the "
                   "reuse modes in turn): their final errors calibrate how replay compounds a mask's skips "
                   "(`fit --objective replay`); with any, the fit's evenly spaced candidates at 0.7/0.5/0.4 of "
                   "each mode are re-run too, and replay uses their measured errors. Each costs one more pipeline "
                   "call per run (default: 12 with --propagation, else 0)")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")


# --- store -------------------------------------------------------------------------------------


def _cmd_store_merge(args: argparse.Namespace) -> int:
    from store import find_shards, merge_stores

    shards = args.shards or find_shards(args.out)
    report = merge_stores(shards, args.out, overwrite=args.overwrite)
    logging.getLogger("sencache.cli").info(
        "merged %d shard(s) into %s: %s", len(shards), report.out_path, report.counts)
    print(report.out_path)
    return EXIT_OK


def _add_store(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "store",
        _cmd_store_missing,
        """Manage calibration stores (merge the shards of a distributed collect).

        Example:
          sencache-calibrate store merge calib.rank0.duckdb calib.rank1.duckdb --out calib.duckdb
        """,
    )
    actions = p.add_subparsers(dest="store_command", metavar="ACTION")
    m = _command(
        actions,
        "merge",
        _cmd_store_merge,
        """Combine shard stores into one, refusing shards of another schema version or model.

        Without SHARDS, merges the shards of --out (<stem>.rank<k>.duckdb beside it).

        Example:
          sencache-calibrate store merge calib.rank*.duckdb --out calib.duckdb
        """,
    )
    m.add_argument("shards", nargs="*", help="shard files (default: the rank shards of --out)")
    m.add_argument("--out", required=True, help="the merged store to write")
    m.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _cmd_store_missing(args: argparse.Namespace) -> int:
    from policies.errors import InputError

    raise InputError("store: name an action, e.g. `sencache-calibrate store merge SHARDS --out OUT.duckdb`")


# --- zoo ---------------------------------------------------------------------------------------


def _cmd_zoo_train(args: argparse.Namespace) -> int:
    from calibration.zoo.registry import zoo_folder
    from calibration.zoo.train import train_toy

    zoo_folder(args.name)  # unknown names fail here, with the list of toys
    folder = train_toy(args.name, minutes=args.minutes, seed=args.seed, progress=not args.quiet)
    print(folder)
    return EXIT_OK


def _cmd_zoo_grid(args: argparse.Namespace) -> int:
    from calibration.zoo.grid import zoo_grid

    print(zoo_grid(args.name, Path(args.out), seed=args.seed, steps=args.steps))
    return EXIT_OK


def _cmd_zoo_check(args: argparse.Namespace) -> int:
    import json

    from calibration.zoo.fidelity import FACTORS, check

    result = check(args.name, seeds=list(range(args.seeds)), steps=args.steps)
    print(json.dumps({k: result[k] for k in (*FACTORS, "n")}, indent=2))
    low = [f for f in FACTORS if result[f] < args.min_accuracy]
    if low:
        print(f"error: {args.name}: {', '.join(low)} below {args.min_accuracy:g} on held-out prompts; "
              f"retrain longer with `sencache-calibrate zoo train {args.name} --minutes 90`", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_zoo_missing(args: argparse.Namespace) -> int:
    from policies.errors import InputError

    raise InputError("zoo: name an action, e.g. `sencache-calibrate zoo check toy-wan`")


def _add_zoo(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "zoo",
        _cmd_zoo_missing,
        """Train, look at and check the toy model zoo (toy-wan, toy-cogvideox, toy-ltx).

        Example:
          sencache-calibrate zoo check toy-wan
        """,
    )
    actions = p.add_subparsers(dest="zoo_command", metavar="ACTION")
    t = _command(
        actions,
        "train",
        _cmd_zoo_train,
        """Train a toy (VAE, then transformer) on the synthetic shapes and save it into the zoo.

        One thread; the wall-clock budget is split 25% VAE / 75% transformer.

        Example:
          sencache-calibrate zoo train toy-wan --minutes 80 --seed 0
        """,
    )
    t.add_argument("name", help="toy-wan, toy-cogvideox or toy-ltx")
    t.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget (default: %(default)s)")
    t.add_argument("--seed", type=int, default=0, help="weights, data and noise seed (default: %(default)s)")
    g = _command(
        actions,
        "grid",
        _cmd_zoo_grid,
        """Write a PNG of decoded frames for held-out and training prompts, with what each shows.

        Example:
          sencache-calibrate zoo grid toy-wan --out docs/toy-wan.png
        """,
    )
    g.add_argument("name", help="a zoo name or pipeline folder")
    g.add_argument("--out", required=True, help="PNG file to write")
    g.add_argument("--seed", type=int, default=0, help="generator seed (default: %(default)s)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's zoo.json)")
    c = _command(
        actions,
        "check",
        _cmd_zoo_check,
        """Score a toy's prompt fidelity on held-out prompts: object colour, background, direction.

        Exits 1 when any accuracy is below --min-accuracy.

        Example:
          sencache-calibrate zoo check toy-wan --seeds 2
        """,
    )
    c.add_argument("name", help="a zoo name or pipeline folder")
    c.add_argument("--seeds", type=int, default=2, help="seeds per held-out prompt (default: %(default)s)")
    c.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's zoo.json)")
    c.add_argument("--min-accuracy", type=float, default=0.0, help="fail below this accuracy (default: %(default)s)")


# --- bench -------------------------------------------------------------------------------------


def _cmd_bench(args: argparse.Namespace) -> int:
    from calibration.bench import run_bench

    run_bench(
        model=args.model,
        policy_path=args.policy,
        out_dir=Path(args.out),
        methods=args.methods,
        prompts=args.prompts,
        seeds=args.seeds,
        steps=args.steps,
        overwrite=args.overwrite,
        progress=not args.quiet,
        store=args.db,
    )
    print(Path(args.out) / "summary.md")
    return EXIT_OK


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "bench",
        _cmd_bench,
        """Benchmark SenCache against its peers at matched compute on held-out prompts and seeds.

        Methods: none, uniform, sencache-paper, sencache (needs --policy), sencache-static (each
        fitted point's static twin: what the score adds), teacache, magcache, fbcache,
        taylorseer, easycache, dbcache; each swept over its knob. Quality (PSNR, SSIM,
        latent RMSE) is against full compute of the same seed; compute is measured by counting
        the block stack's real work. Writes bench.json, plots and summary.md to --out.

        Example:
          sencache-calibrate bench --model toy-wan --policy policies/toy-wan.json --out bench/
        """,
    )
    _add_model_args(p)
    p.add_argument("--policy", default=None, help="the fitted policy JSON of this model (needed by method sencache)")
    p.add_argument("--out", default="bench", help="output folder (default: %(default)s)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: every one that can run)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default: %(default)s)")
    p.add_argument("--prompts", default=None, help="file of prompts, one per line (default: 4 zoo held-out prompts)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's zoo.json)")
    p.add_argument("--overwrite", action="store_true", help="replace the bench files in a non-empty --out folder")
    p.add_argument("--db", default=None, help="calibration store of this model: TeaCache's polynomial is fitted on it")


# --- the parser -------------------------------------------------------------------------------

_ADDERS = [_add_quickstart, _add_generate, _add_fit, _add_export, _add_recheck, _add_collect, _add_store, _add_zoo, _add_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sencache-calibrate",
        description="Calibrate, fit, export and benchmark SenCache policies for diffusers video pipelines.",
        epilog="Start with: sencache-calibrate quickstart",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _ADDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad flags, 0 on --help
        return int(exc.code or 0)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
        force=True,
    )
    if args.quiet:
        import os

        os.environ["TQDM_DISABLE"] = "1"
    from policies.errors import InputError, SenCacheError

    try:
        return int(args.handler(args) or EXIT_OK)
    except InputError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (SenCacheError, OSError, RuntimeError) as exc:
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
