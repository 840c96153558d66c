"""Reading the store back: tables as DataFrames, latents as arrays, counts and a content digest.

Queries are SQLAlchemy Core statements compiled for DuckDB and run on the raw connection so the
result comes back as Arrow (hundreds of thousands of rows in milliseconds, not row by row).
NULL comes back as NaN in float columns, the pandas convention.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from store.schema import (
    DIGEST_EXCLUDED_COLUMNS,
    DIGEST_EXCLUDED_META_KEYS,
    KEY_COLUMNS,
    RUN_TABLES,
    TABLES,
)

__all__ = ["content_digest", "read_latents", "read_meta", "read_table", "table_counts"]

_WANT = "_sencache_wanted_runs"


def _fetch(raw: Any, engine: sa.Engine, stmt: sa.Select, run_ids: Iterable[str] | None) -> pa.Table:
    sql = str(stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    if run_ids is None:
        return raw.sql(sql).to_arrow_table()
    raw.register(_WANT, pa.table({"run_id": pa.array([str(r) for r in run_ids], pa.string())}))
    try:
        return raw.sql(sql).to_arrow_table()
    finally:
        raw.unregister(_WANT)


def _select(name: str, columns: Iterable[str] | None = None, run_ids: Iterable[str] | None = None) -> sa.Select:
    table = TABLES[name]
    cols = [table.c[c] for c in columns] if columns is not None else list(table.columns)
    stmt = sa.select(*cols)
    if run_ids is not None:
        want = sa.table(_WANT, sa.column("run_id"))
        stmt = stmt.where(table.c.run_id.in_(sa.select(want.c.run_id)))
    return stmt.order_by(*(table.c[k] for k in KEY_COLUMNS[name]))


def read_table(
    engine: sa.Engine, name: str, run_ids: Iterable[str] | None = None, **equals: Any
) -> pd.DataFrame:
    """Rows of table `name` ordered by its key, optionally only for `run_ids` and where each
    `column=value` in `equals` holds."""
    run_ids = None if run_ids is None else list(run_ids)
    stmt = _select(name, run_ids=run_ids)
    for column, value in equals.items():
        if value is not None:
            stmt = stmt.where(TABLES[name].c[column] == value)
    with engine.connect() as conn:
        return _fetch(conn.connection.dbapi_connection, engine, stmt, run_ids).to_pandas()


def read_latents(engine: sa.Engine, run_id: str) -> dict[int, np.ndarray]:
    """The stored latents of one run: step → float16 array of its stored shape."""
    table = _fetch_one_run(engine, "latents", run_id)
    out: dict[int, np.ndarray] = {}
    for step, dtype, shape, data in zip(*(table[c].to_pylist() for c in ("step", "dtype", "shape", "data"))):
        out[int(step)] = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(json.loads(shape))
    return out


def _fetch_one_run(engine: sa.Engine, name: str, run_id: str) -> pa.Table:
    with engine.connect() as conn:
        return _fetch(conn.connection.dbapi_connection, engine, _select(name, run_ids=[run_id]), [run_id])


def read_meta(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(TABLES["meta"].c.key, TABLES["meta"].c.value)).all()
    return {k: v for k, v in rows}


def table_counts(engine: sa.Engine) -> dict[str, int]:
    """Number of rows in each per-run table."""
    with engine.connect() as conn:
        return {
            name: int(conn.execute(sa.select(sa.func.count()).select_from(TABLES[name])).scalar_one())
            for name in RUN_TABLES
        }


def _hash_column(h: "hashlib._Hash", column: pa.ChunkedArray) -> None:
    array = column.combine_chunks()
    h.update(np.asarray(array.is_null().to_numpy(zero_copy_only=False)).tobytes())
    kind = array.type
    if any(test(kind) for test in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)):
        binary = pc.cast(array, pa.large_binary()).fill_null(b"")
        _, offsets_buffer, data_buffer = binary.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[binary.offset : binary.offset + len(binary) + 1]
        h.update((offsets - offsets[0]).tobytes())  # the lengths, so ["ab", "c"] != ["a", "bc"]
        if data_buffer is not None:
            h.update(memoryview(data_buffer)[offsets[0] : offsets[-1]])
        return
    if pa.types.is_timestamp(kind):
        array = array.cast(pa.int64())
    filled = array.fill_null(0) if array.null_count else array
    h.update(np.ascontiguousarray(filled.to_numpy(zero_copy_only=False)).tobytes())


def _digest_select(name: str, columns: list[str]) -> sa.Select:
    # Blobs (latents) are hashed inside DuckDB, so the digest never holds them all in memory.
    table = TABLES[name]
    exprs = [
        sa.func.sha256(table.c[c]).label(c) if isinstance(table.c[c].type, sa.LargeBinary) else table.c[c]
        for c in columns
    ]
    return sa.select(*exprs).order_by(*(table.c[k] for k in KEY_COLUMNS[name]))


def content_digest(engine: sa.Engine) -> str:
    """SHA-256 over every stored row, table by table in key order, wall-clock columns left out.

    Two stores with the same runs and the same measurements have the same digest however the
    rows were written: in one process or several shards merged, interrupted and resumed or not.
    """
    h = hashlib.sha256()
    meta = {k: v for k, v in read_meta(engine).items() if k not in DIGEST_EXCLUDED_META_KEYS}
    h.update(json.dumps(meta, sort_keys=True).encode())
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        for name in RUN_TABLES:
            excluded = DIGEST_EXCLUDED_COLUMNS.get(name, ())
            columns = [c.name for c in TABLES[name].columns if c.name not in excluded]
            table = _fetch(raw, engine, _digest_select(name, columns), None)
            h.update(f"{name}:{','.join(columns)}:{table.num_rows}".encode())
            for column in columns:
                _hash_column(h, table[column])
    return h.hexdigest()
