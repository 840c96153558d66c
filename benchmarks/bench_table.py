"""One matched table across several bench folders: where SenCache stands on each model.

    python benchmarks/bench_table.py out/bench-toy-wan out/bench-toy-cogvideox out/bench-toy-ltx

For every bench folder (written by `sencache-calibrate bench`) and every matched NFE fraction:
SenCache's PSNR and its paired differences (mean over the same prompts and seeds ± standard
error) against its static twin (`sencache-static`: what the score adds), TaylorSeer and evenly
spaced skipping, its rank among the methods that reached the fraction, and the best method
there. The matched values are recomputed from each folder's per-sample rows, so a folder written
before a reference was paired gets it too. Prints Markdown, for a README or an issue as is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from calibration.bench_report import matched, ranking

REFERENCES = ("sencache-static", "taylorseer", "uniform")


def _paired(entry: dict, reference: str) -> str:
    key = f"vs_{reference}"
    return f"{entry[key]:+.2f} ± {entry[f'{key}_se']:.2f}" if key in entry else "—"


def rows(folder: Path) -> list[str]:
    result = json.loads((folder / "bench.json").read_text())
    name = result["model"]["name"]
    samples = len(result["prompts"]) * len(result["seeds"])
    fractions = tuple(float(f) for f in result["matched"])
    out = []
    for fraction, table in matched(result["results"], fractions).items():
        order = ranking(table)
        ours = table.get("sencache", {})
        best = order[0] if order else "—"
        if ours.get("reached"):
            cells = [f"{ours['psnr']:.2f} ± {ours['spread']:.2f}", *(_paired(ours, r) for r in REFERENCES),
                     f"{order.index('sencache') + 1} of {len(order)}"]
        else:
            cells = ["not reached", *("—" for _ in REFERENCES), "—"]
        for reference in REFERENCES:
            value = table.get(reference, {}).get("psnr")
            cells.append("—" if value is None else f"{value:.2f}")
        cells.append(f"{best} {table[best]['psnr']:.2f}" if order else "—")
        out.append(f"| {name} | {fraction} | {samples} | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="bench output folders (each holds bench.json)")
    args = parser.parse_args()
    print("| model | NFE | samples | SenCache PSNR ± spread | vs static twin | vs TaylorSeer | vs uniform | rank "
          "| static twin | TaylorSeer | uniform | best method |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for folder in args.folders:
        for line in rows(folder):
            print(line)


if __name__ == "__main__":
    main()
