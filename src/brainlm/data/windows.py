"""Fixed-length windows of a corpus for PyTorch and Lightning.

Training draws a random crop per recording per visit (fresh each epoch, reproducible under
``lightning.seed_everything``); evaluation uses deterministic tiles, so the same corpus gives the
same windows, in the same order, every time (upstream cropped at random even at evaluation).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.errors import BrainLMInputError

MODES = ("random", "tiles")


def tile_starts(n_trs: int, window_trs: int, stride: int | None = None) -> np.ndarray:
    """First TR of every window of ``window_trs`` TRs that fits in ``n_trs`` TRs, from TR 0 in
    steps of ``stride`` TRs (default: non-overlapping). Shape (W,), int64; empty when the
    recording is shorter than one window (the tail shorter than a window is never used)."""
    stride = int(stride or window_trs)
    if n_trs < window_trs:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n_trs - window_trs + 1, stride, dtype=np.int64)


def tile(series: np.ndarray, window_trs: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic tiles of one recording: series (T, P) -> (tiles (W, window_trs, P) float32,
    starts (W,)). The one tiling used for evaluation and inference everywhere."""
    starts = tile_starts(series.shape[0], window_trs, stride)
    if starts.size == 0:
        return np.zeros((0, window_trs, series.shape[1]), dtype=np.float32), starts
    return np.stack([np.asarray(series[s:s + window_trs], dtype=np.float32) for s in starts]), starts


def require_window(corpus: Corpus, split: str | None, window_trs: int, what: str = "window") -> None:
    """Error, naming the corpus, when ``window_trs`` is longer than every recording of ``split``
    (``what`` names the window in the message, e.g. "context + horizon")."""
    rows = corpus.split_indices(split)
    if rows.size == 0:
        raise BrainLMInputError(f"split {split!r} has no recordings", corpus.path)
    longest = int(corpus.manifest["n_trs"].to_numpy()[rows].max())
    if longest < window_trs:
        raise BrainLMInputError(
            f"{what} of {window_trs} TRs is longer than every recording of split {split!r} "
            f"(longest {longest} TRs at TR {corpus.tr} s)", corpus.path)


class WindowDataset(Dataset):
    """Windows of ``window_trs`` TRs from the recordings of one split.

    Each item is a dict:

    * ``window``: float32 tensor (window_trs, P), robust-scaled signal (missing parcels 0): the
      corpus' own scaling, or ``scaler``'s;
    * ``xyz``: float32 tensor (P, 3), parcel MNI coordinates in mm;
    * ``recording``: int, manifest row of the recording; ``start``: int, first TR of the window.

    Parameters
    ----------
    corpus : Corpus or path
    split : {"train", "val", "test"} or None (all recordings)
    window_trs : int
        Window length in TRs at the corpus TR (BrainLM: 200).
    mode : {"random", "tiles"}
        ``"random"``: ``crops_per_recording`` random crops of each recording per epoch;
        ``"tiles"``: every window starting at 0, stride, 2*stride ... that fits (the tail
        shorter than a window is not used).
    stride : int, optional
        Step between tiles in TRs (default: ``window_trs``, non-overlapping).
    scaler : PreprocessingContract, optional
        Whose robust scaling turns the corpus' cleaned, unscaled windows into model input
        (pooled statistics, or each recording's own: :meth:`Corpus.read`): a checkpoint's
        contract, so a fine-tuned model sees its pretraining scale
        (:func:`brainlm.tasks.model_input.model_scaler`). Default: the corpus' own scaling.
    """

    def __init__(self, corpus: Corpus | str, split: str | None = "train", *, window_trs: int = 200,
                 mode: str = "random", stride: int | None = None, crops_per_recording: int = 1,
                 scaler: PreprocessingContract | None = None):
        self.corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
        if scaler is not None and not scaler.is_fitted:
            raise BrainLMInputError("scaler has no fitted scaling statistics", self.corpus.path)
        self.scaler = scaler
        if mode not in MODES:
            raise BrainLMInputError(f"window mode {mode!r}; expected one of {MODES}")
        if window_trs < 1 or (stride is not None and stride < 1) or crops_per_recording < 1:
            raise BrainLMInputError("window_trs, stride and crops_per_recording must be positive")
        self.window_trs, self.mode = int(window_trs), mode
        self.stride = int(stride or window_trs)
        rows = self.corpus.split_indices(split)
        lengths = self.corpus.manifest["n_trs"].to_numpy()[rows]
        fits = lengths >= self.window_trs
        if not fits.any():
            raise BrainLMInputError(
                f"no recording in split {split!r} has {self.window_trs} TRs (longest: {lengths.max()})",
                self.corpus.path)
        self.rows, self.lengths = rows[fits], lengths[fits]
        self.n_dropped = int((~fits).sum())
        self.xyz = torch.from_numpy(np.array(self.corpus.atlas.xyz, dtype=np.float32))
        if mode == "tiles":
            starts = [tile_starts(int(n), self.window_trs, self.stride) for n in self.lengths]
            self.tile_rows = np.repeat(self.rows, [len(s) for s in starts])
            self.tile_starts = np.concatenate(starts)
        else:
            self.crops = int(crops_per_recording)

    def __len__(self) -> int:
        return len(self.tile_rows) if self.mode == "tiles" else len(self.rows) * self.crops

    def locate(self, i: int) -> tuple[int, int]:
        """(manifest row, start TR) of item ``i``; random crops draw from torch's RNG."""
        if self.mode == "tiles":
            return int(self.tile_rows[i]), int(self.tile_starts[i])
        k = i % len(self.rows)
        high = int(self.lengths[k]) - self.window_trs + 1
        return int(self.rows[k]), int(torch.randint(high, ()).item())

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        row, start = self.locate(i)
        # One road for every scaling: per-recording scaling divides by the whole recording's
        # statistics, so a crop reads as the same numbers as in the whole recording.
        window = self.corpus.read(row, start, start + self.window_trs, scaler=self.scaler)
        return {"window": torch.from_numpy(window), "xyz": self.xyz, "recording": row, "start": start}


class CorpusDataModule(L.LightningDataModule):
    """Train / val / test loaders over a corpus: random crops for training, tiles otherwise.

    Parameters
    ----------
    corpus : path or fsspec URL
    window_trs : int
        Window length in TRs.
    batch_size : int
    num_workers : int
        DataLoader worker processes (each opens the store itself; nothing is preloaded).
    crops_per_recording : int
        Random crops per training recording per epoch.
    eval_stride : int, optional
        Tile step for val/test (default: non-overlapping).
    scaler : PreprocessingContract, optional
        Scaling of every window (see :class:`WindowDataset`); default: the corpus' own.
    """

    def __init__(self, corpus: str, *, window_trs: int = 200, batch_size: int = 32,
                 num_workers: int = 0, crops_per_recording: int = 1, eval_stride: int | None = None,
                 storage_options: dict | None = None, scaler: PreprocessingContract | None = None):
        super().__init__()
        self.scaler = scaler
        self.corpus_path, self.storage_options = str(corpus), storage_options
        self.window_trs, self.batch_size, self.num_workers = window_trs, batch_size, num_workers
        self.crops_per_recording, self.eval_stride = crops_per_recording, eval_stride
        self.corpus: Corpus | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is None:
            self.corpus = Corpus(self.corpus_path, storage_options=self.storage_options)

    def _loader(self, split: str, mode: str) -> DataLoader:
        self.setup()
        ds = WindowDataset(self.corpus, split, window_trs=self.window_trs, mode=mode,
                           stride=self.eval_stride, crops_per_recording=self.crops_per_recording,
                           scaler=self.scaler)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=(mode == "random"),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", "random")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", "tiles")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", "tiles")
