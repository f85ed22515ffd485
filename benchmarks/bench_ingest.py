"""Ingestion benchmark: `brainlm prepare` on an fMRIPrep-style folder of full-size 4-D NIfTI.

Writes ``--scans`` scans per data type of the size fMRIPrep writes in MNI152NLin6Asym at 2 mm
(91 x 109 x 91 voxels x 490 volumes, gzip-compressed NIfTI, int16 and float32) with JSON
sidecars, brain masks and confounds tables, and a 94-parcel labels atlas on nilearn's 2 mm MNI
grid (99 x 117 x 95, so it is resampled to the data grid once per worker). Then it times
``prepare_corpus`` (parcellation with NiftiLabelsMasker, ``simple`` confound regression, the
default contract) and samples the resident memory of the whole process tree (main process and
worker processes) every 50 ms.

    python benchmarks/bench_ingest.py --scans 4 --jobs 2
    # or generate once, then time in a fresh process (memory not inflated by the generator):
    python benchmarks/bench_ingest.py --scans 4 --work /tmp/ingest --generate-only
    python benchmarks/bench_ingest.py --scans 4 --work /tmp/ingest --jobs 2

Results: benchmarks/results/ingest.json (and a Markdown table on stdout).
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
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainlm.data.atlas import load_atlas
from brainlm.data.atomic import write_text_atomic
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.samples import load_hcp7_aal2

SHAPE, T, TR = (91, 109, 91), 490, 0.72
AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])  # FSL MNI 2 mm
SPACE = "MNI152NLin6Asym"


def process_tree(root: int) -> tuple[float, float]:
    """Resident set size (MB) and CPU time used so far (user + system, s) of ``root`` and all
    its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    cpu: dict[int, int] = {}
    page, tick = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                after_name = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(after_name[1]), []).append(pid)
        rss[pid] = int(after_name[21]) * page
        cpu[pid] = int(after_name[11]) + int(after_name[12])
    total, ticks, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        ticks += cpu.get(pid, 0)
        todo += children.get(pid, [])
    return total / 1e6, ticks / tick


def process_tree_rss_mb(root: int) -> float:
    return process_tree(root)[0]


class TreePeak:
    """Peak of :func:`process_tree_rss_mb` while the block runs (50 ms sampling)."""

    def __enter__(self):
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, process_tree_rss_mb(os.getpid()))
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def make_atlas(root: Path) -> tuple[Path, Path, np.ndarray]:
    """AAL2 cells on nilearn's 2 mm MNI brain mask (nearest AAL2 centre); the labels on the data grid."""
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    aal2 = load_atlas("aal2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        brain = load_mni152_brain_mask(resolution=2)
    ijk = np.argwhere(np.asarray(brain.dataobj) > 0)
    world = nib.affines.apply_affine(brain.affine, ijk)
    labels = np.concatenate([((world[s:s + 20000, None] - aal2.xyz[None]) ** 2).sum(-1).argmin(1) + 1
                             for s in range(0, len(ijk), 20000)])
    vol = np.zeros(brain.shape, np.int16)
    vol[tuple(ijk.T)] = labels
    image = nib.Nifti1Image(vol, brain.affine)
    nib.save(image, root / "atlas-AAL2cells_res-2_dseg.nii.gz")
    pd.DataFrame({"index": np.arange(1, 95), "name": aal2.parcel_names}).to_csv(
        root / "atlas-AAL2cells_res-2_dseg.tsv", sep="\t", index=False)
    on_grid = np.asarray(resample_img(image, target_affine=AFFINE, target_shape=SHAPE,
                                      interpolation="nearest", force_resample=True,
                                      copy_header=True).dataobj)
    return root / "atlas-AAL2cells_res-2_dseg.nii.gz", root / "atlas-AAL2cells_res-2_dseg.tsv", on_grid


def confounds(n: int, rng) -> pd.DataFrame:
    """fMRIPrep columns used by the ``simple`` strategy (plus FD), random-walk motion."""
    cols = {}
    motion = np.cumsum(rng.normal(0, 1, (n, 6)), 0) * [0.02, 0.02, 0.03, 3e-4, 3e-4, 3e-4]
    series = list(zip(["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"], motion.T))
    series += [("csf", 700 + np.cumsum(rng.normal(0, 2, n))), ("white_matter", 500 + np.cumsum(rng.normal(0, 1, n)))]
    for name, x in series:
        d = np.r_[np.nan, np.diff(x)]
        cols.update({name: x, f"{name}_derivative1": d, f"{name}_power2": x ** 2,
                     f"{name}_derivative1_power2": d ** 2})
    cols["framewise_displacement"] = np.r_[np.nan, np.abs(np.diff(motion[:, :3], axis=0)).sum(1)
                                           + 50 * np.abs(np.diff(motion[:, 3:], axis=0)).sum(1)]
    k = np.arange(n)
    for j in range(1, int(2 * n * TR / 128) + 1):
        cols[f"cosine{j - 1:02d}"] = np.sqrt(2 / n) * np.cos(np.pi * (2 * k + 1) * j / (2 * n))
    return pd.DataFrame(cols)


def make_scans(root: Path, dtype: str, n: int, labels_on_grid: np.ndarray) -> Path:
    """``n`` fMRIPrep-named scans: HCP parcel series painted into the atlas cells + noise."""
    hcp = load_hcp7_aal2()
    inside = labels_on_grid > 0
    lab = labels_on_grid[inside] - 1
    deriv = root / f"fmriprep-{dtype}"
    for i in range(n):
        func = deriv / f"sub-{i:02d}" / "func"
        func.mkdir(parents=True)
        stem = f"sub-{i:02d}_task-rest"
        rng = np.random.default_rng(i)
        series = hcp[i % len(hcp)].timeseries[(i // len(hcp)) * 100:][:T]
        data = np.zeros(SHAPE + (T,), dtype=dtype)
        for s in range(0, lab.size, 50000):   # in slabs: bounded memory while generating
            block = series[:, lab[s:s + 50000]].T + rng.normal(0, 50, (min(50000, lab.size - s), T))
            idx = tuple(a[s:s + 50000] for a in np.nonzero(inside))
            data[idx] = np.round(block) if dtype == "int16" else block
        img = nib.Nifti1Image(data, AFFINE)
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = TR
        nib.save(img, func / f"{stem}_space-{SPACE}_res-2_desc-preproc_bold.nii.gz")
        del data, img
        nib.save(nib.Nifti1Image(inside.astype(np.uint8), AFFINE),
                 func / f"{stem}_space-{SPACE}_res-2_desc-brain_mask.nii.gz")
        (func / f"{stem}_space-{SPACE}_res-2_desc-preproc_bold.json").write_text(
            json.dumps({"RepetitionTime": TR, "TaskName": "rest"}))
        confounds(T, rng).to_csv(func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t",
                                 index=False, na_rep="n/a")
        (func / f"{stem}_desc-confounds_timeseries.json").write_text("{}")
    return deriv


def run(deriv: Path, atlas: Path, labels: Path, out: Path, jobs: int, read_volumes: int) -> dict:
    load_before = os.getloadavg()[0]
    baseline, cpu0 = process_tree(os.getpid())
    t0 = time.perf_counter()
    with TreePeak() as peak:
        corpus = prepare_corpus([deriv], out,
                                PrepareSettings.of(atlas_image=atlas, atlas_labels=labels, min_trs=100, jobs=jobs,
                                                   read_volumes=read_volumes, fractions=(0.5, 0.25, 0.25)))
    wall = time.perf_counter() - t0
    cpu = process_tree(os.getpid())[1] - cpu0   # loky workers outlive the call: all counted
    n = len(corpus.manifest)
    shutil.rmtree(out)
    return {"scans": n, "jobs": jobs, "read_volumes": read_volumes, "wall_s": round(wall, 2),
            "scans_per_s": round(n / wall, 4),
            "cpu_s_per_scan": round(cpu / n, 2),
            "peak_rss_mb": round(peak.peak), "rss_before_mb": round(baseline),
            "load_avg_1min_before": round(load_before, 2),
            "load_avg_1min_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=4, help="scans per data type")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", help="folder for the generated scans, kept and reused (default: a "
                    "temporary folder, removed)")
    ap.add_argument("--generate-only", action="store_true",
                    help="write the scans into --work and stop (then time them in a fresh process)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest.json"))
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_ingest_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    atlas, labels, on_grid = make_atlas(work)
    trees, sizes = {}, {}
    for dtype in ("int16", "float32"):
        trees[dtype] = work / f"fmriprep-{dtype}"
        if len(list(trees[dtype].rglob("*_desc-preproc_bold.nii.gz"))) != args.scans:
            shutil.rmtree(trees[dtype], ignore_errors=True)
            trees[dtype] = make_scans(work, dtype, args.scans, on_grid)
        files = list(trees[dtype].rglob("*_desc-preproc_bold.nii.gz"))
        sizes[dtype] = round(float(np.mean([f.stat().st_size for f in files])) / 1e6, 1)
    generate_s = time.perf_counter() - t0
    if args.generate_only:
        print(f"{args.scans} scans per dtype in {work} ({generate_s:.0f} s)")
        return

    runs = []
    plan = [("int16", args.jobs, 32), ("float32", args.jobs, 32), ("int16", 1, 32),
            ("int16", args.jobs, T)]
    for dtype, jobs, read_volumes in plan:
        r = run(trees[dtype], atlas, labels, work / "corpus", jobs, read_volumes)
        r.update(dtype=dtype, file_mb=sizes[dtype])
        runs.append(r)
        print(json.dumps(r))
    import nilearn

    result = {
        "benchmark": "prepare_corpus on fMRIPrep-style 4-D NIfTI (NiftiLabelsMasker + simple confounds)",
        "command": f"python benchmarks/bench_ingest.py --scans {args.scans} --jobs {args.jobs}"
                   + (f" --work {args.work}" if args.work else ""),
        "scan": {"shape": list(SHAPE) + [T], "voxel_mm": 2, "tr_s": TR, "format": ".nii.gz",
                 "in_brain_voxels": int((on_grid > 0).sum())},
        "atlas": {"parcels": 94, "grid": "nilearn MNI 2 mm (99 x 117 x 95), resampled to the data grid"},
        "generate_s": round(generate_s, 1), "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "nibabel": nib.__version__, "nilearn": nilearn.__version__,
                    "note": "shared machine: several other jobs were running (see load averages)"},
    }
    write_text_atomic(args.out, json.dumps(result, indent=2))
    print("\n| scans | dtype (file size) | workers | volumes per read | scans/s | CPU s per scan | peak RSS, all processes (before) |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['scans']} | {r['dtype']} ({r['file_mb']} MB) | {r['jobs']} | {r['read_volumes']} | "
              f"{r['scans_per_s']:.3f} | {r['cpu_s_per_scan']:.1f} | {r['peak_rss_mb']} MB ({r['rss_before_mb']} MB) |")
    if not args.work:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
