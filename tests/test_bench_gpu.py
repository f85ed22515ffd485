"""benchmarks/bench_gpu.py, GPU readiness in one command: what can be checked on CPU (the exit
without a GPU, the batch searches with fake out-of-memory steps, activation checkpointing, the
epoch timing), and its quick mode where a CUDA device is present."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "bench_gpu.py"
no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def bench():
    """The benchmark script as a module (it imports bench_model.py from its own folder)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(BENCHMARKS))
    return bench_gpu


def _oom(batch: int) -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError(f"CUDA out of memory at batch {batch} (fake)")


# -- off a GPU -----------------------------------------------------------------------------------
def test_without_a_cuda_device_it_exits_2_with_one_line(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device, even on a GPU machine
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("bench_gpu: cannot run: no CUDA device visible; ")
    assert f"torch {torch.__version__}" in lines[0] and "torch.cuda.is_available() False" in lines[0]
    assert "CUDA_VISIBLE_DEVICES=''" in lines[0] and not out.exists()


def test_unknown_parts_are_refused(bench, capsys):
    with pytest.raises(SystemExit) as ended:
        bench.parse_args(["--parts", "matmul,flops"])
    assert ended.value.code == 2 and "--parts ['flops']" in capsys.readouterr().err
    assert bench.parse_args(["--parts", "memory"]).parts == ["memory"]


def test_results_are_named_after_the_card(bench):
    assert bench.card_slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"
    assert bench.card_slug("NVIDIA A100-SXM4-40GB") == "nvidia_a100_sxm4_40gb"
    assert bench.default_out("NVIDIA H200") == BENCHMARKS / "results" / "gpu_nvidia_h200.json"


# -- the batch searches, with fake steps ---------------------------------------------------------
def test_largest_fitting_batch_doubles_until_out_of_memory(bench):
    calls, released = [], []

    def step(batch: int) -> float:
        calls.append(batch)
        if batch > 6:
            raise _oom(batch)
        return 100.0 * batch

    found = bench.largest_fitting_batch(step, release=lambda: released.append(True))
    assert calls == [1, 2, 4, 8] and released == [True]
    assert found == {"largest_batch": 4, "peak_mib": {"1": 100.0, "2": 200.0, "4": 400.0},
                     "oom_batch": 8, "stopped": "out of memory"}


def test_largest_fitting_batch_stops_at_max_batch_and_when_nothing_fits(bench):
    released = []
    found = bench.largest_fitting_batch(lambda b: 1.0, max_batch=5, release=lambda: released.append(1))
    assert found["largest_batch"] == 4 and found["stopped"] == "max_batch" and found["oom_batch"] is None
    assert released == []

    def never(batch):
        raise _oom(batch)

    found = bench.largest_fitting_batch(never, start=2, release=lambda: None)
    assert found == {"largest_batch": 0, "peak_mib": {}, "oom_batch": 2, "stopped": "out of memory"}


def test_other_errors_are_not_taken_for_out_of_memory(bench):
    def broken(batch):
        raise RuntimeError("expected all tensors to be on the same device")

    with pytest.raises(RuntimeError, match="same device"):
        bench.largest_fitting_batch(broken, release=lambda: None)


def test_run_at_fitting_batch_halves_until_it_fits(bench):
    def run(batch: int) -> dict:
        if batch > 5:
            raise _oom(batch)
        return {"batch": batch}

    released = []
    result = bench.run_at_fitting_batch(run, 32, release=lambda: released.append(1))
    assert result == {"batch": 4, "out_of_memory_at": [32, 16, 8]} and len(released) == 3
    assert bench.run_at_fitting_batch(run, 3, release=lambda: None) == {"batch": 3, "out_of_memory_at": []}

    def never(batch):
        raise _oom(batch)

    with pytest.raises(torch.cuda.OutOfMemoryError):
        bench.run_at_fitting_batch(never, 4, release=lambda: None)


# -- activation checkpointing and epoch times ---------------------------------------------------
def test_checkpointed_blocks_give_the_same_loss_and_gradients(bench):
    """Both decoders (the axial one alternates two block uses), on CPU at 12 parcels."""
    from brainlm.model import BrainLM, MaskSpec, preset

    for name in ("tiny", "small"):
        grads = []
        for checkpointing in (False, True):
            torch.manual_seed(0)
            model = BrainLM(preset(name))
            n_blocks = bench.checkpoint_blocks(model) if checkpointing else 0
            gen = torch.Generator().manual_seed(1)
            x, xyz = torch.randn(2, 200, 12, generator=gen), torch.rand(2, 12, 3, generator=gen) * 100 - 50
            mask = model.sample_mask(MaskSpec("random", 0.75), 2, 12, gen)
            loss = model(x, xyz, mask)[0]
            loss.backward()
            grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        assert n_blocks == model.config.depth + model.config.decoder_depth
        torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=0)
        for with_ckpt, without in zip(grads[1][1], grads[0][1]):
            torch.testing.assert_close(with_ckpt, without, rtol=1e-6, atol=1e-7)


def test_epoch_seconds_come_from_the_runs_event_times(bench, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    log = tmp_path / "run" / "logs" / "tensorboard" / "version_0"
    with SummaryWriter(str(log)) as writer:
        writer.add_scalar("train/loss", 1.0, 0, walltime=100.0)  # training starts
        for k, t in enumerate((112.0, 120.0, 129.5)):
            writer.add_scalar("train/loss", 0.5, 10 * k + 5, walltime=t - 2)
            writer.add_scalar("val/masked_mse", 0.4, 10 * k + 9, walltime=t)
    assert bench.epoch_seconds(tmp_path / "run") == [12.0, 8.0, 9.5]


# -- on a GPU ------------------------------------------------------------------------------------
@pytest.mark.cuda
@no_cuda
def test_out_of_memory_is_caught_and_the_card_recovers(bench):
    def step(batch: int) -> float:  # batch GiB at a time: the card runs out somewhere
        block = torch.empty(batch * 2**28, dtype=torch.float32, device="cuda")
        return block.numel() * 4 / 2**20

    found = bench.largest_fitting_batch(step, max_batch=2**12)
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    assert found["stopped"] == "out of memory" and 1 <= found["largest_batch"] <= total_gib
    torch.ones(2**20, device="cuda").sum().item()  # the allocator works again


@pytest.mark.cuda
@no_cuda
def test_quick_mode_on_the_gpu(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["environment"]["card"] == torch.cuda.get_device_name(0) and result["quick"]
    assert not [part for part in ("matmul", "throughput", "memory", "pretrain") if "error" in result[part]]
    assert result["matmul"]["bf16_tflop_per_s"] > result["matmul"]["fp32_tflop_per_s"] > 0
    rows = result["throughput"]["rows"]
    assert sorted(r["model"] for r in rows) == ["111m/axial", "111m/full", "13m/axial", "13m/full"]
    assert all(r["windows_per_s"] > 0 and 0 < r["mfu_vs_ceiling"] < 1 for r in rows)
    assert all(r["largest_batch"] >= 1 for r in result["memory"]["rows"])
    assert result["pretrain"]["seconds_per_epoch"] > 0 and -1 < result["pretrain"]["final_val_r2"] < 1
