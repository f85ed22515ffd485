"""Precision benchmark: fp32 against bf16-mixed on this CPU (speed and held-out quality).

Three parts, each written into ``benchmarks/results/precision.json`` as it finishes (a later
part keeps the earlier parts' numbers):

* ``matmul``: the dense matrix-multiply rate in fp32 and in bf16 (n x n, torch's default
  threads), the ceiling that MFU is stated against in each precision;
* ``throughput``: training windows/s (forward + backward + AdamW step) of the ``small``, ``13m``
  and ``111m`` presets at 424 parcels x 200 TRs, mask 0.75, and of ``small`` at the demo's shape
  (94 AAL2 parcels, batch 16), in fp32 and under CPU bf16 autocast (what
  ``--precision bf16-mixed`` runs), each shape in a fresh process where fp32 and bf16 steps
  alternate, so that a change in machine load hits both; ``--repeats`` rounds. MFU is given
  against the matmul rate of each precision;
* ``compile``: 13m eager and under ``torch.compile`` (first step includes compiling);
* ``quality``: the quality benchmark's fold 0 (bench_quality.py: 5 training subjects, R² on the
  held-out one at mask ratios 0.2/0.5/0.75/0.9, the same masks for the spatial baseline), the
  ``small-50`` recipe trained in fp32 and in bf16-mixed from the same seed, both at once on one
  thread each.

    python benchmarks/bench_precision.py --parts matmul,throughput,compile   # about 12 minutes
    python benchmarks/bench_precision.py --parts quality     # two 50-epoch pretrainings: ~40 min
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_model import _flop_mapping, build_brainlm, matmul_flops  # noqa: E402

OUT = HERE / "results" / "precision.json"
#: (preset, parcels, batch, warm-up steps, timed steps) per throughput shape.
SHAPES = {"small@94": ("small", 94, 16, 2, 8), "small": ("small", 424, 8, 2, 4),
          "13m": ("13m", 424, 4, 2, 3), "111m": ("111m", 424, 2, 1, 2)}
PRECISIONS = ("32-true", "bf16-mixed")


def machine() -> dict:
    from brainlm.model.precision import cpu_bf16_features

    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return {"cpu": caps.get("cpu_name") or platform.processor(), "cores": os.cpu_count(),
            "native_bf16": list(cpu_bf16_features()), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


# -- one training-throughput measurement (in its own process) -------------------------------------
def measure(job: dict) -> list[dict]:
    """fp32 and bf16 training steps of one shape in one process, alternating step by step (so a
    change in the machine's load hits both alike): warm-up steps of each (the first fp32 one under
    FlopCounterMode), then ``steps`` timed steps of each. One row per precision."""
    from torch.utils.flop_counter import FlopCounterMode

    preset, parcels, batch, warmup, steps = SHAPES[job["shape"]]
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    model, loss_fn, tokens = build_brainlm(preset, batch, "cpu", parcels, warmup + steps)
    model.train()
    if job.get("compile"):
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step(i: int, precision: str, counter=None) -> float:
        t = time.perf_counter()
        with counter if counter is not None else contextlib.nullcontext():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                loss = loss_fn(i)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    counter = None if job.get("compile") else FlopCounterMode(display=False, custom_mapping=_flop_mapping())
    first = {p: step(0, p, counter if p == "32-true" else None) for p in PRECISIONS}
    for i in range(1, warmup):
        for p in PRECISIONS:
            step(i, p)
    times = {p: [] for p in PRECISIONS}
    for i in range(warmup, warmup + steps):
        for p in (PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]):
            times[p].append(step(i, p))
    flops = counter.get_total_flops() / batch / 1e9 if counter is not None else None
    return [{"shape": job["shape"], "preset": preset, "parcels": parcels, "batch": batch, "precision": p,
             "compile": bool(job.get("compile")), "threads": torch.get_num_threads(), "gflop_per_window": flops,
             "first_step_seconds": round(first[p], 2), "step_seconds": [round(s, 3) for s in times[p]],
             "windows_per_s": batch * len(times[p]) / sum(times[p]), "tokens_per_window": tokens["total"]}
            for p in PRECISIONS]


def isolated(job: dict) -> list[dict]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, job).result()


def run_matmul(n: int) -> dict:
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        m = matmul_flops("cpu", dtype, n)
        out[m["dtype"]] = m
        print(f"matmul {n} {m['dtype']}: {m['median_flop_per_s'] / 1e9:.0f} GFLOP/s median, "
              f"{m['best_flop_per_s'] / 1e9:.0f} best", flush=True)
    return out


def run_throughput(shapes: list[str], repeats: int, compile_13m: bool, threads: int | None) -> dict:
    rows = []
    jobs = [{"shape": shape, "threads": threads} for shape in shapes]
    if compile_13m:
        jobs.append({"shape": "13m", "threads": threads, "compile": True})
    for r in range(repeats):
        for job in jobs:
            pair = isolated(job)
            rows += [row | {"round": r} for row in pair]
            print(f"{job['shape']:>9}{' compiled' if job.get('compile') else ''}: " + ", ".join(
                f"{row['precision']} {row['windows_per_s']:.3f} windows/s" for row in pair), flush=True)
    return {"rows": rows}


def summarise(rows: list[dict], matmul: dict | None) -> dict:
    """Per shape (and compile): median windows/s of each precision, the bf16 speed-up, and MFU
    against the matmul rate of the same precision."""
    import statistics

    out = {}
    for key in sorted({(r["shape"], r["compile"]) for r in rows}):
        name = key[0] + (" compiled" if key[1] else "")
        entry = {}
        for precision in PRECISIONS:
            sel = [r for r in rows if (r["shape"], r["compile"]) == key and r["precision"] == precision]
            if not sel:
                continue
            wps = statistics.median(r["windows_per_s"] for r in sel)
            flops = next((r["gflop_per_window"] for r in rows if r["shape"] == key[0] and r["gflop_per_window"]), None)
            e = {"windows_per_s": wps, "runs": [round(r["windows_per_s"], 4) for r in sel]}
            if flops and matmul:
                dtype = "float32" if precision == "32-true" else "bfloat16"
                e["gflop_per_window"] = flops
                e["mfu_vs_same_precision_matmul"] = flops * wps * 1e9 / matmul[dtype]["median_flop_per_s"]
                e["mfu_vs_fp32_matmul"] = flops * wps * 1e9 / matmul["float32"]["median_flop_per_s"]
            entry[precision] = e
        if len(entry) == 2:
            entry["bf16_speedup"] = entry["bf16-mixed"]["windows_per_s"] / entry["32-true"]["windows_per_s"]
        out[name] = entry
    return out


# -- held-out quality at equal epochs ---------------------------------------------------------------
def quality_run(precision: str, recipe: str, fold: int, work: Path) -> dict:
    """One pretraining of ``recipe`` on ``fold`` in ``precision`` (one thread), scored as the
    quality benchmark scores it."""
    import bench_quality as bq
    from brainlm.train.pretrain import PretrainSettings, pretrain

    torch.set_num_threads(1)
    spec = dict(bq.RECIPES[recipe])
    corpus = bq.fold_corpus(work, fold, spec.pop("corpus_scaling", "pooled"))
    run = work / "runs" / f"{bq._slug(recipe)}--fold{fold}--{precision}"
    settings = PretrainSettings(corpus=corpus.path, seed=fold, precision=precision, accelerator="cpu", **spec)
    t0 = time.perf_counter()
    if not (run / "model").is_dir():
        import shutil
        shutil.rmtree(run, ignore_errors=True)
        pretrain(settings, run, progress=False)
    seconds = time.perf_counter() - t0
    metrics = json.loads((run / "metrics.json").read_text())
    scores = bq.score_model(run / "model", corpus, fold)
    return {"precision": precision, "recipe": recipe, "fold": fold, "pretrain_seconds": round(seconds, 1),
            "trained_in": metrics["precision"], "val": metrics["metrics_last_epoch"],
            "test_subjects": bq.test_subjects(corpus), **scores}


def run_quality(recipe: str, fold: int, work: Path) -> dict:
    # The fold's corpus is prepared once before the two runs start (both would write it).
    import bench_quality as bq
    bq.fold_corpus(work, fold)
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        futures = {p: pool.submit(quality_run, p, recipe, fold, work) for p in PRECISIONS}
        runs = {p: f.result() for p, f in futures.items()}
    ratios = list(runs["32-true"]["reconstruction_r2"])
    table = {r: {"fp32": runs["32-true"]["reconstruction_r2"][r]["brainlm"],
                 "bf16": runs["bf16-mixed"]["reconstruction_r2"][r]["brainlm"],
                 "spatial": runs["32-true"]["reconstruction_r2"][r]["spatial"]} for r in ratios}
    for r, row in table.items():
        print(f"mask {r}: R² fp32 {row['fp32']:.4f}  bf16 {row['bf16']:.4f}  spatial {row['spatial']:.4f}")
    return {"recipe": recipe, "fold": fold, "runs": runs, "r2": table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="matmul,throughput,compile,quality")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--repeats", type=int, default=2, help="alternating fp32/bf16 rounds per shape")
    ap.add_argument("--threads", type=int, help="torch threads per measurement (default: torch's)")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--recipe", default="small-50")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--work", default=str(HERE / "out" / "precision"))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    result["machine"] = machine()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f}; {result['machine']}", flush=True)

    def save(key: str, value) -> None:
        result[key] = value | {"load_average_at_start": round(load[0], 2), "date": time.strftime("%Y-%m-%d %H:%M")}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, out)

    if "matmul" in parts:
        save("matmul", run_matmul(args.matmul_n))
    if "throughput" in parts:
        matmul = {k: v for k, v in result.get("matmul", {}).items() if k in ("float32", "bfloat16")} or None
        tp = run_throughput(args.shapes.split(","), args.repeats, False, args.threads)
        save("throughput", tp | {"summary": summarise(tp["rows"], matmul)})
        for name, e in result["throughput"]["summary"].items():
            if "bf16_speedup" in e:
                print(f"{name:>14}: fp32 {e['32-true']['windows_per_s']:.3f}, bf16 "
                      f"{e['bf16-mixed']['windows_per_s']:.3f} windows/s = {e['bf16_speedup']:.2f}x")
    if "compile" in parts:  # 13m eager and torch.compile'd, in one sequence
        tp = run_throughput(["13m"], 1, True, args.threads)
        save("compile", tp | {"summary": summarise(tp["rows"], None)})
    if "quality" in parts:
        save("quality", run_quality(args.recipe, args.fold, Path(args.work)))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
