"""Turning what `collect` measured into Arrow tables the store can append, checked on the way.

Everything here runs before a transaction opens, so bad input is refused (InputError naming the
table, the column and the reason) without touching the file. Floating-point values that are not
finite become NULL: the store never holds inf or NaN.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from policies.errors import InputError
from store.schema import KEY_COLUMNS, SPLITS, TABLES, arrow_schema, empty_arrow_table

__all__ = [
    "RUN_ID_FIELDS",
    "frame_to_arrow",
    "frames_to_arrow",
    "latents_to_arrow",
    "make_run_id",
    "normalize_run_row",
]

logger = logging.getLogger(__name__)

# The settings that make two runs the same trajectory: rerunning any of them is a no-op.
RUN_ID_FIELDS = (
    "model_fingerprint",
    "scheduler_class",
    "scheduler_config",
    "prompt",
    "seed",
    "num_steps",
    "guidance_scale",
    "height",
    "width",
    "num_frames",
    "estimator",
    "extra",
)
_JSON_FIELDS = ("scheduler_config", "extra")
_RUN_DEFAULTS = {"split": "calib", "status": "complete"}


def _canonical_json(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InputError(f"runs.{field}: not valid JSON ({exc.msg}): {value[:80]!r}") from None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def make_run_id(run_row: Mapping[str, Any]) -> str:
    """A deterministic id from the fields in `RUN_ID_FIELDS` (20 hex characters).

    Two rows that agree on those fields name the same trajectory, so a resumed or repeated
    `collect` recognises the runs it already stored. The split, status and timings are not part
    of the identity.
    """
    identity = {}
    for field in RUN_ID_FIELDS:
        value = run_row.get(field)
        if field in _JSON_FIELDS:
            value = _canonical_json(value, field)
        elif field == "guidance_scale":
            value = _finite_or_none(value)
        elif field in ("seed", "num_steps", "height", "width", "num_frames") and value is not None:
            value = int(value)
        identity[field] = value
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def normalize_run_row(run_row: Mapping[str, Any]) -> dict[str, Any]:
    """Check one `runs` row and fill its defaults; returns a dict with every column of `runs`."""
    table = TABLES["runs"]
    unknown = sorted(set(run_row) - set(table.columns.keys()))
    if unknown:
        raise InputError(f"runs: unknown field(s) {unknown}; the columns are {list(table.columns.keys())}")
    row = {**_RUN_DEFAULTS, **{k: v for k, v in run_row.items() if v is not None}}
    for field in _JSON_FIELDS:
        row[field] = _canonical_json(row.get(field), field)
    if "run_id" not in row:
        row["run_id"] = make_run_id(row)
    row.setdefault("created", _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None))
    missing = [c.name for c in table.columns if not c.nullable and row.get(c.name) is None]
    if missing:
        raise InputError(f"runs: required field(s) {missing} missing from the run row")
    if row["split"] not in SPLITS:
        raise InputError(f"runs.split: {row['split']!r} is not one of {list(SPLITS)}")
    for column in table.columns:
        value = row.get(column.name)
        if value is None:
            row[column.name] = None
        elif isinstance(column.type, sa.Double):
            row[column.name] = _finite_or_none(value)
        elif isinstance(column.type, sa.Integer):
            row[column.name] = _as_int(value, f"runs.{column.name}")
        elif isinstance(column.type, sa.Text):
            row[column.name] = str(value)
    if row["num_steps"] <= 0:
        raise InputError(f"runs.num_steps: must be positive, got {row['num_steps']}")
    return row


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, (bool, np.bool_)) or float(value) != int(value):
        raise InputError(f"{where}: expected an integer, got {value!r}")
    return int(value)


def _float_column(floats: np.ndarray, column: sa.Column, where: str) -> pa.Array:
    """A float64 numpy column as the Arrow array of `column` (NaN/inf → NULL for reals)."""
    finite = np.isfinite(floats)
    if isinstance(column.type, sa.Double):
        return pa.array(floats, type=pa.float64(), mask=None if finite.all() else ~finite)
    if not finite.all():
        raise InputError(f"{where}: has missing or infinite values; the column is required")
    if isinstance(column.type, sa.Integer):
        ints = floats.astype(np.int64)
        if not np.array_equal(ints, floats):
            raise InputError(f"{where}: expected integers, got fractional values like {floats[ints != floats][0]}")
        return pa.array(ints, type=pa.int64())
    raise InputError(f"{where}: expected text, got numbers")


def _column_to_arrow(values: pa.Array | pa.ChunkedArray, column: sa.Column, where: str) -> pa.Array:
    kind = column.type
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(kind, sa.Double) or (pa.types.is_floating(values.type) and not values.null_count):
        try:
            floats = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(f"{where}: expected numbers ({exc})") from None
        return _float_column(floats, column, where)
    if values.null_count:
        raise InputError(f"{where}: has missing values; the column is required")
    if isinstance(kind, sa.Integer):
        if pa.types.is_integer(values.type):
            return pc.cast(values, pa.int64())
        raise InputError(f"{where}: expected integers, got {values.type} values like {values[0]}")
    if pa.types.is_string(values.type):
        return values
    try:
        return pc.cast(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(f"{where}: expected text ({exc})") from None


def _columns(frame: pd.DataFrame | pa.Table | Mapping[str, Any], name: str) -> tuple[dict[str, Any], int]:
    """The given columns (float64 numpy arrays or Arrow arrays) and the row count.

    A DataFrame of numeric columns (the common case) is converted in one copy, as a float64
    matrix; integer columns come back exact up to 2**53, far beyond any step or lag.
    """
    if isinstance(frame, pd.DataFrame):
        names = [str(c) for c in frame.columns]
        matrix = frame.to_numpy()  # numeric columns only: a float or int matrix, else object
        if matrix.dtype.kind in "fiu":
            return dict(zip(names, np.ascontiguousarray(matrix.T, dtype=np.float64))), len(frame)
        frame = {n: v for n, v in zip(names, (frame.iloc[:, j] for j in range(frame.shape[1])))}
    if isinstance(frame, pa.Table):
        return {n: frame[n] for n in frame.column_names}, frame.num_rows
    try:
        table = pa.table(
            {
                str(k): pa.Array.from_pandas(v) if isinstance(v, pd.Series) else v if isinstance(v, (list, tuple)) else np.asarray(v)
                for k, v in frame.items()
            }
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        raise InputError(f"{name}: cannot read the rows as a table ({exc})") from None
    return {n: table[n] for n in table.column_names}, table.num_rows


Frame = pd.DataFrame | pa.Table | Mapping[str, Any] | None


def frame_to_arrow(name: str, frame: Frame, run_id: str, defaults: Mapping[str, Any] = ()) -> pa.Table:
    """One run's rows of table `name` as an Arrow table in the table's column order.

    `frame` (a DataFrame, an Arrow table or a mapping of columns) may omit `run_id` (it is filled
    in) and any nullable column (NULL); a column in `defaults` that is missing is filled with that
    value. Duplicate keys are refused.
    """
    return frames_to_arrow(name, [(run_id, frame, defaults)])[0]


def frames_to_arrow(
    name: str, parts: Sequence[tuple[str, Frame, Mapping[str, Any]]]
) -> tuple[pa.Table, np.ndarray]:
    """The rows of several runs for table `name` as one Arrow table, and the part each row came from.

    Each part is `(run_id, frame, defaults)` as `frame_to_arrow` takes them. The checks and the
    conversion run once over all the rows, not once per run and column (run by run they cost
    ~0.3 ms a table, more than the batched insert of those rows); when a check fails it is rerun
    on one run at a time, so the error is the one `frame_to_arrow` gives for the offending run.
    """
    table = TABLES[name]
    schema = arrow_schema(table)
    kept = []  # (part index, run id, given columns, rows, defaults)
    for index, (run_id, frame, defaults) in enumerate(parts):
        if frame is None:
            continue
        given, n = _columns(frame, name)
        unknown = sorted(given.keys() - table.columns.keys())
        if unknown:
            raise InputError(f"{name}: unknown column(s) {unknown}; the columns are {list(table.columns.keys())}")
        if n == 0:
            continue
        if "run_id" in given and any(str(v) != run_id for v in np.unique(np.asarray(given["run_id"], dtype=object))):
            raise InputError(f"{name}.run_id: rows name another run than {run_id!r}")
        kept.append((index, run_id, given, n, defaults))
    if not kept:
        return empty_arrow_table(table), np.empty(0, dtype=np.int64)
    counts = np.array([k[3] for k in kept])
    starts = np.concatenate([[0], np.cumsum(counts)])
    local = np.repeat(np.arange(len(kept)), counts)  # each row's index into `kept`
    arrays = []
    for column in table.columns:
        if column.name == "run_id":
            ids = [k[1] for k in kept]
            arrays.append(pa.repeat(pa.scalar(ids[0], pa.string()), len(local)) if len(ids) == 1
                          else pa.array(ids, pa.string()).take(pa.array(local)))
            continue
        pieces = [_piece(name, column, schema, k) for k in kept]
        if len(pieces) > 1 and all(isinstance(p, np.ndarray) for p in pieces):
            try:
                arrays.append(_float_column(np.concatenate(pieces), column, f"{name}.{column.name}"))
                continue
            except InputError:
                pass  # convert run by run below: the error then names the run
        arrays.append(_concat([_finish(name, column, p, k[1]) for p, k in zip(pieces, kept)]))
    out = pa.Table.from_arrays(arrays, schema=schema)
    try:
        _check_keys(name, out, local if len(kept) > 1 else None, kept[0][1])
    except InputError:
        for i, k in enumerate(kept):  # the first run that fails on its own raises its own error
            _check_keys(name, out.slice(starts[i], counts[i]), None, k[1])
        raise
    return out, np.array([k[0] for k in kept])[local]


def _piece(name: str, column: sa.Column, schema: pa.Schema, part: tuple) -> np.ndarray | pa.Array | Any:
    """One run's values of `column`: float64 numpy (checked later), or converted Arrow, or raw values."""
    _, run_id, given, n, defaults = part
    if column.name in given:
        values = given[column.name]
        if isinstance(values, np.ndarray) and values.dtype == np.float64:
            return values
        return values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    if column.name in defaults:
        return pa.array([defaults[column.name]] * n)
    if column.nullable:
        if isinstance(column.type, sa.Double):
            return np.full(n, np.nan)
        return _Final(pa.nulls(n, type=schema.field(column.name).type))
    raise InputError(f"{name}: required column {column.name!r} is missing (run {run_id})")


class _Final:
    """An Arrow array that needs no conversion (the NULLs of an omitted nullable column)."""

    def __init__(self, array: pa.Array) -> None:
        self.array = array


def _finish(name: str, column: sa.Column, piece: Any, run_id: str) -> pa.Array:
    where = f"{name}.{column.name} (run {run_id})"
    if isinstance(piece, _Final):
        return piece.array
    if isinstance(piece, np.ndarray):
        return _float_column(piece, column, where)
    return _column_to_arrow(piece, column, where)


def _concat(arrays: list[pa.Array]) -> pa.Array:
    return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)


def _check_keys(name: str, table: pa.Table, runs: np.ndarray | None, run_id: str) -> None:
    """Refuse a step < 0, a lag < 1 or a key repeated within a run (`runs`: each row's run, if several)."""
    for key, least in (("step", 0), ("lag", 1)):
        if key in table.column_names and pc.min(table[key]).as_py() < least:
            raise InputError(f"{name}.{key} (run {run_id}): must be >= {least}, got {pc.min(table[key]).as_py()}")
    _refuse_duplicate_keys(name, table, run_id, runs)


def _refuse_duplicate_keys(name: str, table: pa.Table, run_id: str, runs: np.ndarray | None = None) -> None:
    keys = [k for k in KEY_COLUMNS[name] if k != "run_id"]
    if table.num_rows < 2:
        return
    codes = [] if runs is None else [runs]
    for key in keys:  # each key column as integers: strings by their dictionary code
        column = table[key].combine_chunks()
        if not pa.types.is_integer(column.type):
            column = pc.dictionary_encode(column).indices
        codes.append(column.to_numpy(zero_copy_only=False))
    order = np.lexsort(codes[::-1])
    ordered = np.stack([c[order] for c in codes])
    same = (ordered[:, 1:] == ordered[:, :-1]).all(axis=0)
    if same.any():
        row = int(order[int(np.argmax(same))])
        first = {k: table[k][row].as_py() for k in keys}
        raise InputError(f"{name}: key {first} appears more than once in run {run_id}")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)


def latents_to_arrow(latents: Mapping[int, Any] | Sequence[Any] | None, run_id: str) -> pa.Table:
    """Latents as fp16 bytes: a mapping step → array, (step, array) pairs, or arrays by step."""
    schema = arrow_schema(TABLES["latents"])
    if latents is None:
        return empty_arrow_table(TABLES["latents"])
    if isinstance(latents, Mapping):
        pairs = list(latents.items())
    else:
        items = list(latents)
        is_pairs = all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], (int, np.integer)) for x in items)
        pairs = items if (items and is_pairs) else list(enumerate(items))
    steps, shapes, blobs = [], [], []
    for step, value in pairs:
        array = _to_numpy(value)
        half = np.ascontiguousarray(array, dtype=np.float16)
        if np.isfinite(array).all() and not np.isfinite(half).all():
            logger.warning("latents: run %s step %s overflows float16; stored as inf", run_id, step)
        steps.append(_as_int(step, f"latents.step (run {run_id})"))
        shapes.append(json.dumps(list(half.shape)))
        blobs.append(half.tobytes())
    n = len(steps)
    out = pa.Table.from_arrays(
        [
            pa.array([run_id] * n, pa.string()),
            pa.array(steps, pa.int64()),
            pa.array(["float16"] * n, pa.string()),
            pa.array(shapes, pa.string()),
            pa.array(blobs, pa.large_binary()),
        ],
        schema=schema,
    )
    _refuse_duplicate_keys("latents", out, run_id)
    return out
