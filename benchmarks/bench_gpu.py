"""GPU readiness in one command: what one CUDA card does with BrainLM in bf16-mixed.

    python benchmarks/bench_gpu.py            # results: benchmarks/results/gpu_<card>.json
    python benchmarks/bench_gpu.py --quick    # a few minutes: fewer steps, smaller batches

Four parts, each written into the JSON as it finishes (a part that fails records its error and
the others still run; the exit status is then 1):

* ``matmul``: the card's dense matmul rate (n x n, default 8192) in bf16 and in fp32 (TF32 as
  torch has it set, recorded), median over repeated calls: the bf16 rate is the MFU ceiling;
* ``throughput``: training windows/s and tokens/s (forward + backward + AdamW step, bf16
  autocast over fp32 master weights) of the ``13m`` and ``111m`` presets with both decoders
  (``full`` and ``axial``) at 424 parcels x 200 TRs, 75% of the tokens masked at random, at the
  largest batch of the requested one halved until it fits; model FLOPs per window
  (``FlopCounterMode`` over forward + backward, as in bench_model.py) and MFU against the
  measured bf16 rate;
* ``memory``: peak ``torch.cuda.max_memory_allocated`` of one training step (weights, gradients,
  AdamW state and activations) of ``111m`` and ``650m`` at batch 1, 2, 4, ... until the card runs
  out of memory, and the largest batch that fits, without and with activation checkpointing of
  every transformer block (what ``--strategy fsdp`` applies);
* ``pretrain``: ``brainlm pretrain`` of the ``small`` preset (the demo's recipe) on the demo's
  HCP corpus (7 subjects, AAL2) with ``precision="bf16-mixed"`` on the GPU: seconds per epoch
  (training + validation, from the run's TensorBoard event times) and the final validation R².

Off a CUDA machine it exits with status 2 and one line saying why. The training-step code (model,
inputs, FLOP counting, the matmul rate) is bench_model.py's.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_model import MASK_RATIO, P, T, build_brainlm, matmul_flops, measure  # noqa: E402

PARTS = ("matmul", "throughput", "memory", "pretrain")
THROUGHPUT_PRESETS = ("13m", "111m")
MEMORY_PRESETS = ("111m", "650m")
DECODERS = ("full", "axial")
#: Where the parts run (a CPU dry run of the code sets "cpu", "32-true" and "cpu").
DEVICE = "cuda"
PRETRAIN_PRECISION, PRETRAIN_ACCELERATOR = "bf16-mixed", "gpu"


def settings(quick: bool) -> dict:
    """Sizes and repeats of every part; ``quick`` is a smoke test of a few minutes."""
    if quick:
        return {"matmul_n": 8192, "matmul_seconds": 1.0, "batch": {"13m": 8, "111m": 4},
                "warmup": 2, "steps": 3, "max_batch": 8, "epochs": 3}
    return {"matmul_n": 8192, "matmul_seconds": 3.0, "batch": {"13m": 64, "111m": 32},
            "warmup": 3, "steps": 10, "max_batch": 1024, "epochs": 50}


# -- can it run here? ----------------------------------------------------------------------------
def cuda_unavailable_reason() -> str | None:
    """None when a CUDA device is visible; else one line saying what torch reports."""
    with warnings.catch_warnings(record=True) as caught:  # e.g. "Found no NVIDIA driver"
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
        count = torch.cuda.device_count() if available else 0
    if available and count > 0:
        return None
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    parts = [f"torch {torch.__version__} ({build})", f"torch.cuda.is_available() {available}",
             f"{count} device(s)"]
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        parts.append(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}")
    if caught:
        parts.append(str(caught[0].message).splitlines()[0].strip())
    return "bench_gpu: cannot run: no CUDA device visible; " + ", ".join(parts)


def card_slug(name: str) -> str:
    """A device name as a file-name part: ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia_h100_80gb_hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "cuda"


def default_out(device_name: str) -> Path:
    """benchmarks/results/gpu_<card>.json."""
    return HERE / "results" / f"gpu_{card_slug(device_name)}.json"


def environment() -> dict:
    """The card, torch/CUDA/cuDNN versions, the date and the code version of this run."""
    props = torch.cuda.get_device_properties(0)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"card": torch.cuda.get_device_name(0), "memory_gib": props.total_memory / 2**30,
            "compute_capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
            "devices_visible": torch.cuda.device_count(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "python": platform.python_version(),
            "cpus": os.cpu_count(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": commit}


# -- batch searches (pure: the step is a callable, so they are tested on CPU) --------------------
def release_cuda_memory() -> None:
    """Free what an out-of-memory step left behind (its tensors, the allocator's cache)."""
    gc.collect()
    torch.cuda.empty_cache()


def largest_fitting_batch(step: Callable[[int], float], *, start: int = 1, max_batch: int = 1024,
                          release: Callable[[], None] = release_cuda_memory) -> dict:
    """Run ``step(batch)`` at batch ``start``, then doubled, until it raises
    ``torch.cuda.OutOfMemoryError`` or the batch would pass ``max_batch``.

    ``step`` returns the peak memory of one step in MiB. Returns ``largest_batch`` (0 when not
    even ``start`` fits), ``peak_mib`` per batch that fitted, ``oom_batch`` (the first that did
    not, or None) and ``stopped`` (``"out of memory"`` or ``"max_batch"``).
    """
    peaks: dict[str, float] = {}
    batch, oom_batch = start, None
    while batch <= max_batch:
        try:
            peaks[str(batch)] = float(step(batch))
        except torch.cuda.OutOfMemoryError:
            oom_batch = batch
            break
        batch *= 2
    if oom_batch is not None:
        release()  # outside the handler: the failed step's frames are gone by now
    largest = max((int(b) for b in peaks), default=0)
    return {"largest_batch": largest, "peak_mib": peaks, "oom_batch": oom_batch,
            "stopped": "out of memory" if oom_batch is not None else "max_batch"}


def run_at_fitting_batch(run: Callable[[int], dict], batch: int, *,
                         release: Callable[[], None] = release_cuda_memory) -> dict:
    """``run(batch)``, halving the batch after each ``torch.cuda.OutOfMemoryError`` down to 1;
    the result gains ``out_of_memory_at`` (the batches that did not fit). Raises the last
    OutOfMemoryError when not even batch 1 fits."""
    failed: list[int] = []
    while True:
        try:
            result = run(batch)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            failed.append(batch)
        else:
            return {**result, "out_of_memory_at": failed}
        release()
        batch //= 2


# -- activation checkpointing ---------------------------------------------------------------------
def checkpoint_blocks(model: torch.nn.Module) -> int:
    """Activation checkpointing of every transformer block (``brainlm.model.layers.Block``), in
    place: a block keeps only its input for backward and recomputes the rest, as the ``fsdp``
    strategy's ``activation_checkpointing_policy={Block}`` does. Returns the number of blocks."""
    from torch.utils.checkpoint import checkpoint

    from brainlm.model.layers import Block

    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return len(blocks)


# -- the parts ------------------------------------------------------------------------------------
def part_matmul(s: dict) -> dict:
    """bf16 and fp32 n x n matmul rates on the card (bench_model.matmul_flops, synchronised)."""
    rates = {dtype: matmul_flops(DEVICE, getattr(torch, dtype), s["matmul_n"], s["matmul_seconds"])
             for dtype in ("bfloat16", "float32")}
    return {"n": s["matmul_n"], "bf16_tflop_per_s": rates["bfloat16"]["median_flop_per_s"] / 1e12,
            "fp32_tflop_per_s": rates["float32"]["median_flop_per_s"] / 1e12,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "calls": rates,
            "mfu_ceiling": "bf16_tflop_per_s (median call)"}


def part_throughput(s: dict, ceiling_flop_per_s: float | None) -> dict:
    """Training throughput of 13m and 111m with each decoder (bench_model.measure on the GPU:
    bf16 autocast, fp32 weights, AdamW), at the largest fitting batch of the requested one."""
    rows = []
    for name in THROUGHPUT_PRESETS:
        for decoder in DECODERS:
            job = {"model": f"{name}/{decoder}", "device": DEVICE, "warmup": s["warmup"],
                   "steps": s["steps"], "parcels": P}
            row = run_at_fitting_batch(lambda b: measure({**job, "batch": b}), s["batch"][name])
            if ceiling_flop_per_s:
                row["mfu_vs_ceiling"] = row["achieved_gflop_per_s"] * 1e9 / ceiling_flop_per_s
            rows.append(row)
            print(f"  {row['model']:>10} batch {row['batch']:>3}: {row['windows_per_s']:8.1f} windows/s "
                  f"{row['tokens_per_s']:10.0f} tokens/s {row['gflop_per_window']:7.1f} GFLOP/window "
                  f"MFU {row.get('mfu_vs_ceiling', row['mfu']):.2f} peak {row['peak_memory_mb']:.0f} MB",
                  flush=True)
            release_cuda_memory()
    return {"window": {"parcels": P, "trs": T, "mask": f"random {MASK_RATIO}"},
            "step": "forward + backward + AdamW step, bf16 autocast, fp32 master weights",
            "mfu": "achieved FLOP/s over the part 'matmul' bf16 rate (mfu_vs_ceiling); 'mfu' is "
                   "against the bf16 matmul timed in the same measurement", "rows": rows}


def memory_step(name: str, checkpointing: bool) -> tuple[Callable[[int], float], dict]:
    """A function ``batch -> peak MiB`` of one training step of preset ``name`` on the GPU (one
    model and optimizer for every batch), and a description of the model."""
    from brainlm.model import MaskSpec

    model, _, _ = build_brainlm(name, 1, DEVICE, P, 1)
    blocks = checkpoint_blocks(model) if checkpointing else 0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    mask_spec, gen = MaskSpec("random", MASK_RATIO), torch.Generator().manual_seed(0)

    def step(batch: int) -> float:
        x = torch.randn(batch, T, P, generator=gen).to(DEVICE)
        xyz = (torch.rand(P, 3, generator=gen) * 140 - 70).expand(batch, -1, -1).to(DEVICE)
        mask = model.sample_mask(mask_spec, batch, P, gen, DEVICE)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = model(x, xyz, mask)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20

    info = {"parameters": sum(p.numel() for p in model.parameters()), "checkpointed_blocks": blocks}
    return step, info


def part_memory(s: dict) -> dict:
    """Peak memory of one step at batch 1, 2, 4, ... until out of memory, for 111m and 650m,
    without and with activation checkpointing."""
    rows = []
    for name in MEMORY_PRESETS:
        for checkpointing in (False, True):
            step, info = memory_step(name, checkpointing)
            found = largest_fitting_batch(step, max_batch=s["max_batch"])
            del step
            release_cuda_memory()
            rows.append({"model": name, "decoder": "axial", "activation_checkpointing": checkpointing,
                         **info, **found})
            print(f"  {name:>5} checkpointing {str(checkpointing):>5}: largest batch "
                  f"{found['largest_batch']} ({found['stopped']}), peak MiB {found['peak_mib']}", flush=True)
    return {"step": "one forward + backward + AdamW step, bf16 autocast, fp32 master weights; "
                    "peak torch.cuda.max_memory_allocated (weights, gradients, AdamW state, "
                    "activations)", "max_batch": s["max_batch"], "rows": rows}


def hcp_corpus(work: Path):
    """The demo's HCP corpus (7 subjects, AAL2, TR 0.72 s, cleaned with the demo's contract)."""
    from brainlm.demo import DemoSettings
    from brainlm.data.atlas import load_atlas
    from brainlm.data.prepare import PrepareSettings, prepare_corpus
    from brainlm.data.samples import load_hcp7_aal2

    return prepare_corpus(load_hcp7_aal2(), work / "corpus-hcp7-aal2",
                          PrepareSettings.of(atlas=load_atlas("aal2"), contract=DemoSettings().contract(),
                                             min_trs=T, jobs=2, overwrite=True))


def epoch_seconds(run: Path) -> list[float]:
    """Wall-clock seconds of each epoch (training + validation) of a pretraining run, from the
    times of its TensorBoard events: epoch k ends when its validation metric is logged; the
    first starts at the run's first event (training start, after set-up)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    versions = sorted((run / "logs" / "tensorboard").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    events = EventAccumulator(str(versions[-1]), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    start = min(events.Scalars(tag)[0].wall_time for tag in tags)
    ends = [e.wall_time for e in events.Scalars("val/masked_mse")]
    return [b - a for a, b in zip([start, *ends[:-1]], ends)]


def part_pretrain(s: dict, work: Path) -> dict:
    """Pretrain ``small`` with the demo's recipe on the demo corpus (bf16-mixed, one GPU):
    seconds per epoch (median after the first, which includes warm-up) and the final
    validation metrics."""
    import statistics

    from dataclasses import replace

    from brainlm.demo import DemoSettings
    from brainlm.train.pretrain import pretrain

    corpus = hcp_corpus(work)
    demo = DemoSettings()
    run = work / "run-small"
    settings_run = replace(demo, epochs=max(2, s["epochs"])).pretrain_settings(
        str(corpus.path), precision=PRETRAIN_PRECISION, accelerator=PRETRAIN_ACCELERATOR, devices=1)
    t = time.perf_counter()
    final = pretrain(settings_run, run, progress=False)
    seconds = time.perf_counter() - t
    epochs = epoch_seconds(run)
    per_epoch = statistics.median(epochs[1:])
    print(f"  {demo.preset}, {len(epochs)} epochs: {per_epoch:.2f} s per epoch (first {epochs[0]:.1f} s), "
          f"final validation R² {final.get('val/r2', float('nan')):.3f}", flush=True)
    return {"preset": demo.preset, "corpus": "HCP 7 subjects, AAL2 (the demo's)",
            "settings": {k: v for k, v in settings_run.__dict__.items() if k != "corpus"},
            "seconds_per_epoch": per_epoch, "epoch_seconds": epochs,
            "epoch_seconds_note": "training + validation, from TensorBoard event times; the median "
                                  "leaves out the first epoch (warm-up)",
            "run_seconds": seconds, "final_val_r2": final.get("val/r2"),
            "final_val_masked_mse": final.get("val/masked_mse"), "final_metrics": final}


# -- driver ---------------------------------------------------------------------------------------
def run_part(name: str, fn: Callable[[], dict], result: dict, out: Path) -> bool:
    """Run one part, store its result (or its error) and write the JSON; True when it worked."""
    from brainlm.data.atomic import write_json

    print(f"{name} ...", flush=True)
    t = time.perf_counter()
    try:
        result[name] = fn()
        ok = True
    except Exception as e:  # noqa: BLE001 - a failed part is recorded; the other parts still run
        traceback.print_exc()
        result[name] = {"error": f"{type(e).__name__}: {e}"}
        ok = False
    result[name]["part_seconds"] = round(time.perf_counter() - t, 1)
    write_json(out, result)
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default: benchmarks/results/gpu_<card>.json)")
    ap.add_argument("--quick", action="store_true", help="a smoke test of a few minutes")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all)")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder for the pretraining corpus and runs (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        ap.error(f"--parts {unknown}: expected some of {list(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the requested parts; 0 when all worked, 1 when one failed, 2 without a CUDA device."""
    args = parse_args(argv)
    reason = cuda_unavailable_reason()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    s = settings(args.quick)
    out = args.out or default_out(torch.cuda.get_device_name(0))
    work = args.work or Path(tempfile.mkdtemp(prefix="brainlm-bench-gpu-"))
    result = {"environment": environment(), "quick": args.quick, "settings": s, "parts": args.parts}
    print(f"{result['environment']['card']}: torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"results: {out}", flush=True)
    ok = True
    try:
        if "matmul" in args.parts:
            ok &= run_part("matmul", lambda: part_matmul(s), result, out)
        ceiling = result.get("matmul", {}).get("bf16_tflop_per_s")
        if "throughput" in args.parts:
            ok &= run_part("throughput", lambda: part_throughput(s, ceiling and ceiling * 1e12), result, out)
        if "memory" in args.parts:
            ok &= run_part("memory", lambda: part_memory(s), result, out)
        if "pretrain" in args.parts:
            ok &= run_part("pretrain", lambda: part_pretrain(s, work), result, out)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"results: {out}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
