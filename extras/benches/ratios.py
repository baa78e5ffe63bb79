#!/usr/bin/env python3
"""Prints the throughput ratios of criterion runs of `extras/benches/throughput.rs`.

Usage: python3 extras/benches/ratios.py DIR [DIR ...]

Each DIR is a copy of `target/criterion` after one `cargo bench -p
fanout-extras --bench throughput` run. For every scenario and
implementation, the ratio is baseline_n's median time over the
implementation's, in the same run (higher is better); with several runs, the
median of the per-run ratios is printed. Scenarios without baseline_n print
throughput relative to fanout instead; groups with neither (other benches)
are skipped.
"""
import glob
import json
import os
import statistics
import sys


def medians(run_dir):
    """{scenario: {implementation: median time in ns}} of one run."""
    times = {}
    for path in glob.glob(os.path.join(run_dir, "*", "*", "new", "estimates.json")):
        folder = os.path.dirname(path)
        with open(os.path.join(folder, "benchmark.json")) as f:
            bench = json.load(f)
        with open(path) as f:
            estimate = json.load(f)
        scenario = bench["group_id"]
        implementation = bench.get("function_id") or bench.get("value_str")
        times.setdefault(scenario, {})[implementation] = estimate["median"]["point_estimate"]
    return times


def main(run_dirs):
    runs = [medians(d) for d in run_dirs]
    ratios = {}
    for times in runs:
        for scenario, by_impl in times.items():
            reference = by_impl.get("baseline_n", by_impl.get("fanout"))
            if reference is None:
                continue
            for implementation, time in by_impl.items():
                ratios.setdefault(scenario, {}).setdefault(implementation, []).append(
                    reference / time
                )
    for scenario in sorted(ratios):
        reference = "baseline_n" if "baseline_n" in runs[0].get(scenario, {}) else "fanout"
        print(f"{scenario} (throughput relative to {reference}, {len(run_dirs)} runs)")
        for implementation, values in sorted(ratios[scenario].items()):
            spread = f"{min(values):.3f}..{max(values):.3f}"
            print(f"  {implementation:40s} {statistics.median(values):8.3f}   ({spread})")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
