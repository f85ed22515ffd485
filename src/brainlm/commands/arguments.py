"""``argparse`` types shared by the command modules, defined once."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from brainlm.data.atlas import EMBEDDED_ATLASES, Atlas, load_atlas
from brainlm.data.atomic import check_not_an_input
from brainlm.data.corpus import Corpus
from brainlm.data.recording import Recording
from brainlm.data.sources import read_recordings
from brainlm.errors import BrainLMInputError
from brainlm.validation import positive_int

__all__ = ["ATLAS_HELP", "CHECKPOINT_HELP", "add_attention_options", "add_data_file_options", "atlas_option",
           "check_device", "check_output_file", "check_positive", "comma_floats", "comma_ints", "comma_names",
           "data_argument", "two_levels"]

#: Help of every command's CHECKPOINT argument.
CHECKPOINT_HELP = ("a checkpoint folder (RUN/model), the name of a shipped model (`brainlm models`), or a "
                   "Hugging Face Hub id hf://ORG/REPO[@REVISION][/SUBFOLDER] (fetched through the Hugging Face "
                   "cache; HF_HOME and HF_HUB_OFFLINE apply)")
#: Help of every ``--atlas`` option (``prepare`` and the commands that read time-series files).
ATLAS_HELP = (f"atlas of parcellated time series: {' | '.join(EMBEDDED_ATLASES)} | a TSV with "
              "name,x,y,z[,network] (MNI mm), rows in the column order of the files")


def check_positive(value, option: str) -> None:
    """An error naming ``option`` unless ``value`` is a positive whole number."""
    positive_int(value, option)


def check_device(device: str, option: str = "--device") -> None:
    """An error naming ``option`` unless torch can place tensors on ``device`` on this machine
    (``cpu``, ``cuda``, ``cuda:N`` with N below the number of GPUs, ``mps``)."""
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise BrainLMInputError(f"{option} {device!r} is not a device; expected cpu, cuda, cuda:N or mps") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (d.index is not None and d.index >= n):
            raise BrainLMInputError(f"{option} {device!r}: this machine has {n} CUDA device(s)"
                                    + (f" (cuda:0 to cuda:{n - 1})" if n else "; use --device cpu"))
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise BrainLMInputError(f"{option} {device!r}: MPS is not available here; use --device cpu")
    elif d.type not in ("cpu", "cuda", "mps"):
        raise BrainLMInputError(f"{option} {device!r}: expected cpu, cuda, cuda:N or mps")


def check_output_file(path, option: str = "--out", *, overwrite: bool = False, sources=(),
                      replaceable=None, flag: str = "--overwrite") -> Path:
    """``path`` as a Path if a file may be written there; else an error naming ``option`` and
    the path. The file form of :func:`brainlm.data.atomic.check_output_folder`:

    * not a folder, in an existing folder the user may write to;
    * not one of ``sources`` (paths the command reads) nor inside one, whatever ``overwrite``;
    * an existing file only with ``overwrite`` (the message names ``flag``), and then only if
      ``replaceable(path)`` says brainlm wrote it (when ``replaceable`` is given).
    """
    path = Path(path)
    if path.is_dir():
        raise BrainLMInputError(f"{option} is a folder; expected a file name (e.g. {path / 'embeddings.parquet'})",
                                str(path))
    check_not_an_input(path, sources, what=f"{option} file")
    parent = path.parent
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist; create it first"
        raise BrainLMInputError(f"{option}: the folder {parent} {what}", str(path))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BrainLMInputError(f"{option}: no permission to write in {parent}", str(path))
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise BrainLMInputError(f"{option} file exists; pass {flag} to replace it", str(path))
        if replaceable is not None and not replaceable(path):
            raise BrainLMInputError(f"{flag} replaces only a file that brainlm wrote; this one is "
                                    "kept: choose another name, or remove it yourself", str(path))
    return path


def comma_floats(text: str) -> list[float]:
    """``argparse`` type for options such as ``--ratios 0.2,0.5``."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def comma_ints(text: str) -> list[int]:
    """``argparse`` type for options such as ``--layers 0,3``."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def comma_names(text: str) -> list[str]:
    """``argparse`` type for options such as ``--baselines ar,var``: the non-empty names."""
    return [t.strip() for t in text.split(",") if t.strip()]


def two_levels(text: str) -> list[str]:
    """``argparse`` type for ``--groups A,B``: exactly two non-empty levels."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected two levels as A,B, got {text!r}")
    return parts


def add_attention_options(p: argparse.ArgumentParser) -> None:
    """The options ``brainlm networks`` and ``brainlm attention`` share: atlas transfer, batch
    size, device, seed and ``--no-figures``."""
    p.add_argument("--transfer-atlas", action="store_true",
                   help="allow an atlas other than the checkpoint's (through parcel coordinates)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", action="store_true", help="write tables only")


def atlas_option(value: str | None, option: str = "--atlas") -> Atlas | None:
    """The atlas an ``--atlas`` value names (None when not given); an unknown name or a bad table
    is an error naming the value."""
    if value is None:
        return None
    try:
        return load_atlas(value)
    except BrainLMInputError as e:
        raise BrainLMInputError(f"{option}: {e.reason}", e.source or str(value)) from None


def add_data_file_options(p: argparse.ArgumentParser) -> None:
    """How a command that takes DATA files reads them: ``--atlas``, ``--tr``, ``--orientation``,
    ``--key`` (the same meaning as in ``brainlm prepare``)."""
    p.add_argument("--atlas", help=ATLAS_HELP + "; default: the checkpoint's atlas (another atlas "
                   "needs --transfer-atlas)")
    p.add_argument("--tr", type=float, help="TR in seconds for files without a JSON sidecar")
    p.add_argument("--orientation", default="auto", choices=["auto", "time-by-parcel", "parcel-by-time"])
    p.add_argument("--key", help="array name inside .npz/.mat/.h5 files (default: inferred)")


def data_argument(data: list[str], args: argparse.Namespace) -> list[str] | list[Recording]:
    """DATA as the tasks take it: the paths themselves (a corpus, or files on the checkpoint's
    atlas, read lazily), or, with ``--atlas``, the files read on that atlas as Recordings.

    A corpus carries its atlas: ``--atlas`` must then name it (or be left out)."""
    atlas = atlas_option(getattr(args, "atlas", None))
    if atlas is None:
        return data
    if len(data) == 1 and (Path(data[0]) / "corpus.json").is_file():
        corpus_atlas = Corpus(data[0]).atlas
        if not atlas.matches(corpus_atlas):
            raise BrainLMInputError(f"--atlas is {atlas.name!r} but the corpus is on {corpus_atlas.name!r}; "
                                    "a corpus carries its atlas: leave --atlas out", data[0])
        return data
    return read_recordings(data, atlas, tr=args.tr, orientation=args.orientation, key=args.key)
