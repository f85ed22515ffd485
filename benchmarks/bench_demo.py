"""Demo benchmark: wall-clock time of ``brainlm demo`` end to end, step by step.

The demo's budget is 15 minutes on 2 CPU cores (issue 9). This runs ``brainlm demo`` (or
``--quick``) in a fresh process into a temporary folder and records the total wall time, the
seconds of each step (``summary.json`` -> ``step_seconds``), the key numbers, the machine's
core count and load average before and after. Other processes on the cores slow every step,
so compare runs only at similar load.

    python benchmarks/bench_demo.py            # the default demo (about 12 min on 2 idle cores)
    python benchmarks/bench_demo.py --quick    # the smoke-test setting

Results: benchmarks/results/demo.json (one entry per setting, replaced on each run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from brainlm.data.atomic import write_json

RESULTS = Path(__file__).parent / "results" / "demo.json"


def run(quick: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        out = Path(tmp) / "demo"
        cmd = [sys.executable, "-m", "brainlm.commands", "demo", "--out", str(out)] + (["--quick"] if quick else [])
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()
        summary = json.loads((out / "summary.json").read_text())
        report_bytes = (out / "report.html").stat().st_size
    return {
        "command": summary["command"], "wall_seconds": round(wall, 1),
        "demo_seconds": summary["seconds"], "step_seconds": summary["step_seconds"],
        "key_numbers": {k["label"]: k["value"] for k in summary["key_numbers"]},
        "report_bytes": report_bytes, "device": summary["device"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1_5_15_before": [round(v, 2) for v in load_before],
                    "load_average_1_5_15_after": [round(v, 2) for v in load_after]},
        "settings": summary["settings"]["demo"],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="time `brainlm demo --quick` instead")
    args = ap.parse_args()
    result = run(args.quick)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["quick" if args.quick else "default"] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS, results)
    print(f"{result['command']}: {result['wall_seconds'] / 60:.1f} min wall on {result['machine']['cpus']} CPUs "
          f"(load {result['machine']['load_average_1_5_15_before'][0]} -> "
          f"{result['machine']['load_average_1_5_15_after'][0]})")
    for step, seconds in result["step_seconds"].items():
        print(f"  {step:15s} {seconds:7.1f} s")


if __name__ == "__main__":
    main()
