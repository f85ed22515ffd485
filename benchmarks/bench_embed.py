"""Embeddings over a data bank: `brainlm embed CK CORPUS --out FOLDER` at 500, 1,000 and 2,000
recordings of UK Biobank shape, with 2 local workers, and killed and resumed.

Data: A424 (424 parcels) recordings of 300-490 TRs **tiled and perturbed from the embedded HCP
data** (not real A424 scans): each A424 parcel takes the signal of the nearest AAL2 region (by MNI
centre) of one of the 7 HCP runs, from a random offset, with a random gain and 2% noise per
parcel; half are labelled TR 0.72 s (HCP's), half TR 0.735 s (UK Biobank's), and `prepare`
resamples all to 0.735 s with percent signal change. Built once into benchmarks/out/embed/
(git-ignored); later runs reuse the corpora.

Model: untrained, saved with `save_pretrained` with the corpus' contract and atlas. The scaling
runs use `micro` (the `tiny` preset at dim 16, depth 1, 1 head) so that 2,000 recordings fit in a
few minutes on 2 cores; `tiny` itself and `13m` (the paper's size) are timed on fewer windows
for the UK Biobank arithmetic in docs/scale.md.

Each `brainlm embed` runs as its own process. Peak memory: the resident set of its whole process
tree (joblib workers included), sampled every 50 ms. (Not `ru_maxrss` of the child: on Linux a
child's high-water mark starts from its parent's at fork, so it would report this benchmark
process' own size whenever that is larger.)

    .venv/bin/python benchmarks/bench_embed.py          # about 12 minutes on 2 shared cores (+2 to build)

Results: benchmarks/results/embed.json (and lines on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_data import tree_rss_mb  # noqa: E402 - the one process-tree memory reader

from brainlm.data.atlas import load_atlas  # noqa: E402
from brainlm.data.contract import PreprocessingContract  # noqa: E402
from brainlm.data.corpus import Corpus  # noqa: E402
from brainlm.data.prepare import PrepareSettings, prepare_corpus  # noqa: E402
from brainlm.data.samples import load_hcp7_aal2  # noqa: E402
from brainlm.model import BrainLM  # noqa: E402
from brainlm.checkpoints.folder import save_pretrained  # noqa: E402
from brainlm.model.config import BrainLMConfig, preset  # noqa: E402
from brainlm.tasks.embed import read_embeddings  # noqa: E402
from brainlm.tasks.inference import embed_windows  # noqa: E402
from brainlm.tasks.model_input import parcel_xyz  # noqa: E402

SIZES = (500, 1000, 2000)
T_MIN, T_MAX = 300, 490
TRS = (0.72, 0.735)
SHARD_SIZE = 100
HERE = Path(__file__).parent
SUMMARY = re.compile(r"(\d+) recordings and (\d+) windows embedded in ([\d.]+) s")


def micro_config() -> BrainLMConfig:
    return BrainLMConfig.from_dict({**preset("tiny").to_dict(), "dim": 16, "depth": 1, "heads": 1})


# --- data --------------------------------------------------------------------------------------

def write_sources(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` A424 recordings tiled and perturbed from the HCP runs, as .npy with a JSON sidecar."""
    folder.mkdir(parents=True, exist_ok=True)
    hcp = load_hcp7_aal2()
    a424 = np.asarray(load_atlas("a424").xyz, dtype=float)
    aal2 = np.asarray(hcp[0].atlas.xyz, dtype=float)
    nearest = ((a424[:, None, :] - aal2[None, :, :]) ** 2).sum(-1).argmin(1)   # (424,)
    rng = np.random.default_rng(seed)
    for i in range(n):
        src = hcp[i % len(hcp)].timeseries
        t = int(rng.integers(T_MIN, T_MAX + 1))
        start = int(rng.integers(0, src.shape[0] - t + 1))
        x = src[start:start + t, nearest]
        noise = rng.standard_normal(x.shape).astype(np.float32) * (0.02 * x.std(0))
        x = x * rng.uniform(0.9, 1.1, size=x.shape[1]).astype(np.float32) + noise
        stem = folder / f"sub-{i:05d}_task-rest_bold"
        np.save(stem.with_suffix(".npy"), x.astype(np.float32))
        stem.with_suffix(".json").write_text(json.dumps({"RepetitionTime": TRS[i % 2]}))


def build(work: Path, sizes: tuple[int, ...]) -> dict:
    """The source files and the corpora of every size (reused when already built)."""
    src = work / "sources"
    t0 = time.perf_counter()
    if len(list(src.glob("*.npy"))) < max(sizes):
        shutil.rmtree(src, ignore_errors=True)
        write_sources(src, max(sizes))
    files = sorted(src.glob("*.npy"))[:max(sizes)]
    built = {"sources_s": round(time.perf_counter() - t0, 1), "prepare_s": {}}
    for n in sizes:
        out = work / f"corpus{n}"
        if not (out / "corpus.json").is_file():
            t = time.perf_counter()
            prepare_corpus(files[:n], out,
                           PrepareSettings.of(atlas=load_atlas("a424"), jobs=2, overwrite=True, restart=True,
                                              orientation="time-by-parcel",
                                              contract=PreprocessingContract(target_tr=0.735, percent_signal_change=True)))
            built["prepare_s"][n] = round(time.perf_counter() - t, 1)
        print(f"corpus of {n} recordings: {out}", flush=True)
    return built


def checkpoint(folder: Path, corpus: Corpus, config: BrainLMConfig) -> Path:
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        save_pretrained(BrainLM(config, contract=corpus.contract, atlas=corpus.atlas), folder)
    return folder


# --- one `brainlm embed` process ------------------------------------------------------------------

def run_embed(args: list[str], kill_after: int | None = None, out: Path | None = None) -> dict:
    """Run ``brainlm embed ARGS`` as a process; its wall time, windows/s and peak memory. With
    ``kill_after``, SIGKILL it once ``out`` holds that many shard files."""
    cmd = [sys.executable, "-m", "brainlm.commands", "embed", *map(str, args), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, stop = [0.0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            if kill_after is not None and len(list(out.glob("part-*.parquet"))) >= kill_after:
                proc.send_signal(signal.SIGKILL)
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    result = {"command": "brainlm embed " + " ".join(map(str, args)), "returncode": proc.returncode,
              "wall_s": round(wall, 1), "peak_rss_tree_mb": round(peak[0], 1)}
    match = SUMMARY.search(output)
    if match:
        recordings, windows, seconds = int(match[1]), int(match[2]), float(match[3])
        result.update(recordings=recordings, windows=windows, embed_s=seconds,
                      windows_per_s=round(windows / seconds, 2) if seconds else None,
                      recordings_per_s=round(recordings / seconds, 2) if seconds else None)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"brainlm embed failed ({proc.returncode}):\n{output}")
    print(json.dumps(result), flush=True)
    return result


def shard_stats(folder: Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.glob("part-*.parquet"))}


def forward_rate(config: BrainLMConfig, windows: int, batch: int = 8) -> dict:
    """Windows/s of the encoder forward pass alone (nothing masked, as ``embed`` runs it) on
    random 200 x 424 windows; one warm-up batch first."""
    torch.manual_seed(0)
    model = BrainLM(config)
    xyz = parcel_xyz(load_atlas("a424"))
    x = torch.randn(windows, 200, 424)
    embed_windows(model, x[:2], xyz, batch)
    t = time.perf_counter()
    embed_windows(model, x, xyz, batch)
    seconds = time.perf_counter() - t
    return {"windows": windows, "batch": batch, "seconds": round(seconds, 1),
            "windows_per_s": round(windows / seconds, 3), "parameters": model.count_parameters()}


# --- the benchmark ---------------------------------------------------------------------------------

def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(HERE / "out" / "embed"))
    ap.add_argument("--out", default=str(HERE / "results" / "embed.json"))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help="corpus sizes (recordings); --jobs 2 runs on the second, the resume on the first")
    ap.add_argument("--shard-size", type=int, default=SHARD_SIZE)
    args = ap.parse_args()
    sizes = tuple(int(v) for v in args.sizes.split(","))
    small, middle = sizes[0], sizes[1]
    work = Path(args.work)
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    t_start = time.perf_counter()
    result = {"machine": machine(), "load_average_start": os.getloadavg(),
              "data": "A424 recordings of 300-490 TRs tiled and perturbed from the embedded HCP runs "
                      "(nearest AAL2 region per A424 parcel, random offset, gain 0.9-1.1, 2% noise); "
                      "labelled TR 0.72 / 0.735 s, prepared with percent signal change and resampled to "
                      "0.735 s. Not real A424 scans.",
              "shard_size": args.shard_size}
    result["build"] = build(work, sizes)
    corpora = {n: Corpus(work / f"corpus{n}") for n in sizes}
    micro = checkpoint(work / "micro", corpora[small], micro_config())
    tiny = checkpoint(work / "tiny", corpora[small], preset("tiny"))
    result["model"] = {"micro": {**micro_config().to_dict(), "note": "tiny preset at dim 16, depth 1, 1 head; "
                                 "untrained (speed does not depend on the weights)"}}

    # Scaling: the same command at three corpus sizes.
    scaling = {}
    for n in sizes:
        scaling[n] = run_embed([micro, corpora[n].path, "--out", runs / f"n{n}", "--shard-size", args.shard_size])
        scaling[n]["total_windows"] = int(read_embeddings(runs / f"n{n}")["n_windows"].sum())
    result["scaling_micro"] = scaling

    # Two local workers on the middle corpus, against the one-process run.
    jobs = run_embed([micro, corpora[middle].path, "--out", runs / "jobs2", "--jobs", "2",
                      "--shard-size", args.shard_size])
    jobs["identical_to_one_job"] = bool(read_embeddings(runs / "jobs2").equals(read_embeddings(runs / f"n{middle}")))
    result[f"jobs2_micro_{middle}"] = jobs

    # Killed with SIGKILL once 2 shards are written, then the same command again.
    out = runs / "resume"
    same = [micro, corpora[small].path, "--out", out, "--shard-size", args.shard_size]
    killed = run_embed(same, kill_after=2, out=out)
    kept = shard_stats(out)
    resumed = run_embed(same)
    reference = read_embeddings(runs / f"n{small}")
    got = read_embeddings(out)
    result[f"resume_micro_{small}"] = {
        "killed": killed, "shards_kept": sorted(kept), "resumed": resumed,
        "kept_shards_untouched": all(shard_stats(out)[k] == v for k, v in kept.items()),
        "identical_to_uninterrupted": bool(got.equals(reference)),
        "max_abs_difference": float(np.abs(got.filter(regex="^(cls|mean)_").to_numpy()
                                           - reference.filter(regex="^(cls|mean)_").to_numpy()).max())}

    # The tiny preset through the same command, on 50 recordings (--shard 0/10 of shards of 10).
    result[f"tiny_{small}_shard_0_of_10"] = run_embed([tiny, corpora[small].path, "--out", runs / "tiny",
                                                  "--shard-size", "10", "--shard", "0/10"])
    # The encoder forward pass alone for tiny and the paper's 13m (random weights).
    torch.set_num_threads(os.cpu_count() or 1)
    result["forward_only"] = {"tiny": forward_rate(preset("tiny"), 24), "13m": forward_rate(preset("13m"), 8, 4)}

    result["load_average_end"] = os.getloadavg()
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out} in {result['total_s']} s")


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
