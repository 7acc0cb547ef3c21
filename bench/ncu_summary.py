#!/usr/bin/env python3
"""Sums the device time of each kernel in an `ncu --csv` log (gpu__time_duration.sum) by kernel
name, largest first: where a profiled range (e.g. one decode step, bench_cuda_decode --ncu) spends
its time on the GPU.

    ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
        --log-file ncu.csv bench_cuda_decode --config moe-2b.json --gemm bf16 --batches 1 --ncu
    python3 bench/ncu_summary.py ncu.csv [--top 30]
"""
import csv
import sys
from collections import defaultdict


def main():
    path = sys.argv[1]
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 30
    rows = []
    with open(path, newline="", errors="replace") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu's own messages start with ==
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = r.get("Metric Unit", "nsecond")
        v = float(r["Metric Value"].replace(",", ""))
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}.get(unit, 1e-3)
        rows.append((r["Kernel Name"], v * scale, r.get("Grid Size", ""), r.get("Block Size", "")))
    if not rows:
        print(f"{path}: no gpu__time_duration.sum rows")
        return 1
    by = defaultdict(lambda: [0, 0.0, set()])
    for name, us, grid, block in rows:
        short = name if len(name) <= 90 else name[:87] + "..."
        by[short][0] += 1
        by[short][1] += us
        by[short][2].add(grid)
    total = sum(us for _, us, _, _ in rows)
    print(f"{len(rows)} kernels, {total:.1f} us of device time")
    print(f"{'us':>9} {'share':>6} {'calls':>6} {'us/call':>8}  kernel")
    for name, (n, us, grids) in sorted(by.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"{us:9.1f} {100 * us / total:5.1f}% {n:6d} {us / n:8.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
