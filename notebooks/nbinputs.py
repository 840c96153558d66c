"""What the analysis notebooks read, and the small defaults they build when given nothing.

Each notebook takes its input from its `parameters` cell (papermill style), else from an
environment variable, else builds a small one on the spot on the instant `tiny-wan` fixture, so
that it always runs:

=====================  ====================  =====================================================
notebook               variable              default built here
=====================  ====================  =====================================================
sensitivity.ipynb      ``SENCACHE_STORE``    `small_store`: two collected runs (one calib, one holdout)
policies.ipynb         ``SENCACHE_FIT``,     `small_fit`: the store above, fitted (replay) and exported
                       ``SENCACHE_POLICY``
bench.ipynb            ``SENCACHE_BENCH``    `small_bench`: the policy above benchmarked on one prompt
=====================  ====================  =====================================================

Everything is built with the project's own stages (`collect`, `fit`, `export`, `run_bench`); the
notebook tests use the same functions for their shared inputs.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_STEPS",
    "ENV",
    "given",
    "pick_prompts",
    "require",
    "scratch",
    "show",
    "small_bench",
    "small_fit",
    "small_store",
]

ENV = {"store": "SENCACHE_STORE", "fit": "SENCACHE_FIT", "policy": "SENCACHE_POLICY", "bench": "SENCACHE_BENCH",
       "steps": "SENCACHE_STEPS"}
DEFAULT_MODEL = "tiny-wan"
#: denoising steps of the default runs: enough for lags 1..3 and a few skippable steps
DEFAULT_STEPS = 6
_HOLDOUT_FRACTION = 0.25


def given(value: Any, env: str) -> Path | None:
    """The path a notebook was given: its parameter when set, else ``$env``, else None."""
    if value not in (None, ""):
        return Path(str(value)).expanduser()
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    return None


def require(path: Path, what: str, fix: str) -> Path:
    """`path` when it exists; otherwise a FileNotFoundError that says what to run."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} {path}: no such file. {fix}")
    return Path(path)


def scratch() -> Path:
    """A fresh temporary folder for a default input."""
    return Path(tempfile.mkdtemp(prefix="sencache-notebook-"))


def show(fig: Any, dpi: int = 100) -> None:
    """Display a matplotlib figure as a PNG output and close it (works with the Agg backend)."""
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buf.getvalue(), format="png"))


def pick_prompts(calib: int = 1, holdout: int = 1) -> list[str]:
    """Zoo prompts, `calib` of them marked 'calib' by `collect`'s split and `holdout` 'holdout'."""
    from calibration.collect import split_of
    from calibration.zoo.data import heldout_prompts, training_prompts

    want = {"calib": calib, "holdout": holdout}
    chosen: list[str] = []
    for prompt in training_prompts() + heldout_prompts():
        split = split_of(prompt, _HOLDOUT_FRACTION)
        if want[split] > 0:
            want[split] -= 1
            chosen.append(prompt)
        if not any(want.values()):
            return chosen
    raise RuntimeError(f"the zoo's prompts cannot give {calib} calib and {holdout} holdout runs")


def small_store(folder: str | Path, model: str = DEFAULT_MODEL, steps: int = DEFAULT_STEPS, seeds: int = 1,
                propagation: int = 2) -> Path:
    """Collect one calib and one holdout prompt x `seeds` into ``folder/calib.duckdb``."""
    from calibration.collect import collect

    db = Path(folder) / "calib.duckdb"
    collect(model, prompts=pick_prompts(), seeds=seeds, steps=steps, db=db, k_max=3,
            holdout_fraction=_HOLDOUT_FRACTION, propagation=propagation, progress=False)
    return db


def small_fit(db: str | Path, trials: int = 3) -> tuple[Path, Path]:
    """Fit the store `db` (replay objective, a few trials) and export it; (fit result, policy)."""
    from calibration.export import export
    from calibration.fit import fit, fit_result_path

    db = Path(db)
    fit(db, trials=trials, objective="replay", seed=0, knots=8, show_progress=False, plot=False)
    policy = db.with_name(db.stem + ".policy.json")
    export(db, policy)
    return fit_result_path(db), policy


def small_bench(folder: str | Path, policy: str | Path, steps: int = DEFAULT_STEPS) -> Path:
    """Benchmark `policy` against full compute and evenly spaced skipping, one held-out prompt."""
    from calibration.bench import run_bench
    from calibration.zoo.data import heldout_prompts
    from policies import Policy

    loaded = Policy.load(policy)
    names = list(loaded.operating_point_names)
    points = [n for n in ("quality", "fast") if n in names] or names[:2]
    out = Path(folder) / "bench"
    run_bench(loaded.model.name, policy, out, methods=["uniform", "sencache"], prompts=heldout_prompts()[:1],
              seeds=1, steps=steps, overwrite=True, progress=False,
              knobs={"uniform": [0.8, 0.5], "sencache": points})
    return out
