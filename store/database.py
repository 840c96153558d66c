"""`CalibrationStore`: one DuckDB file of calibration runs for one model.

    with CalibrationStore("calib.duckdb", model_fingerprint=fp) as db:
        if run_id not in db.completed_run_ids():
            db.write_run(run_row, steps, sensitivities, cache_errors)
        errors = db.cache_errors()

DuckDB lets one process write a file at a time; under torchrun each rank writes its own shard
(`store.merge.shard_path`) and `merge_stores` combines them. Readers may share a file
(`read_only=True`).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import sqlalchemy as sa

from policies.errors import InputError
from store import queries
from store.schema import METADATA, SCHEMA_VERSION, TABLES
from store.writer import RunRecord, prepare_records, write_prepared

__all__ = ["CalibrationStore", "package_version"]

logger = logging.getLogger(__name__)

_COLLECT = "sencache-calibrate collect --model MODEL --db {path}"

# A read-write store runs DuckDB on one thread. Its work is appends of a few runs at a time, too
# small to split, and handing each statement to a worker thread costs a wake-up that on busy
# cores (a training job beside `collect`) took longer than the append: one thread made
# `write_run` ~1.2-1.5x and 100-run `write_runs` ~1.3x faster (`benchmarks/store_insert.py`).
# Readers (`read_only=True`: fit, notebooks) keep DuckDB's default, one thread per core.
_WRITER_THREADS = 1


def package_version() -> str:
    try:
        return importlib.metadata.version("sencache")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _explain_open_failure(path: Path, exc: Exception) -> InputError:
    text = str(getattr(exc, "orig", exc))
    if "lock" in text.lower():
        return InputError(
            f"{path}: the store is open for writing in another process (a `collect` still running?). "
            "Wait for it to finish, or give each process its own file: under torchrun each rank writes "
            "`<db stem>.rank<k>.duckdb`; combine them with `sencache-calibrate store merge`. "
            f"(DuckDB: {text})"
        )
    if "different configuration" in text:
        return InputError(
            f"{path}: already open in this process in another mode (read-only vs read-write, or a plain "
            "duckdb connection beside a read-write store); close the other CalibrationStore or connection "
            "on it first, or open both the same way."
        )
    return InputError(
        f"{path}: not a readable DuckDB file ({text}). Point --db at a store written by "
        f"`{_COLLECT.format(path='calib.duckdb')}`, or choose a new path for a new store."
    )


class CalibrationStore:
    """The calibration database at `path`, created (tables and `meta`) when it does not exist.

    Args:
        path: the DuckDB file.
        model_fingerprint: when given, the store must hold this model's runs (`check_compatible`);
            a new store records it.
        read_only: open for reading only; several processes may then read one file. The file
            must exist.
        create: when False, a missing file is an error instead of a new store.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        model_fingerprint: str | None = None,
        read_only: bool = False,
        create: bool = True,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._raw: Any = None
        existed = self.path.exists()
        if not existed and (read_only or not create):
            raise InputError(
                f"{self.path}: no calibration store there. Collect one first: "
                f"`{_COLLECT.format(path=self.path)}` (or combine shards with "
                f"`sencache-calibrate store merge SHARDS --out {self.path}`)."
            )
        if not existed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        url = sa.engine.URL.create("duckdb", database=str(self.path))
        connect_args: dict[str, Any] = {"read_only": read_only}
        if not read_only:
            connect_args["config"] = {"threads": _WRITER_THREADS}
        self._engine = sa.create_engine(url, connect_args=connect_args, poolclass=sa.pool.StaticPool)
        try:
            with self._engine.connect() as conn:
                names = set(sa.inspect(conn).get_table_names())
        except (sa.exc.DBAPIError, duckdb.Error) as exc:
            self._engine.dispose()
            raise _explain_open_failure(self.path, exc) from None
        try:
            if not names and not read_only:
                self._create(model_fingerprint)
            elif "meta" not in names:
                raise InputError(
                    f"{self.path}: a DuckDB file but not a SenCache calibration store (no `meta` table). "
                    f"Use another --db, e.g. `{_COLLECT.format(path='calib.duckdb')}`."
                )
            self._meta = queries.read_meta(self._engine)
            self._check_version()
            if model_fingerprint is not None:
                self.check_compatible(model_fingerprint)
        except BaseException:
            self._engine.dispose()
            raise

    # -- opening and compatibility -------------------------------------------------------------

    def _create(self, model_fingerprint: str | None) -> None:
        created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        rows = {
            "schema_version": str(SCHEMA_VERSION),
            "model_fingerprint": model_fingerprint or "",
            "created": created,
            "package_version": package_version(),
        }
        with self._engine.begin() as conn:  # DDL is transactional in DuckDB: all tables or none
            METADATA.create_all(conn)
            conn.execute(sa.insert(TABLES["meta"]), [{"key": k, "value": v} for k, v in rows.items()])
        logger.info("store: created %s (schema version %d)", self.path, SCHEMA_VERSION)

    def _check_version(self) -> None:
        found = self._meta.get("schema_version")
        if found != str(SCHEMA_VERSION):
            older = found is not None and found.isdigit() and int(found) < SCHEMA_VERSION
            why = (" (it predates the per-reuse-mode errors that `fit` needs: re-collect it)" if older else "")
            command = _COLLECT.format(path="NEW.duckdb").replace("MODEL", self._model_name() or "MODEL")
            raise InputError(
                f"{self.path}: store schema version {found}, but this sencache ({package_version()}) "
                f"reads version {SCHEMA_VERSION}{why}. Collect a new store with "
                f"`{command}` (the same prompts, seeds and --steps as before), then fit from it; or "
                f"use the sencache version that wrote it ({self._meta.get('package_version', 'unknown')})."
            )

    def _model_name(self) -> str | None:
        """The model name the runs were collected with, for the re-collect command (best effort)."""
        try:
            with self._engine.connect() as conn:
                row = conn.execute(sa.text("SELECT model_name FROM runs WHERE model_name IS NOT NULL LIMIT 1")).first()
        except sa.exc.SQLAlchemyError:
            return None
        return None if row is None else str(row[0])

    @property
    def meta(self) -> dict[str, str]:
        """The `meta` table: schema_version, model_fingerprint, created, package_version."""
        return dict(self._meta)

    def set_meta(self, key: str, value: str) -> None:
        """Write one `meta` entry (a fact about the store's model that `fit` reads without the
        model, e.g. `skip_costs`); the schema's own keys are not for writing."""
        if self.read_only:
            raise InputError(f"{self.path}: opened read-only; cannot write meta {key!r}")
        if key in ("schema_version", "model_fingerprint", "created", "package_version"):
            raise ValueError(f"meta key {key!r} belongs to the store itself")
        table = TABLES["meta"]
        with self._engine.begin() as conn:
            conn.execute(sa.delete(table).where(table.c.key == key))
            conn.execute(sa.insert(table), [{"key": key, "value": str(value)}])
        self._meta[key] = str(value)

    @property
    def model_fingerprint(self) -> str | None:
        return self._meta.get("model_fingerprint") or None

    def check_compatible(self, model_fingerprint: str) -> None:
        """Refuse (InputError) a store that holds another model's runs; claims an empty store."""
        self._check_version()
        stored = self.model_fingerprint
        if stored is None:
            if not self.read_only:
                with self._engine.begin() as conn:
                    conn.execute(
                        sa.update(TABLES["meta"]).where(TABLES["meta"].c.key == "model_fingerprint"),
                        {"value": model_fingerprint},
                    )
                self._meta["model_fingerprint"] = model_fingerprint
            return
        if stored != model_fingerprint:
            raise InputError(
                f"{self.path}: holds calibration runs of model fingerprint {stored}, not of this model "
                f"({model_fingerprint}). A store holds one model: use another file, e.g. "
                f"`{_COLLECT.format(path='OTHER.duckdb')}`."
            )

    # -- writing ----------------------------------------------------------------------------------

    def write_run(
        self,
        run_row: Mapping[str, Any],
        steps: pd.DataFrame | None,
        sensitivities: pd.DataFrame | None,
        cache_errors: pd.DataFrame | None,
        propagation: pd.DataFrame | None = None,
        latents: Mapping[int, Any] | Sequence[Any] | None = None,
        reuse_errors: pd.DataFrame | None = None,
        mask_errors: pd.DataFrame | None = None,
    ) -> bool:
        """Store one run and all its rows in one transaction; False when the run was already stored.

        Nothing of the run is stored if anything fails (an exception, a crash, SIGKILL).
        `run_row` needs model_fingerprint, prompt, seed, num_steps and estimator; `run_id` is
        derived from the run's settings (`store.rows.make_run_id`) unless given.
        """
        record = RunRecord(run_row, steps, sensitivities, cache_errors, propagation, latents, reuse_errors, mask_errors)
        return self.write_runs([record])[0]

    def write_runs(self, records: Iterable[RunRecord]) -> list[bool]:
        """Store several runs in one transaction (all or none); per run, whether it was new.

        Batching amortises the per-transaction cost (~1.5-3 ms per INSERT statement, an fdatasync
        at commit) when runs are cheap: ~57 runs/s one at a time, ~1,200 runs/s in batches of
        100 (`benchmarks/store_insert.py`, 301 rows a run, 2 shared cores).
        """
        if self.read_only:
            raise InputError(f"{self.path}: opened read-only; open it with read_only=False to write runs")
        batch = prepare_records(list(records))
        fingerprints = set(batch.fingerprints)
        claim = None
        if self.model_fingerprint is None and len(fingerprints) == 1:
            claim = next(iter(fingerprints))
        else:
            expected = self.model_fingerprint or ""
            for run_id, fingerprint in zip(batch.run_ids, batch.fingerprints):
                if fingerprint != expected:
                    raise InputError(
                        f"{self.path}: run {run_id} is of model fingerprint {fingerprint}, but the store "
                        f"holds model {expected or '(mixed batch)'}. A store holds one model: use another "
                        f"file, e.g. `{_COLLECT.format(path='OTHER.duckdb')}`."
                    )
        written = write_prepared(self._duckdb(), batch, claim_fingerprint=claim)
        if claim is not None and any(written):
            self._meta["model_fingerprint"] = claim
        return written

    def _duckdb(self) -> Any:
        """The duckdb connection under the engine (StaticPool: the store's one connection).

        Writes use it directly: a checkout through the pool costs a rollback on return (~1 ms),
        and `store.writer` opens and ends its own transaction anyway.
        """
        if self._raw is None:
            fairy = self._engine.raw_connection()
            self._raw = fairy.driver_connection
            fairy.close()  # back to the pool; StaticPool keeps the connection open until dispose
        return self._raw

    # -- reading ----------------------------------------------------------------------------------

    def completed_run_ids(self) -> set[str]:
        """Ids of the stored runs; every stored run is complete (runs are written whole)."""
        with self._engine.connect() as conn:
            return set(conn.execute(sa.select(TABLES["runs"].c.run_id)).scalars())

    def runs(self, run_ids: Iterable[str] | None = None, *, split: str | None = None) -> pd.DataFrame:
        return queries.read_table(self._engine, "runs", run_ids, split=split)

    def steps(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        return queries.read_table(self._engine, "steps", run_ids)

    def sensitivities(self, run_ids: Iterable[str] | None = None, *, estimator: str | None = None) -> pd.DataFrame:
        return queries.read_table(self._engine, "sensitivities", run_ids, estimator=estimator)

    def cache_errors(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        return queries.read_table(self._engine, "cache_errors", run_ids)

    def reuse_errors(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Per computed step, lag and reuse mode, the measured error (schema version 2)."""
        return queries.read_table(self._engine, "reuse_errors", run_ids)

    def propagation(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        return queries.read_table(self._engine, "propagation", run_ids)

    def mask_errors(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Per run, the final error of whole static schedules really run (schema version 4)."""
        return queries.read_table(self._engine, "mask_errors", run_ids)

    def latents(self, run_id: str) -> dict[int, np.ndarray]:
        """Step → float16 array for one run (empty when latents were not stored)."""
        return queries.read_latents(self._engine, run_id)

    def table_counts(self) -> dict[str, int]:
        return queries.table_counts(self._engine)

    def content_digest(self) -> str:
        """A digest of every row except wall-clock columns (see `store.queries.content_digest`)."""
        return queries.content_digest(self._engine)

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the file (checkpointing the write-ahead log into it)."""
        self._raw = None
        self._engine.dispose()

    def __enter__(self) -> CalibrationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"CalibrationStore({str(self.path)!r}, {mode}, model={self.model_fingerprint})"
