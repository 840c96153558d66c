"""Writing runs: each run with all of its rows in one DuckDB transaction, or none of it.

The `runs` row is appended in the same transaction as the run's step rows, so a run that is in
`runs` is complete: an exception, a crash or SIGKILL before COMMIT leaves nothing of it (DuckDB
replays only committed transactions from its write-ahead log). A run whose id is already stored
is skipped, which makes rewriting idempotent and lets `collect` resume.

Rows go in as Arrow tables: a batch is validated and converted table by table over all its runs
(`store.rows.frames_to_arrow`), then each table is one `INSERT INTO t SELECT * FROM <arrow>`
(DuckDB scans the Arrow table in place) on the raw duckdb connection, no SQLAlchemy wrapper.
`benchmarks/store_insert.py --batch 1 10 100` (1,000 runs x 301 rows, 2 cores shared with a
training job, load ~5): ~17k rows/s one run per transaction (`write_run`, ~57 runs/s), ~120k
rows/s at 10 and ~360k rows/s at 100 runs per transaction (`write_runs`); the store is 12.0 MiB
(~42 bytes a row). A one-run write is fixed cost, not rows: a 1-step run takes as long (~16 ms)
as a 50-step one: four INSERT statements at ~1.5-3 ms of engine time each on these tables, and
one fdatasync of the write-ahead log at COMMIT. Durable one-run commits cannot reach 100k rows/s
there; batches of 10 runs or more do.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from store.rows import frames_to_arrow, latents_to_arrow, normalize_run_row
from store.schema import RUN_TABLES, TABLES, arrow_schema, empty_arrow_table

__all__ = ["RunRecord", "prepare_records", "write_prepared"]

logger = logging.getLogger(__name__)

Frame = pd.DataFrame | Mapping[str, Any] | None


@dataclass
class RunRecord:
    """One collected run: its `runs` row and the rows of each per-step table.

    Frames may leave out `run_id` (filled in) and any nullable column; `sensitivities` may leave
    out `estimator` (the run's estimator). `latents` is a mapping step → array, (step, array)
    pairs or a list of arrays indexed by step; they are stored as float16 bytes.
    """

    run: Mapping[str, Any]
    steps: Frame = None
    sensitivities: Frame = None
    cache_errors: Frame = None
    propagation: Frame = None
    latents: Mapping[int, Any] | Sequence[Any] | None = None
    reuse_errors: Frame = None
    mask_errors: Frame = None


@dataclass
class _Batch:
    """Records validated and converted to Arrow: per table the rows of every record, in order."""

    run_ids: list[str]  # per record
    fingerprints: list[str]  # per record
    tables: dict[str, pa.Table]
    owners: dict[str, np.ndarray]  # per table, the record each row belongs to

    def rows_of(self, records: np.ndarray) -> dict[str, pa.Table]:
        """Each table cut down to the rows of `records` (indices into the batch)."""
        out = {}
        for name, table in self.tables.items():
            if table.num_rows and len(records) < len(self.run_ids):
                table = table.filter(pa.array(np.isin(self.owners[name], records)))
            out[name] = table
        return out


def _defaults(table: str, run_row: Mapping[str, Any]) -> dict[str, Any]:
    """Columns a run's rows may leave out: the run's estimator, and a propagation gain's mode
    ("none": a δ perturbation or a plain-reuse skip, all a schema-2 store measured)."""
    if table == "sensitivities":
        return {"estimator": run_row["estimator"]}
    if table == "propagation":
        return {"mode": "none"}
    return {}


def prepare_records(records: Sequence[RunRecord]) -> _Batch:
    """Validate records and convert them to Arrow, table by table over the whole batch (no database access)."""
    rows = [normalize_run_row(r.run) for r in records]
    run_ids = [row["run_id"] for row in rows]
    tables = {"runs": pa.Table.from_pylist(rows, schema=arrow_schema(TABLES["runs"]))}
    owners = {"runs": np.arange(len(rows))}
    for name in ("steps", "sensitivities", "cache_errors", "reuse_errors", "propagation", "mask_errors"):
        parts = [(row["run_id"], getattr(r, name), _defaults(name, row)) for r, row in zip(records, rows)]
        tables[name], owners[name] = frames_to_arrow(name, parts)
    latents = {i: latents_to_arrow(r.latents, run_ids[i]) for i, r in enumerate(records) if r.latents is not None}
    tables["latents"] = pa.concat_tables(list(latents.values())) if latents else empty_arrow_table(TABLES["latents"])
    owners["latents"] = np.repeat(np.fromiter(latents, np.int64), [t.num_rows for t in latents.values()])
    return _Batch(run_ids, [row["model_fingerprint"] for row in rows], tables, owners)


def _append(raw: Any, name: str, table: pa.Table) -> None:
    """Append `table` (already in `name`'s column order) on the raw duckdb connection.

    DuckDB reads the Arrow table in place by its variable name (a replacement scan): one
    statement, no registration, no copy through Python objects.
    """
    _sencache_rows = table  # noqa: F841 -- read by name by the statement below
    raw.execute(f'INSERT INTO "{name}" SELECT * FROM _sencache_rows')


def _stored_ids(raw: Any, run_ids: list[str]) -> set[str]:
    rows = raw.execute(
        "SELECT run_id FROM runs WHERE run_id IN (SELECT UNNEST(?::VARCHAR[]))", [run_ids]
    ).fetchall()
    return {r[0] for r in rows}


def _append_runs(
    raw: Any, batch: _Batch, records: np.ndarray, claim_fingerprint: str | None, *, check: bool
) -> np.ndarray:
    """One transaction appending `records` (minus those already stored when `check`); returns those written."""
    raw.begin()
    try:
        if check:
            stored = _stored_ids(raw, [batch.run_ids[i] for i in records])
            records = np.array([i for i in records if batch.run_ids[i] not in stored], dtype=np.int64)
        if claim_fingerprint is not None and len(records):
            raw.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('model_fingerprint', ?)", [claim_fingerprint]
            )
        if len(records):
            tables = batch.rows_of(records)
            for name in RUN_TABLES:
                if tables[name].num_rows:
                    _append(raw, name, tables[name])
    except BaseException:
        raw.rollback()
        raise
    raw.commit()
    return records


def write_prepared(raw: Any, batch: _Batch, *, claim_fingerprint: str | None = None) -> list[bool]:
    """Append the runs not stored yet, all in one transaction; returns, per run, whether it was new.

    `raw` is the duckdb connection (no transaction open). The append is optimistic: new runs (the
    common case) cost no lookup, and the primary key of `runs` refuses a stored one, which rolls
    back and retries with a lookup. `claim_fingerprint` records the model fingerprint in `meta`
    in the same transaction (the first write to a store created without one).
    """
    first: dict[str, int] = {}
    for i, run_id in enumerate(batch.run_ids):
        first.setdefault(run_id, i)  # a run repeated inside the batch is written once
    if not first:
        return []
    unique = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    try:
        written = _append_runs(raw, batch, unique, claim_fingerprint, check=False)
    except duckdb.ConstraintException:
        written = _append_runs(raw, batch, unique, claim_fingerprint, check=True)
    flags = [False] * len(batch.run_ids)
    for i in written:
        flags[int(i)] = True
    if len(written) < len(flags):
        logger.info("store: %d run(s) already stored, skipped", len(flags) - len(written))
    return flags
