"""The store's tables, declared once with SQLAlchemy Core; everything else reads them from here.

One row of `runs` is one trajectory (a prompt, a seed, a scheduler setting) of one model; every
other table hangs off it by `run_id` and is keyed by (`run_id`, `step`, ...). Only `runs` and
`meta` carry a primary key: the per-step tables are written a run at a time, their keys are
checked in Python before a write (`store.rows`), and DuckDB's min/max zone maps already prune by
`run_id` because a run's rows are appended together. A primary-key index on the step tables
would nearly double the file and cost a third of the insert rate (a prototype with 80k
cache-error rows in batches of 10 runs: 2.8 → 5.1 MB, 350k → 230k rows/s), for a guarantee that
the write path already gives.

Floating-point columns are DOUBLE and nullable: a zero denominator gives NULL, never inf/NaN.
Bump `SCHEMA_VERSION` whenever a column changes meaning or a table changes shape.
"""

from __future__ import annotations

import functools

import pyarrow as pa
import sqlalchemy as sa

__all__ = [
    "DIGEST_EXCLUDED_COLUMNS",
    "DIGEST_EXCLUDED_META_KEYS",
    "KEY_COLUMNS",
    "METADATA",
    "RUN_TABLES",
    "SCHEMA_VERSION",
    "SPLITS",
    "TABLES",
    "arrow_schema",
    "cache_errors",
    "empty_arrow_table",
    "latents",
    "meta",
    "propagation",
    "reuse_errors",
    "runs",
    "sensitivities",
    "steps",
]

#: 2: `reuse_errors` (the error of every reuse mode per computed step and lag) and
#: `steps.residual_change`; a version-1 store has neither and is refused (re-collect it).
#: 3: `propagation.mode`, a gain per reuse mode (a skip of each mode really made; a "taylor" skip's
#: error spreads differently from plain reuse's); an older store is refused (re-collect it).
#: 4: `mask_errors`, the final error of whole static schedules really run (how a mask's skips
#: compound, which replay calibrates on); an older store is refused (re-collect it).
SCHEMA_VERSION = 4
#: the reuse modes `collect` measures, one `reuse_errors.mode` value each (`calibration.recorder`
#: has one measurement function per mode; adding a mode adds rows, not columns)
SPLITS = ("calib", "holdout")

METADATA = sa.MetaData()


def _real(name: str, doc: str) -> sa.Column:
    return sa.Column(name, sa.Double, nullable=True, comment=doc)


def _run_fk() -> sa.Column:
    # No ForeignKey: DuckDB checks foreign keys row by row, and a run's rows are always written
    # in the same transaction as the run itself (`store.writer`), which is the guarantee we need.
    return sa.Column("run_id", sa.Text, nullable=False)


meta = sa.Table(
    "meta",
    METADATA,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=True),
    comment="schema_version, model_fingerprint, created, package_version",
)

runs = sa.Table(
    "runs",
    METADATA,
    sa.Column("run_id", sa.Text, primary_key=True, comment="store.rows.make_run_id of the run"),
    sa.Column("model_name", sa.Text, nullable=True),
    sa.Column("model_fingerprint", sa.Text, nullable=False),
    sa.Column("pipeline_class", sa.Text, nullable=True),
    sa.Column("scheduler_class", sa.Text, nullable=True),
    sa.Column("scheduler_config", sa.Text, nullable=True, comment="JSON, keys sorted"),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("num_steps", sa.Integer, nullable=False),
    sa.Column("guidance_scale", sa.Double, nullable=True),
    sa.Column("height", sa.Integer, nullable=True),
    sa.Column("width", sa.Integer, nullable=True),
    sa.Column("num_frames", sa.Integer, nullable=True),
    sa.Column("split", sa.Text, nullable=False),
    sa.Column("estimator", sa.Text, nullable=False),
    sa.Column("extra", sa.Text, nullable=True, comment="JSON: other settings that change the trajectory"),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("created", sa.DateTime, nullable=True, comment="UTC, wall clock: not in the digest"),
    sa.Column("wall_s", sa.Double, nullable=True, comment="seconds to collect: not in the digest"),
    sa.CheckConstraint("split IN ('calib', 'holdout')", name="runs_split"),
    sa.CheckConstraint("num_steps > 0", name="runs_num_steps"),
)

steps = sa.Table(
    "steps",
    METADATA,
    _run_fk(),
    sa.Column("step", sa.Integer, nullable=False, comment="0-based denoising step i"),
    _real("timestep", "t_i in the model's own units"),
    _real("t_next", "t_{i+1}; NULL after the last step if the scheduler has none"),
    _real("dx_norm", "RMS of x_{i+1} - x_i"),
    _real("x_norm", "RMS of x_i"),
    _real("out_norm", "RMS of f(x_i, t_i)"),
    _real("teacache_signal", "relative L1 change of the modulated input (TeaCache)"),
    _real("first_block_change", "relative change of block 0's residual (FBCache)"),
    _real("mag_ratio", "‖residual_i‖ / ‖residual_{i-1}‖ (MagCache)"),
    _real("residual_change", "RMS of R_i − R_{i−1}, the block-stack residual's change since the "
                             "previous step (a forecasting runtime has both at no cost)"),
)

sensitivities = sa.Table(
    "sensitivities",
    METADATA,
    _run_fk(),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("estimator", sa.Text, nullable=False, comment="'trajectory' or 'reference'"),
    _real("J_x", "‖∂f/∂x‖ estimate; NULL when ‖x_{i+1} - x_i‖ = 0"),
    _real("J_t", "‖∂f/∂t‖ estimate; NULL when t_{i+1} = t_i"),
)

cache_errors = sa.Table(
    "cache_errors",
    METADATA,
    _run_fk(),
    sa.Column("step", sa.Integer, nullable=False, comment="the computed step i whose cache is reused"),
    sa.Column("lag", sa.Integer, nullable=False, comment="k: the error is measured at step i + k"),
    _real("dx", "RMS of x_{i+k} - x_i"),
    _real("dt", "|t_{i+k} - t_i|"),
    _real("residual_error", "RMS error of reusing the residual R_i at step i + k"),
    _real("output_error", "RMS of f_{i+k} - f_i (plain output reuse)"),
    sa.CheckConstraint("lag >= 1", name="cache_errors_lag"),
)

reuse_errors = sa.Table(
    "reuse_errors",
    METADATA,
    _run_fk(),
    sa.Column("step", sa.Integer, nullable=False, comment="the computed step r whose cache is reused"),
    sa.Column("lag", sa.Integer, nullable=False, comment="k: the error is measured at step r + k"),
    sa.Column("mode", sa.Text, nullable=False,
              comment="the reuse mode (policies FORECASTS): 'none' reuses R_r, 'linear' forecasts it"),
    _real("error", "RMS error of the block-stack output the mode gives at step r + k"),
    sa.CheckConstraint("lag >= 1", name="reuse_errors_lag"),
)

propagation = sa.Table(
    "propagation",
    METADATA,
    _run_fk(),
    sa.Column("step", sa.Integer, nullable=False, comment="step p where the error is injected"),
    sa.Column("mode", sa.Text, nullable=False,
              comment="the reuse mode of the skip whose error is carried ('none' for a perturbation δ)"),
    _real("gain", "final-output error per unit of error injected at step p"),
    _real("local_error", "size of the injected error (optional)"),
    _real("final_error", "resulting final-output error (optional)"),
)

mask_errors = sa.Table(
    "mask_errors",
    METADATA,
    _run_fk(),
    sa.Column("mode", sa.Text, nullable=False, comment="the reuse mode the schedule's skipped steps used"),
    sa.Column("mask", sa.Text, nullable=False, comment="the computed steps, ascending, comma-separated"),
    _real("error", "RMS of the final latents against the run's full compute"),
)

latents = sa.Table(
    "latents",
    METADATA,
    _run_fk(),
    sa.Column("step", sa.Integer, nullable=False, comment="x_step; step = num_steps is the final latent"),
    sa.Column("dtype", sa.Text, nullable=False, comment="dtype of the bytes in data (float16)"),
    sa.Column("shape", sa.Text, nullable=False, comment="JSON list of ints"),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

TABLES: dict[str, sa.Table] = {t.name: t for t in (meta, runs, steps, sensitivities, cache_errors, reuse_errors,
                                                     propagation, mask_errors, latents)}
# The tables written per run, in write order; `runs` first so a run and its rows share a transaction.
RUN_TABLES = ("runs", "steps", "sensitivities", "cache_errors", "reuse_errors", "propagation", "mask_errors",
              "latents")

KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "meta": ("key",),
    "runs": ("run_id",),
    "steps": ("run_id", "step"),
    "sensitivities": ("run_id", "step", "estimator"),
    "cache_errors": ("run_id", "step", "lag"),
    "reuse_errors": ("run_id", "step", "lag", "mode"),
    "propagation": ("run_id", "step", "mode"),
    "mask_errors": ("run_id", "mode", "mask"),
    "latents": ("run_id", "step"),
}

# Wall-clock facts differ between two collects of the same data; the digest leaves them out.
DIGEST_EXCLUDED_COLUMNS = {"runs": ("created", "wall_s")}
# `skip_costs` is measured on the model (its fingerprint is in the digest), not calibration data.
DIGEST_EXCLUDED_META_KEYS = ("created", "package_version", "skip_costs")


def _arrow_type(column: sa.Column) -> pa.DataType:
    kind = column.type
    if isinstance(kind, sa.Double):
        return pa.float64()
    if isinstance(kind, sa.Integer):  # BigInteger is a subclass
        return pa.int64()
    if isinstance(kind, sa.DateTime):
        return pa.timestamp("us")
    if isinstance(kind, sa.LargeBinary):
        return pa.large_binary()
    return pa.string()


@functools.lru_cache(maxsize=None)
def arrow_schema(table: sa.Table) -> pa.Schema:
    """The Arrow schema whose columns, in order, are those of `table` (for bulk appends)."""
    return pa.schema([pa.field(c.name, _arrow_type(c), nullable=c.nullable) for c in table.columns])


@functools.lru_cache(maxsize=None)
def empty_arrow_table(table: sa.Table) -> pa.Table:
    """A table of `arrow_schema(table)` with no rows (Arrow tables are immutable: one is shared)."""
    return arrow_schema(table).empty_table()
