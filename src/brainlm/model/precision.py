"""Numeric precision: which precisions a device runs, which one ``auto`` picks, and the autocast
context that every training and inference path of brainlm runs under.

Precisions are Lightning's names. ``bf16-mixed`` keeps fp32 weights and optimizer state and
runs matrix products in bfloat16 under ``torch.autocast`` (GPU or CPU); losses, norms and
softmax stay in fp32 (autocast's own lists, plus explicit ``.float()`` in the model's losses).

``auto`` picks bf16-mixed where bfloat16 arithmetic is native and pays:

* a CUDA GPU that supports bfloat16 (Ampere and later);
* a CPU whose instruction set multiplies bfloat16 natively (AMX-BF16 or AVX512-BF16, as torch's
  CPU detection reports them at run time), for a model at least :data:`CPU_BF16_MIN_WIDTH` wide.
  On other CPUs bfloat16 is emulated through fp32 conversions and is slower than fp32; on a
  narrow model (the CPU presets ``tiny`` and ``small``, width 96) the products are too small for
  the bf16 kernels to win back the casts, and training runs no faster. ``auto`` stays at 32-true
  in both cases.

The numbers behind the CPU choice are in ``benchmarks/results/precision.json`` (docs/scale.md).
"""

from __future__ import annotations

import contextlib

import torch

from brainlm.errors import BrainLMInputError

#: The precisions brainlm runs (Lightning's names), ``auto`` first.
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
#: Instruction sets that multiply bfloat16 natively, as ``torch.cpu.get_capabilities`` names them.
CPU_BF16_FEATURES = ("amx_bf16", "avx512_bf16")
#: The narrowest encoder (``dim``) for which ``auto`` trains in bf16 on a CPU: the 13m preset
#: (512) and wider train about twice as fast in bf16, the 96-wide CPU presets no faster
#: (benchmarks/results/precision.json).
CPU_BF16_MIN_WIDTH = 256


def cpu_bf16_features() -> tuple[str, ...]:
    """The native bfloat16 instruction sets of this CPU among :data:`CPU_BF16_FEATURES`
    (empty where there are none, or where this torch cannot tell)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        caps = capabilities()
        return tuple(f for f in CPU_BF16_FEATURES if caps.get(f, False))
    # Older torch: the two private probes it had before get_capabilities.
    found = []
    for feature, probe in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            found.append(feature)
    return tuple(found)


def device_type(accelerator: str | torch.device) -> str:
    """``cpu`` or ``cuda`` for a Lightning accelerator (``cpu``, ``gpu``, ``cuda``, ``auto``) or a
    torch device (``cuda:1``)."""
    name = accelerator.type if isinstance(accelerator, torch.device) else str(accelerator).split(":")[0]
    if name in ("gpu", "cuda"):
        return "cuda"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def fast_bf16(device: str) -> bool:
    """Whether ``device`` (``cpu`` or ``cuda``) multiplies bfloat16 natively."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(cpu_bf16_features())


def resolve_precision(precision: str, accelerator: str | torch.device = "cpu", width: int | None = None) -> str:
    """The precision a fit or a forward pass runs in on ``accelerator``.

    ``auto`` -> ``bf16-mixed`` where :func:`fast_bf16` (on a CPU, also only for a model of
    ``width`` >= :data:`CPU_BF16_MIN_WIDTH`; ``width`` None: any), else ``32-true``. An explicit
    precision is returned as given when the device can run it.

    Raises
    ------
    BrainLMInputError
        An unknown precision, ``16-mixed`` off a GPU (float16 autocast needs loss scaling, which
        only CUDA provides), or ``bf16-mixed`` on a GPU without bfloat16.
    """
    if precision not in PRECISIONS:
        raise BrainLMInputError(f"--precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    device = device_type(accelerator)
    if precision == "auto":
        pays = device == "cuda" or width is None or width >= CPU_BF16_MIN_WIDTH
        return "bf16-mixed" if fast_bf16(device) and pays else "32-true"
    if precision == "16-mixed" and device != "cuda":
        raise BrainLMInputError("--precision 16-mixed needs a CUDA GPU (float16 training needs its loss "
                                "scaling); on the CPU use bf16-mixed or 32-true")
    if precision == "bf16-mixed" and device == "cuda" and not fast_bf16("cuda"):
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
        raise BrainLMInputError(f"--precision bf16-mixed: this GPU ({name}) has no bfloat16; use "
                                "16-mixed or 32-true")
    return precision


def autocast(precision: str, device: str | torch.device = "cpu"):
    """The autocast context of a resolved ``precision`` for a forward pass on ``device``: bf16
    or fp16 autocast for the mixed precisions, nothing for ``32-true``. ``auto`` is resolved
    first (:func:`resolve_precision`)."""
    precision = resolve_precision(precision, device)
    if precision == "32-true":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device_type(device), dtype=dtype)
