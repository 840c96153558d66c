"""Insert rate of the calibration store: synthetic runs written through `CalibrationStore`.

    PYTHONPATH=. python benchmarks/store_insert.py              # 1,000 runs x 50 steps x K_max 4, batches 1/10/100
    PYTHONPATH=. python benchmarks/store_insert.py --batch 1 20  # other runs-per-transaction

Per run: 1 `runs` row, 50 `steps`, 50 `sensitivities`, 200 `cache_errors` rows (301 rows), so
1,000 runs are 301,000 rows. The rows are generated before the clock starts; the timing covers
what `collect` pays: validation, conversion to Arrow, the transaction and its commit. `--batch 1`
is `write_run` (one transaction per run); larger batches go through `write_runs`. `--executemany`
times the row-by-row alternative on the same data for comparison. The last line is what one run
per transaction costs whatever its size: `write_run` of a one-step run, and bare DuckDB doing
four one-row INSERTs and a COMMIT (one fdatasync of the write-ahead log).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from store import CalibrationStore, RunRecord

FP = "bench-fingerprint"


def synthetic_records(n_runs: int, n_steps: int, k_max: int, seed: int = 0) -> list[RunRecord]:
    rng = np.random.default_rng(seed)
    t = np.linspace(1.0, 0.0, n_steps + 1)
    step = np.arange(n_steps)
    ce_step, ce_lag = np.repeat(step, k_max), np.tile(np.arange(1, k_max + 1), n_steps)
    records = []
    for i in range(n_runs):
        run = {
            "model_fingerprint": FP,
            "model_name": "bench",
            "scheduler_class": "FlowMatchEulerDiscreteScheduler",
            "scheduler_config": {"shift": 3.0},
            "prompt": f"prompt {i // 4}",
            "seed": i % 4,
            "num_steps": n_steps,
            "guidance_scale": 5.0,
            "height": 480,
            "width": 832,
            "num_frames": 81,
            "estimator": "trajectory",
            "wall_s": 1.0,
        }
        steps = pd.DataFrame(
            {"step": step, "timestep": t[:-1], "t_next": t[1:], "dx_norm": rng.random(n_steps),
             "x_norm": rng.random(n_steps), "out_norm": rng.random(n_steps)}
        )
        sens = pd.DataFrame({"step": step, "J_x": rng.random(n_steps), "J_t": rng.random(n_steps)})
        n = len(ce_step)
        errors = pd.DataFrame(
            {"step": ce_step, "lag": ce_lag, "dx": rng.random(n), "dt": rng.random(n),
             "residual_error": rng.random(n), "output_error": rng.random(n)}
        )
        records.append(RunRecord(run, steps, sens, errors))
    return records


def _rows(records: list[RunRecord]) -> int:
    return sum(1 + len(r.steps) + len(r.sensitivities) + len(r.cache_errors) for r in records)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}.wal")) if p.exists())


def bench_store(records: list[RunRecord], path: Path, batch: int) -> dict:
    with CalibrationStore(path, model_fingerprint=FP) as db:
        start, cpu = time.perf_counter(), time.process_time()
        if batch == 1:
            for r in records:
                db.write_run(r.run, r.steps, r.sensitivities, r.cache_errors)
        else:
            for i in range(0, len(records), batch):
                db.write_runs(records[i : i + batch])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        counts = db.table_counts()
    return {"seconds": seconds, "cpu": cpu, "rows": sum(counts.values()), "bytes": _size(path)}


def bench_executemany(records: list[RunRecord], path: Path) -> dict:
    """Row-by-row inserts of the cache_errors rows only, one transaction per run (for contrast)."""
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE cache_errors (run_id TEXT, step INTEGER, lag INTEGER, dx DOUBLE, dt DOUBLE, "
                "residual_error DOUBLE, output_error DOUBLE)")
    start = time.perf_counter()
    for i, r in enumerate(records):
        rows = [(str(i), *row) for row in r.cache_errors.itertuples(index=False, name=None)]
        con.begin()
        con.executemany("INSERT INTO cache_errors VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        con.commit()
    seconds = time.perf_counter() - start
    con.close()
    return {"seconds": seconds, "rows": sum(len(r.cache_errors) for r in records), "bytes": _size(path)}


def bench_tiny_runs(path: Path, n: int = 100) -> float:
    """Median seconds of `write_run` for a run of one step, one sensitivity and one cache error."""
    times = []
    with CalibrationStore(path, model_fingerprint=FP) as db:
        for r in synthetic_records(n, 1, 1, seed=1):
            start = time.perf_counter()
            db.write_run(r.run, r.steps, r.sensitivities, r.cache_errors)
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_commit_floor(path: Path, tables: int = 4, n: int = 100) -> float:
    """Median seconds of a transaction of one one-row INSERT into each of `tables` tables.

    A `write_run` of steps, sensitivities and cache errors is such a transaction (plus its rows):
    this is what it pays however few rows it holds and however cheaply they are converted.
    """
    import duckdb

    con = duckdb.connect(str(path))
    for k in range(tables):
        con.execute(f"CREATE TABLE t{k} (x INTEGER)")
    times = []
    for i in range(n):
        start = time.perf_counter()
        con.begin()
        for k in range(tables):
            con.execute(f"INSERT INTO t{k} VALUES (?)", [i])
        con.commit()
        times.append(time.perf_counter() - start)
    con.close()
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--k-max", type=int, default=4)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 10, 100], help="runs per transaction (1 = write_run)")
    parser.add_argument("--executemany", type=int, default=0, metavar="N", help="also time executemany on N runs")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the stores (default: a temp dir)")
    args = parser.parse_args()

    records = synthetic_records(args.runs, args.steps, args.k_max)
    print(f"{args.runs} runs x {args.steps} steps x K_max {args.k_max}: {_rows(records):,} rows "
          f"(runs {args.runs:,}, steps {args.runs * args.steps:,}, sensitivities {args.runs * args.steps:,}, "
          f"cache_errors {sum(len(r.cache_errors) for r in records):,})")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for batch in args.batch:
            out = bench_store(records, Path(tmp) / f"bench-b{batch}.duckdb", batch)
            print(f"batch {batch:>4} ({'write_run' if batch == 1 else 'write_runs'}): {out['rows']:,} rows in "
                  f"{out['seconds']:.2f} s = {out['rows'] / out['seconds']:,.0f} rows/s "
                  f"({args.runs / out['seconds']:,.0f} runs/s; process CPU {out['cpu']:.2f} s); "
                  f"store file {out['bytes'] / 2**20:.1f} MiB")
        if args.executemany:
            out = bench_executemany(records[: args.executemany], Path(tmp) / "executemany.duckdb")
            print(f"executemany, cache_errors only, {args.executemany} runs: {out['rows']:,} rows in "
                  f"{out['seconds']:.2f} s = {out['rows'] / out['seconds']:,.0f} rows/s")
        per_run = _rows(records) / args.runs
        tiny = bench_tiny_runs(Path(tmp) / "tiny.duckdb")
        floor = bench_commit_floor(Path(tmp) / "floor.duckdb")
        print(f"fixed cost of a transaction (medians of 100): write_run of a 1-step run {tiny * 1e3:.1f} ms, so one "
              f"run per transaction stays under ~{per_run / tiny:,.0f} rows/s at {per_run:.0f} rows a run; bare DuckDB, "
              f"4 one-row INSERTs into 1-column tables + COMMIT: {floor * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
