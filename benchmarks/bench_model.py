"""Model-stage benchmark: training throughput, FLOPs per window and MFU.

A training step is forward + backward + AdamW step on synthetic windows of 424 parcels x 200
TRs with 75% of the tokens masked at random. For each preset it reports windows/s, tokens/s
(424 x 10 tokens per window), peak memory, model FLOPs per window (counted with
``torch.utils.flop_counter.FlopCounterMode`` over forward + backward) and MFU: achieved FLOP/s
over the FLOP/s of a large matrix multiply measured on the same machine just before. It then
puts the 13m figures next to the original implementation's (the issue's reference) and runs
our 111m next to Hugging Face's ``ViTMAEForPreTraining`` (ViT-B/16 on a 432 x 432 x 3 image,
upstream BrainLM's "image" variant) at the same batch.

    python benchmarks/bench_model.py

CPU runs in fp32. With CUDA available, 111m and 650m are also measured on the GPU in bf16
autocast (a separate section, ``run_cuda``). Each measurement runs in a fresh process, so its
peak RSS is its own. Results: benchmarks/results/model.json (and a table on stdout).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

P, T, MASK_RATIO = 424, 200, 0.75
HF_IMAGE, HF_PATCH = 432, 16

# The reference: the original implementation at the 13m configuration.
REFERENCE_13M = {"gflop_per_window": 500.0, "windows_per_s": 0.2, "batch": 4, "mfu": 0.5}

CPU_BATCH = {"tiny": 16, "13m": 4, "111m": 2}
# (warm-up, timed) steps on CPU; the first warm-up step is the one whose FLOPs are counted. Few
# steps for the big models keep the whole run near 10 minutes on 2 cores.
CPU_WARMUP = {"tiny": 2, "13m": 2, "111m": 1, "vitmae": 2}
CPU_STEPS = {"tiny": 5, "13m": 3, "111m": 2, "vitmae": 3}
CUDA_BATCH = {"111m": 32, "650m": 16}


# -- FLOP counting -------------------------------------------------------------------------------
def _flop_mapping() -> dict:
    """FlopCounterMode knows the CUDA attention kernels but (torch 2.13) not the CPU one, which
    would then count 0 FLOPs; count it with torch's own formulas for the CUDA kernels."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        def fwd(q, k, v, *args, out_shape=None, **kwargs):
            return fc.sdpa_flop_count(q, k, v)

        def bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs):
            return fc.sdpa_backward_flop_count(grad_out, q, k, v)

        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return mapping


def matmul_flops(device: str, dtype: torch.dtype, n: int, seconds: float = 3.0) -> dict:
    """FLOP/s of an n x n torch.matmul with torch's default threads, timed over ``seconds``:
    the median (used for MFU: same conditions as the training steps) and the best call."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    times, start = [], time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "calls": len(times),
            "median_flop_per_s": 2 * n**3 / times[len(times) // 2], "best_flop_per_s": 2 * n**3 / times[0]}


# -- models and inputs ---------------------------------------------------------------------------
def build_brainlm(name: str, batch: int, device: str, parcels: int, steps: int):
    """Our model and ``steps`` distinct input batches (windows, coordinates, random 75% masks).

    ``name`` is a preset, optionally with its decoder attention: ``13m/full``, ``13m/axial``.
    """
    from brainlm.model import BrainLM, MaskSpec, preset

    torch.manual_seed(0)
    name, _, attention = name.partition("/")
    model = BrainLM(preset(name, **({"decoder_attention": attention} if attention else {}))).to(device)
    gen = torch.Generator().manual_seed(0)
    xyz = (torch.rand(parcels, 3, generator=gen) * 140 - 70).expand(batch, -1, -1).to(device)
    spec = MaskSpec("random", MASK_RATIO)
    inputs = [(torch.randn(batch, T, parcels, generator=gen).to(device), xyz,
               model.sample_mask(spec, batch, parcels, gen, device)) for _ in range(steps)]
    n_visible = int((~inputs[0][2][0]).sum())
    n_tok = parcels * model.config.n_patches
    tokens = {"total": n_tok, "encoder": 1 + n_visible, "decoder": 1 + n_tok}
    return model, (lambda i: model(*inputs[i % len(inputs)])[0]), tokens


def build_vitmae(batch: int, device: str, steps: int):
    """Hugging Face ViTMAEForPreTraining, ViT-B/16 encoder and 512 x 8 decoder, random init."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    cfg = ViTMAEConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, decoder_hidden_size=512, decoder_num_hidden_layers=8,
                       decoder_num_attention_heads=16, decoder_intermediate_size=2048,
                       image_size=HF_IMAGE, patch_size=HF_PATCH, num_channels=3, mask_ratio=MASK_RATIO)
    torch.manual_seed(0)
    model = ViTMAEForPreTraining(cfg).to(device)
    gen = torch.Generator().manual_seed(0)
    pixels = [torch.randn(batch, 3, HF_IMAGE, HF_IMAGE, generator=gen).to(device) for _ in range(steps)]
    n_patch = (HF_IMAGE // HF_PATCH) ** 2
    tokens = {"total": n_patch, "encoder": 1 + int(n_patch * (1 - MASK_RATIO)), "decoder": 1 + n_patch}
    return model, (lambda i: model(pixel_values=pixels[i % len(pixels)]).loss), tokens


# -- one measurement (runs in its own process) ---------------------------------------------------
def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def measure(job: dict) -> dict:
    """Warm-up steps (the first one under FlopCounterMode), then timed training steps."""
    from torch.utils.flop_counter import FlopCounterMode

    device, batch, warmup, steps = job["device"], job["batch"], job["warmup"], job["steps"]
    cuda = device == "cuda"
    if cuda:
        matmul = matmul_flops("cuda", torch.bfloat16, 8192)
    else:
        matmul = matmul_flops("cpu", torch.float32, job["matmul_n"])
    peak_rate = matmul["median_flop_per_s"]
    rss_before = rss_mb()
    if job["model"] == "vitmae":
        model, loss_fn, tokens = build_vitmae(batch, device, warmup + steps)
    else:
        model, loss_fn, tokens = build_brainlm(job["model"], batch, device, job["parcels"], warmup + steps)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step(i: int, counter=None) -> None:
        with counter if counter is not None else contextlib.nullcontext():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(i)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False, custom_mapping=_flop_mapping())
    t = time.perf_counter()
    step(0, counter)  # shapes alone fix the FLOPs, so a warm-up step is counted
    sync()
    count_s = time.perf_counter() - t
    flops_per_window = counter.get_total_flops() / batch
    for i in range(1, warmup):
        step(i)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup, warmup + steps):
        t = time.perf_counter()
        step(i)
        sync()
        times.append(time.perf_counter() - t)
    windows_per_s = batch * steps / sum(times)
    achieved = flops_per_window * windows_per_s
    row = {
        "model": job["model"], "device": device, "dtype": "bf16 autocast" if cuda else "fp32",
        "batch": batch, "warmup_steps": warmup, "timed_steps": steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_per_window": tokens,
        "step_seconds": [round(s, 3) for s in times],
        "windows_per_s": windows_per_s,
        "tokens_per_s": windows_per_s * tokens["total"],
        "gflop_per_window": flops_per_window / 1e9,
        "achieved_gflop_per_s": achieved / 1e9,
        "matmul_gflop_per_s": peak_rate / 1e9,
        "matmul": matmul,
        "mfu": achieved / peak_rate,
        "flop_count_step_seconds": round(count_s, 2),
        "torch_threads": torch.get_num_threads(),
    }
    if cuda:
        row["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 1e6
        row["memory_kind"] = "torch.cuda.max_memory_allocated (timed steps)"
    else:
        # ru_maxrss (kB on Linux): the exact peak resident set of this fresh process.
        row["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
        row["rss_before_model_mb"] = rss_before
        row["memory_kind"] = "peak RSS of the process (ru_maxrss)"
    return row


def run_isolated(job: dict) -> dict:
    """``measure`` in a fresh spawned process (own peak RSS, no allocator state carried over)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, job).result()


def show(row: dict) -> None:
    print(f"{row['model']:>7} {row['device']:>4} {row['dtype']:>13} batch {row['batch']:>3}: "
          f"{row['windows_per_s']:8.3f} windows/s {row['tokens_per_s']:10.0f} tokens/s "
          f"{row['gflop_per_window']:8.1f} GFLOP/window {row['achieved_gflop_per_s']:8.1f} GFLOP/s "
          f"MFU {row['mfu']:.2f} (matmul {row['matmul_gflop_per_s']:.0f} GFLOP/s) "
          f"peak {row['peak_memory_mb']:.0f} MB", flush=True)


# -- CPU (fp32) ----------------------------------------------------------------------------------
def run_cpu(args) -> tuple[list[dict], dict]:
    rows = []
    for name in args.presets:
        # tiny's one-block decoder cannot alternate; the others run both decoders.
        for attention in (["full"] if name == "tiny" else args.attention):
            rows.append(run_isolated({"model": f"{name}/{attention}", "device": "cpu",
                                      "batch": args.batch[name], "warmup": args.warmup[name],
                                      "steps": args.steps[name], "parcels": args.parcels,
                                      "matmul_n": args.matmul_n}))
            show(rows[-1])
    comparisons = {}
    for ours13 in (r for r in rows if r["model"].startswith("13m/")):
        ref = REFERENCE_13M
        comparisons[f"{ours13['model']}_vs_original"] = {
            "reference": ref,
            "ours_gflop_per_window": ours13["gflop_per_window"],
            "ours_windows_per_s": ours13["windows_per_s"], "ours_batch": ours13["batch"],
            "ours_mfu": ours13["mfu"],
            "flop_ratio_ours_over_reference": ours13["gflop_per_window"] / ref["gflop_per_window"],
            "speedup_windows_per_s": ours13["windows_per_s"] / ref["windows_per_s"],
            "mfu_ratio_ours_over_reference": ours13["mfu"] / ref["mfu"],
        }
    ours111 = next((r for r in rows if r["model"] == f"111m/{args.attention[-1]}"), None)
    if ours111 is not None and not args.no_hf:
        try:
            import transformers  # noqa: F401  (not a project dependency)
        except ImportError:
            print("transformers is not installed: skipping the ViTMAEForPreTraining comparison. "
                  "Install it with `.venv/bin/pip install transformers`.")
        else:
            hf = run_isolated({"model": "vitmae", "device": "cpu", "batch": ours111["batch"],
                               "warmup": args.warmup["vitmae"], "steps": args.steps["vitmae"],
                               "matmul_n": args.matmul_n})
            hf["transformers"] = transformers.__version__
            hf["config"] = "ViT-B/16 (768 x 12, 12 heads, MLP 3072), decoder 512 x 8, 16 heads, 432 x 432 x 3"
            rows.append(hf)
            show(hf)
            comparisons["111m_vs_hf_vitmae"] = {
                "ours": ours111["model"], "batch": ours111["batch"],
                "windows_per_s_ratio_ours_over_hf": ours111["windows_per_s"] / hf["windows_per_s"],
                "peak_memory_ratio_ours_over_hf": ours111["peak_memory_mb"] / hf["peak_memory_mb"],
                "gflop_per_window_ratio_ours_over_hf": ours111["gflop_per_window"] / hf["gflop_per_window"],
                "tokens_per_window": {"ours": ours111["tokens_per_window"],
                                      "hf": hf["tokens_per_window"]},
            }
    return rows, comparisons


# -- CUDA (bf16 autocast): only where a GPU is present -------------------------------------------
def run_cuda(args) -> list[dict]:
    rows = []
    for name, batch in args.cuda_batch.items():
        for attention in args.attention:
            rows.append(run_isolated({"model": f"{name}/{attention}", "device": "cuda", "batch": batch,
                                      "warmup": 3, "steps": args.cuda_steps, "parcels": args.parcels}))
            show(rows[-1])
    return rows


def parse_batches(text: str) -> dict[str, int]:
    """``"tiny=16,13m=4"`` -> ``{"tiny": 16, "13m": 4}``."""
    return {k: int(v) for k, v in (item.split("=") for item in text.split(",") if item)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=list(CPU_BATCH), choices=list(CPU_BATCH))
    ap.add_argument("--batch", type=parse_batches, default=CPU_BATCH,
                    help="CPU batch per preset, e.g. tiny=16,13m=4,111m=2")
    ap.add_argument("--warmup", type=parse_batches, default=CPU_WARMUP,
                    help="CPU warm-up steps per model (>= 1), e.g. 13m=2,vitmae=1")
    ap.add_argument("--steps", type=parse_batches, default=CPU_STEPS,
                    help="CPU timed steps per model, e.g. 111m=2")
    ap.add_argument("--attention", nargs="+", default=["full", "axial"], choices=["full", "axial"],
                    help="decoder attention(s) to measure for 13m/111m/650m (the last one is compared "
                    "with ViTMAE)")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers ViTMAE comparison")
    ap.add_argument("--matmul-n", type=int, default=2048, help="size of the reference CPU matmul")
    ap.add_argument("--parcels", type=int, default=P, help="parcels per window (424; smaller to smoke-test)")
    ap.add_argument("--cuda-batch", type=parse_batches, default=CUDA_BATCH)
    ap.add_argument("--cuda-steps", type=int, default=10)
    ap.add_argument("--no-cuda", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "model.json"))
    args = ap.parse_args()
    args.batch = {**CPU_BATCH, **args.batch}
    args.warmup = {k: max(v, 1) for k, v in {**CPU_WARMUP, **args.warmup}.items()}
    args.steps = {k: max(v, 1) for k, v in {**CPU_STEPS, **args.steps}.items()}

    load_start, t0 = os.getloadavg(), time.perf_counter()
    print(f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} on "
          f"{os.cpu_count()} CPUs; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    cpu_rows, comparisons = run_cpu(args)
    cuda_rows = run_cuda(args) if torch.cuda.is_available() and not args.no_cuda else []

    print(f"\n{'model':>7} {'device':>6} {'batch':>5} {'windows/s':>10} {'tokens/s':>10} "
          f"{'GFLOP/win':>10} {'GFLOP/s':>8} {'matmul':>7} {'MFU':>5} {'peak MB':>8}")
    for r in cpu_rows + cuda_rows:
        print(f"{r['model']:>7} {r['device']:>6} {r['batch']:>5} {r['windows_per_s']:>10.3f} "
              f"{r['tokens_per_s']:>10.0f} {r['gflop_per_window']:>10.1f} {r['achieved_gflop_per_s']:>8.1f} "
              f"{r['matmul_gflop_per_s']:>7.0f} {r['mfu']:>5.2f} {r['peak_memory_mb']:>8.0f}")
    for key in (k for k in comparisons if k.endswith("_vs_original")):
        c = comparisons[key]
        print(f"\n{key.split('_vs')[0]} vs the original implementation: {c['ours_gflop_per_window']:.0f} GFLOP/window "
              f"({c['flop_ratio_ours_over_reference']:.2f}x of 500), {c['ours_windows_per_s']:.3f} "
              f"windows/s at batch {c['ours_batch']} = {c['speedup_windows_per_s']:.2f}x of 0.2; "
              f"MFU {c['ours_mfu']:.2f} vs about 0.5")
    if "111m_vs_hf_vitmae" in comparisons:
        c = comparisons["111m_vs_hf_vitmae"]
        print(f"{c['ours']} vs HF ViTMAEForPreTraining at batch {c['batch']}: "
              f"{c['windows_per_s_ratio_ours_over_hf']:.2f}x the windows/s, "
              f"{c['peak_memory_ratio_ours_over_hf']:.2f}x the peak memory, "
              f"{c['gflop_per_window_ratio_ours_over_hf']:.2f}x the FLOPs per window")

    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "platform": platform.platform(),
                    "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "window": {"parcels": args.parcels, "trs": T, "tokens": args.parcels * 10,
                   "mask": f"random {MASK_RATIO}"},
        "step": "forward + backward + AdamW step; FLOPs counted over forward + backward",
        "cpu": cpu_rows, "cuda": cuda_rows, "comparisons": comparisons,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"results: {args.out} ({result['total_seconds']} s)")


if __name__ == "__main__":
    main()
