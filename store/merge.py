"""Shards: one store file per torchrun rank, and `merge_stores` to combine them into one.

DuckDB lets a single process write a file, so `collect` under `torchrun --nproc-per-node N`
has rank k write `shard_path(db, k)` (`calib.duckdb` → `calib.rank3.duckdb`). `merge_stores`
checks that the shards agree (schema version, model) before copying anything, copies each
run once (a run collected by two shards is kept from the first), and writes the result to a
temporary file that is renamed into place only when complete.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from policies.errors import InputError
from store.database import CalibrationStore
from store.schema import RUN_TABLES, SCHEMA_VERSION, TABLES

__all__ = ["MergeReport", "find_shards", "merge_stores", "shard_path"]

logger = logging.getLogger(__name__)

_MERGE = "sencache-calibrate store merge SHARDS --out OUT.duckdb"


def shard_path(db_path: str | Path, rank: int) -> Path:
    """The shard file of `rank` beside `db_path`: `calib.duckdb`, 2 → `calib.rank2.duckdb`."""
    db_path = Path(db_path)
    if rank < 0:
        raise InputError(f"shard rank must be >= 0, got {rank}")
    return db_path.with_name(f"{db_path.stem}.rank{int(rank)}{db_path.suffix or '.duckdb'}")


def find_shards(db_path: str | Path) -> list[Path]:
    """The existing shard files of `db_path`, by rank."""
    db_path = Path(db_path)
    pattern = re.compile(re.escape(db_path.stem) + r"\.rank(\d+)" + re.escape(db_path.suffix or ".duckdb") + "$")
    found = []
    for candidate in db_path.parent.glob(f"{glob.escape(db_path.stem)}.rank*"):
        match = pattern.match(candidate.name)
        if match:
            found.append((int(match.group(1)), candidate))
    return [p for _, p in sorted(found)]


@dataclass
class MergeReport:
    """What `merge_stores` did: runs copied per shard and duplicates skipped."""

    out_path: Path
    runs_per_shard: dict[str, int] = field(default_factory=dict)
    duplicates_skipped: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _read_shard_meta(con: duckdb.DuckDBPyConnection, alias: str, path: Path) -> dict[str, str]:
    try:
        rows = con.execute(f"SELECT key, value FROM {alias}.meta").fetchall()
    except duckdb.Error:
        raise InputError(
            f"{path}: not a SenCache calibration store (no `meta` table); "
            f"pass only shard files written by `collect --db`: `{_MERGE}`."
        ) from None
    return dict(rows)


def _check_agreement(metas: dict[Path, dict[str, str]]) -> str:
    """The shards' common model fingerprint; InputError naming the odd shard otherwise."""
    for path, meta in metas.items():
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise InputError(
                f"{path}: store schema version {meta.get('schema_version')}, but this sencache merges "
                f"version {SCHEMA_VERSION}; shards of different versions cannot be merged. Re-collect "
                f"that shard with this sencache (`sencache-calibrate collect ... --db {path}`), then `{_MERGE}`."
            )
    fingerprints = {p: m.get("model_fingerprint") or "" for p, m in metas.items()}
    distinct = sorted(set(fingerprints.values()) - {""})
    if len(distinct) > 1:
        listing = "; ".join(f"{p}: {fp or '(empty)'}" for p, fp in fingerprints.items())
        raise InputError(
            f"shards hold runs of different models ({listing}); merge only the shards of one model: `{_MERGE}`."
        )
    return distinct[0] if distinct else ""


def merge_stores(shard_paths: Sequence[str | Path], out_path: str | Path, *, overwrite: bool = False) -> MergeReport:
    """Combine shard stores into a new store at `out_path`.

    Refuses (InputError) missing shards, shards of another schema version or of different models,
    and an existing `out_path` unless `overwrite=True`. Every run appears once in the result.
    """
    shards = [Path(p) for p in shard_paths]
    out_path = Path(out_path)
    if not shards:
        raise InputError(f"no shard files given to merge: `{_MERGE}`")
    for path in shards:
        if not path.exists():
            raise InputError(f"{path}: no such shard file; list the files `collect` wrote: `{_MERGE}`")
        if path.resolve() == out_path.resolve():
            raise InputError(f"{out_path}: the output is also one of the shards; choose another --out")
    if len({p.resolve() for p in shards}) != len(shards):
        raise InputError("a shard file is listed twice; list each shard once")
    if out_path.exists() and not overwrite:
        raise InputError(f"{out_path}: already exists; choose another --out, or pass overwrite=True (--overwrite)")

    tmp = out_path.with_name(f".{out_path.name}.merging-{os.getpid()}")
    for leftover in (tmp, Path(f"{tmp}.wal")):
        leftover.unlink(missing_ok=True)
    report = MergeReport(out_path)
    try:
        _merge_into(shards, tmp, report)
        os.replace(tmp, out_path)
        Path(f"{out_path}.wal").unlink(missing_ok=True)  # a stale log of a file just replaced
    finally:
        for leftover in (tmp, Path(f"{tmp}.wal")):
            leftover.unlink(missing_ok=True)
    logger.info(
        "store: merged %d shard(s) into %s: %d runs, %d duplicate(s) skipped",
        len(shards), out_path, report.counts.get("runs", 0), report.duplicates_skipped,
    )
    return report


def _merge_into(shards: list[Path], tmp: Path, report: MergeReport) -> None:
    CalibrationStore(tmp).close()  # creates the schema and meta; the copy runs on a plain connection
    con = duckdb.connect(str(tmp))
    try:
        aliases = {}
        for i, path in enumerate(shards):
            alias = f"shard{i}"
            try:
                con.execute(f"ATTACH {_sql_str(str(path))} AS {alias} (READ_ONLY)")
            except duckdb.Error as exc:
                raise InputError(
                    f"{path}: cannot open the shard ({exc}); is its `collect` still running? Wait for it, then `{_MERGE}`."
                ) from None
            aliases[path] = alias
        metas = {path: _read_shard_meta(con, alias, path) for path, alias in aliases.items()}
        fingerprint = _check_agreement(metas)
        con.execute("UPDATE meta SET value = ? WHERE key = 'model_fingerprint'", [fingerprint])
        costs = next((m["skip_costs"] for m in metas.values() if m.get("skip_costs")), None)
        if costs is not None:  # measured on the same model by every shard's collect
            con.execute("INSERT INTO meta (key, value) VALUES ('skip_costs', ?)", [costs])
        for path, alias in aliases.items():
            con.begin()
            new = f"SELECT run_id FROM {alias}.runs WHERE run_id NOT IN (SELECT run_id FROM main.runs)"
            con.execute(f"CREATE TEMP TABLE _new_runs AS {new}")
            n_new = con.execute("SELECT count(*) FROM _new_runs").fetchone()[0]
            n_all = con.execute(f"SELECT count(*) FROM {alias}.runs").fetchone()[0]
            for name in RUN_TABLES:
                columns = ", ".join(f'"{c.name}"' for c in TABLES[name].columns)
                con.execute(
                    f"INSERT INTO main.{name} ({columns}) SELECT {columns} FROM {alias}.{name} "
                    "WHERE run_id IN (SELECT run_id FROM _new_runs)"
                )
            con.execute("DROP TABLE _new_runs")
            con.commit()
            report.runs_per_shard[str(path)] = int(n_new)
            report.duplicates_skipped += int(n_all - n_new)
        for alias in aliases.values():
            con.execute(f"DETACH {alias}")
        report.counts = {
            name: int(con.execute(f"SELECT count(*) FROM main.{name}").fetchone()[0]) for name in RUN_TABLES
        }
        con.execute("CHECKPOINT")
    finally:
        con.close()
