"""`sencache-calibrate`: argument parsing and error reporting only; the work is in `calibration`.

Exit codes: 0 ok, 1 the work failed, 2 bad input (a file, a flag, a model). Errors print as one
line; `--debug` shows the traceback. Heavy imports happen inside the command that needs them.
Each `_add_<command>` function below owns one sub-command: its parser and its one library call.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2

Handler = Callable[[argparse.Namespace], int | None]


def _command(sub: argparse._SubParsersAction, name: str, handler: Handler, doc: str) -> argparse.ArgumentParser:
    """Add a sub-command whose `--help` is `doc` (first line: summary; the rest: an example)."""
    doc = textwrap.dedent(doc).strip()
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
    p.add_argument("--seed", type=int, default=0, help="sampler seed: same store + seed, same fit (default: %(default)s)")
    p.add_argument("--storage", default=None, help="Optuna storage URL or journal file (default: <store>.optuna.log)")
    p.add_argument("--knots", type=int, default=10, help="threshold knots over the step position, 8-16 (default: %(default)s)")
    p.add_argument("--model", default=None, help="model to re-run (default: the store's model name)")


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


# --- the parser -------------------------------------------------------------------------------

_ADDERS = [_add_generate, _add_fit, _add_export]


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
