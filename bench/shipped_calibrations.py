#!/usr/bin/env python3
"""Calibrates every shipped protocol as the daemon's designs job does, and
prints one table: the stated and the calibrated thresholds, mean power at
the MID under each, the betting test's, the worst false-stop rate under
each, and the time (issue 16's closing figures).

    python3 bench/shipped_calibrations.py [--trials 400] [--threads 2]
    python3 bench/shipped_calibrations.py --summarize DIR   # tables of existing reports

The daemon gives `jobs.calibration_trials` (400) to outcomes the Kalman
filter fits (gaussian, normal noise) and a fifth (at least 8) to the
importance-sampled ones, with no fresh check: so does this. NOF1D: the
binary (default target/release/nof1d). Reports go to target/bench/.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def trials_for(protocol: Path, configured: int) -> int:
    """The designs job's count (`jobs::designs::calibration_trials`)."""
    outcome = tomllib.loads(protocol.read_text())["outcome"]
    by_filter = outcome.get("family") == "gaussian" and outcome.get("noise", "normal") == "normal"
    return max(configured, 4) if by_filter else max(configured // 5, 8)


def row(name: str, report: dict) -> str:
    rows = report["rows"]

    def mean(key):
        values = [r[key]["rate"] for r in rows if r.get(key)]
        return 100 * sum(values) / len(values) if values else float("nan")

    def worst(key):
        values = [r[key]["rate"] for r in rows if r.get(key)]
        return 100 * max(values) if values else float("nan")

    bets = [r["betting"]["power"]["rate"] for r in rows if r.get("betting")]
    betting = f"{100 * sum(bets) / len(bets):.1f}%" if bets else "n/a"
    drop = report.get("drop_arm")
    timing = report["timing"]
    return (
        f"| {name} | {report['protocol_efficacy']} → {report['efficacy']:.4f} "
        f"({report['boundary']}, bound by {report['binding']}) | {report['futility']} "
        f"| {'-' if drop is None else drop} | {mean('protocol_power'):.1f}% → {mean('calibrated_power'):.1f}% "
        f"| {betting} | {worst('protocol_false_stops'):.1f}% → {worst('calibrated_false_stops'):.1f}% "
        f"| {max(r['null_trials'] for r in rows)} | {timing['wall_s']:.1f} s, {timing['fits']} fits |"
    )


HEADER = (
    "| protocol | efficacy: stated → calibrated | futility | arm drop "
    "| mean power at the MID: stated → calibrated | betting test | worst false stops: stated → calibrated "
    "| null trials (binding) | time |\n|---|---|---|---|---|---|---|---|---|"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--summarize", type=Path, help="only print the table of the reports in this folder")
    args = ap.parse_args()
    protocols = sorted((ROOT / "protocols").glob("*.toml"))
    lines = [HEADER]
    if args.summarize:
        for p in protocols:
            report = args.summarize / f"{p.stem}.json"
            if report.exists():
                lines.append(row(p.stem, json.loads(report.read_text())))
        print("\n".join(lines))
        return 0
    nof1d = os.environ.get("NOF1D", str(ROOT / "target/release/nof1d"))
    out = ROOT / "target/bench"
    out.mkdir(parents=True, exist_ok=True)
    for p in protocols:
        report = out / f"shipped-{p.stem}.json"
        n = trials_for(p, args.trials)
        started = time.monotonic()
        subprocess.run(
            [nof1d, "simulate", "--protocol", str(p), "--suite", "--calibrate", "--trials", str(n),
             "--threads", str(args.threads), "--no-fresh-check", "--seed", str(args.seed),
             "--json", "--out", str(report)],
            check=True, stdout=subprocess.DEVNULL,
        )
        print(f"{p.stem}: {time.monotonic() - started:.1f} s ({n} trials)", file=sys.stderr)
        lines.append(row(p.stem, json.loads(report.read_text())))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
