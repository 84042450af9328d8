#!/usr/bin/env python3
"""Sequential change detection: millstream against River's ADWIN, KSWIN and PageHinkley.

A benchmark, not a test. It generates the synthetic streams with the operators crate's example
`drift_streams` (fixed seeds), runs every detector on every stream and seed, and prints a
markdown table: detection delay and false alarms side by side.

    pip install river            # 0.26.1 was measured
    export CARGO_TARGET_DIR=$HOME/.cache/millstream/target   # optional
    python3 bench/drift/river_compare.py [--seeds 20] [--data DIR] [--detectors ...] [--config JSON]

Definitions (per stream and detector, over the seeds):
- delay: the first detection at or after the change point, minus the change point (the ramp's
  change point is its start); a seed without one is not detected;
- false alarms: detections before the change point; on the stream without change, every one.

River's detectors run with their defaults: ADWIN(delta=0.002), KSWIN(alpha=0.005,
window_size=100, stat_size=30, seed=<the stream's seed>), PageHinkley(min_instances=30,
delta=0.005, threshold=50, alpha=0.9999, mode="both"). millstream runs the default
SequentialConfig unless --config gives fields as JSON.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = ["cargo", "run", "--quiet", "--release", "-p", "millstream-operators", "--example", "drift_streams", "--"]
DETECTORS = ["millstream", "adwin", "kswin", "pagehinkley"]


def river_detector(name, seed):
    from river import drift

    if name == "adwin":
        return drift.ADWIN()
    if name == "kswin":
        return drift.KSWIN(seed=seed)
    return drift.PageHinkley()


def read_values(path):
    with open(path) as f:
        return [float(line) for line in f]


def run_river(name, data, manifest):
    """{(stream, seed): [detection indices]} for one River detector."""
    out = {}
    for stream in manifest["streams"]:
        for seed, file in stream["files"]:
            detector = river_detector(name, seed)
            found = []
            for index, value in enumerate(read_values(data / file)):
                detector.update(value)
                if detector.drift_detected:
                    found.append(index)
            out[(stream["name"], seed)] = found
    return out


def run_millstream(data, config):
    """{(stream, seed): [detection indices]} from the example's --detect."""
    cmd = EXAMPLE + ["--detect", str(data)] + (["--config", config] if config else [])
    done = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    return {(run["stream"], run["seed"]): run["detections"] for run in json.loads(done.stdout)["runs"]}


def summarise(change_point, detections):
    """Detected seeds, delays and false alarms of one stream; detections is [[indices] per seed]."""
    if change_point is None:
        return {"detected": None, "delays": [], "false_alarms": sum(map(len, detections))}
    delays = []
    false_alarms = 0
    for found in detections:
        false_alarms += sum(1 for i in found if i < change_point)
        after = [i for i in found if i >= change_point]
        if after:
            delays.append(after[0] - change_point)
    return {"detected": len(delays), "delays": delays, "false_alarms": false_alarms}


def fmt(x, decimals=None):
    """A delay: "–" for none; a median as it is (whole or .5), a mean with `decimals`."""
    if x is None:
        return "–"
    return f"{x:g}" if decimals is None else f"{x:.{decimals}f}"


def median(delays):
    return statistics.median(delays) if delays else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20, help="seeds per stream (default 20)")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(tempfile.gettempdir()) / "millstream-drift-streams",
        help="where the streams are written (default: in the temporary directory, never in the repository)",
    )
    parser.add_argument("--detectors", default=",".join(DETECTORS), help="a subset of " + ",".join(DETECTORS))
    parser.add_argument("--config", help="millstream SequentialConfig fields as JSON, e.g. '{\"arl0\": 1e6}'")
    args = parser.parse_args()
    detectors = args.detectors.split(",")
    unknown = set(detectors) - set(DETECTORS)
    if unknown:
        sys.exit(f"unknown detectors: {sorted(unknown)}")
    if any(d != "millstream" for d in detectors):
        try:
            import river
        except ImportError:
            sys.exit("River is missing: pip install river")
        print(f"River {river.__version__}", file=sys.stderr)

    subprocess.run(EXAMPLE + ["--out", str(args.data), "--seeds", str(args.seeds)], cwd=REPO, check=True)
    manifest = json.loads((args.data / "manifest.json").read_text())

    results = {}
    for name in detectors:
        start = time.perf_counter()
        if name == "millstream":
            results[name] = run_millstream(args.data, args.config)
        else:
            results[name] = run_river(name, args.data, manifest)
        print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)

    change_points = {s["change_point"] for s in manifest["streams"]} - {None}
    print(f"{args.seeds} seeds per stream, {manifest['samples']} values each, change at value "
          f"{', '.join(map(str, sorted(change_points)))} (delays in values)\n")
    print("| stream | detector | detected | median delay | mean delay | false alarms |")
    print("|---|---|---:|---:|---:|---:|")
    rows = {}
    for stream in manifest["streams"]:
        for name in detectors:
            found = [results[name][(stream["name"], seed)] for seed, _ in stream["files"]]
            row = rows[(stream["name"], name)] = summarise(stream["change_point"], found)
            delays = row["delays"]
            detected = "n/a" if row["detected"] is None else f"{row['detected']}/{len(found)}"
            mean = statistics.mean(delays) if delays else None
            print(f"| {stream['name']} | {name} | {detected} | {fmt(median(delays))} | {fmt(mean, 1)} "
                  f"| {row['false_alarms']} |")

    if {"millstream", "adwin"} <= set(detectors):
        print("\nmillstream against ADWIN (the issue's must-show):")
        for stream in manifest["streams"]:
            ours, adwin = rows[(stream["name"], "millstream")], rows[(stream["name"], "adwin")]
            if stream["change_point"] is None:
                ok = ours["false_alarms"] == 0
                print(f"- {stream['name']}: no false alarm: {'yes' if ok else 'NO'} ({ours['false_alarms']})")
            elif not adwin["delays"]:
                ok = bool(ours["delays"])
                print(f"- {stream['name']}: ADWIN detects nothing, millstream {ours['detected']} seeds: "
                      f"{'yes' if ok else 'NO'}")
            else:
                m_ours, m_adwin = median(ours["delays"]), median(adwin["delays"])
                ok = m_ours is not None and m_ours <= m_adwin and ours["detected"] >= adwin["detected"]
                print(f"- {stream['name']}: median delay {fmt(m_ours)} <= {fmt(m_adwin)} and detected "
                      f"{ours['detected']} >= {adwin['detected']}: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
