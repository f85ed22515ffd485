"""Data-stage benchmark: `prepare` throughput and peak memory, and window loading rate.

Generates recordings of UK Biobank shape (490 TRs x 424 parcels, TR 0.735 s) as .npy files,
prepares corpora of growing size (peak memory should stay flat), then streams random 200-TR
windows through a DataLoader with 0 (in-process), 1 and 2 workers.

    python benchmarks/bench_data.py --recordings 1000 --jobs 2

Results: benchmarks/results/data.json (and a table on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from brainlm.data.atlas import Atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.prepare import PrepareSettings, StoreLayout, prepare_corpus
from brainlm.data.windows import WindowDataset

T, P, TR = 490, 424, 0.735


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants, MB (Linux /proc)."""
    parent, rss = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parent[int(d)] = int(fields[1])
            rss[int(d)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(c for c, p in parent.items() if p == pid)
    return total / 1e6


class PeakMemory:
    """Samples the process tree's RSS every 50 ms in a background thread."""

    def __enter__(self):
        self.peak, self._stop = 0.0, threading.Event()

        def poll():
            while not self._stop.is_set():
                self.peak = max(self.peak, tree_rss_mb(os.getpid()))
                time.sleep(0.05)

        self._t = threading.Thread(target=poll, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def synthetic_atlas() -> Atlas:
    rng = np.random.default_rng(0)
    xyz = rng.uniform([-70, -100, -45], [70, 70, 75], size=(P, 3))
    return Atlas("bench424", [f"parcel{i:03d}" for i in range(P)], xyz)


def write_recordings(folder: Path, n: int) -> None:
    """AR(1) signals with a raw-BOLD-like baseline, one .npy per subject."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        e = rng.standard_normal((T, P)).astype(np.float32)
        x = np.empty_like(e)
        x[0] = e[0]
        for t in range(1, T):  # only for data generation
            x[t] = 0.8 * x[t - 1] + e[t]
        np.save(folder / f"sub-{i:05d}_task-rest_bold.npy", 9500 + 40 * x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recordings", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.json"))
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="brainlm-bench-"))
    atlas = synthetic_atlas()
    contract = PreprocessingContract(target_tr=0.72, percent_signal_change=True)

    src = work / "sources"
    t = time.perf_counter()
    write_recordings(src, args.recordings)
    print(f"generated {args.recordings} recordings in {time.perf_counter() - t:.1f} s")

    prepare_runs = []
    sizes = sorted({max(args.recordings // 4, 1), max(args.recordings // 2, 1), args.recordings})
    files = sorted(src.iterdir())
    for n in sizes:
        out = work / f"corpus{n}"
        with PeakMemory() as mem:
            t = time.perf_counter()
            corpus = prepare_corpus(files[:n], out,
                                    PrepareSettings.of(atlas=atlas, contract=contract, tr=TR, jobs=args.jobs,
                                                       overwrite=True))
            dt = time.perf_counter() - t
        row = {"recordings": n, "jobs": args.jobs, "seconds": round(dt, 2),
               "recordings_per_s": round(n / dt, 2), "peak_rss_mb": round(mem.peak, 1),
               "stored_mb": round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6, 1)}
        prepare_runs.append(row)
        print("prepare", row)

    window_runs = []
    for layout in (StoreLayout(chunk_trs=256), StoreLayout(), StoreLayout(compression="lz4")):
        out = work / f"corpus-{layout.compression}"
        corpus = prepare_corpus(files, out,
                                PrepareSettings.of(atlas=atlas, contract=contract, tr=TR, jobs=args.jobs,
                                                   layout=layout, overwrite=True))
        for workers in (0, 1, 2):
            ds = WindowDataset(corpus, "train", window_trs=200, crops_per_recording=2)
            dl = DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers,
                            persistent_workers=workers > 0)
            torch.manual_seed(0)
            rates = []
            with PeakMemory() as mem:
                for _epoch in range(3):  # a shared 2-core machine is noisy: report every epoch
                    it = iter(dl)
                    next(it)  # worker start-up is not throughput
                    t, n = time.perf_counter(), 0
                    for batch in it:
                        n += batch["window"].shape[0]
                    rates.append(n / (time.perf_counter() - t))
            row = {"compression": layout.compression, "chunk_trs": layout.chunk_trs, "workers": workers,
                   "windows_per_epoch": len(ds), "windows_per_s_by_epoch": [round(r) for r in rates],
                   "windows_per_s_median": round(float(np.median(rates))), "peak_rss_mb": round(mem.peak, 1)}
            window_runs.append(row)
            print("windows", row)
            del dl

    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "platform": platform.platform()},
        "recording_shape": [T, P], "source_tr_s": TR, "target_tr_s": 0.72,
        "prepare": prepare_runs, "windows": window_runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"results: {args.out}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
