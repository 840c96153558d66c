"""The calibration store: SQLAlchemy schema on DuckDB.

`collect` writes each run whole through `CalibrationStore.write_run`; `fit` and `export` read
DataFrames back. Under torchrun each rank writes `shard_path(db, rank)` and `merge_stores`
combines the shards.
"""

from store.database import CalibrationStore
from store.merge import MergeReport, find_shards, merge_stores, shard_path
from store.rows import RUN_ID_FIELDS, make_run_id
from store.schema import KEY_COLUMNS, SCHEMA_VERSION, SPLITS, TABLES
from store.writer import RunRecord

__all__ = [
    "KEY_COLUMNS",
    "RUN_ID_FIELDS",
    "SCHEMA_VERSION",
    "SPLITS",
    "TABLES",
    "CalibrationStore",
    "MergeReport",
    "RunRecord",
    "find_shards",
    "make_run_id",
    "merge_stores",
    "shard_path",
]
