"""One matched table across several bench folders: where SenCache stands on each model.

    python benchmarks/bench_table.py out/bench-toy-wan out/bench-toy-cogvideox out/bench-toy-ltx

For every bench folder (written by `sencache-calibrate bench`) and every matched NFE fraction:
SenCache's PSNR, its paired difference against evenly spaced skipping (mean over the same
prompts and seeds ± standard error), its rank among the methods that reached the fraction, and
the best method there. Prints Markdown, so the table can go into a README or an issue as is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from calibration.bench_report import ranking


def rows(folder: Path) -> list[str]:
    result = json.loads((folder / "bench.json").read_text())
    name = result["model"]["name"]
    samples = len(result["prompts"]) * len(result["seeds"])
    out = []
    for fraction, table in result["matched"].items():
        order = ranking(table)
        ours = table.get("sencache", {})
        best = order[0] if order else "—"
        if ours.get("reached"):
            paired = f"{ours['vs_uniform']:+.2f} ± {ours['vs_uniform_se']:.2f}" if "vs_uniform" in ours else "—"
            cells = [f"{ours['psnr']:.2f} ± {ours['spread']:.2f}", paired, f"{order.index('sencache') + 1} of {len(order)}"]
        else:
            cells = ["not reached", "—", "—"]
        uniform = table.get("uniform", {}).get("psnr")
        cells.append("—" if uniform is None else f"{uniform:.2f}")
        cells.append(f"{best} {table[best]['psnr']:.2f}" if order else "—")
        out.append(f"| {name} | {fraction} | {samples} | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="bench output folders (each holds bench.json)")
    args = parser.parse_args()
    print("| model | NFE | samples | SenCache PSNR ± spread | vs uniform, paired | rank | uniform PSNR | best method |")
    print("|---|---|---|---|---|---|---|---|")
    for folder in args.folders:
        for line in rows(folder):
            print(line)


if __name__ == "__main__":
    main()
