"""``brainlm embed CHECKPOINT DATA --out embeddings.parquet``.

DATA is a prepared corpus (its cleaned recordings are scaled with the checkpoint's contract,
which must have the same cleaning settings) or time-series files/folders (read and preprocessed
with the checkpoint's contract). Output: one row per recording (or per window), with ids and the
CLS (``cls_0000`` ...) and mean-pooled (``mean_0000`` ...) embeddings as float32 columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from brainlm.data.atomic import write_parquet_atomic
from brainlm.tasks.model_input import embed_windows, load_model, recording_windows


def embed(checkpoint: str | Path, data: list[str | Path], out: str | Path | None = None, *,
          per_window: bool = False, tr: float | None = None, orientation: str = "auto",
          key: str | None = None, transfer_atlas: bool = False, batch_size: int = 32,
          device: str = "cpu") -> pd.DataFrame:
    """Embeddings of every recording in ``data``; written to ``out`` (Parquet) when given."""
    model = load_model(checkpoint, device)
    rows = []
    for ids, windows, starts, xyz in recording_windows(model, data, tr=tr, orientation=orientation,
                                                       key=key, transfer_atlas=transfer_atlas):
        cls, mean = embed_windows(model, windows, xyz, batch_size)
        if per_window:
            for k, s in enumerate(starts):
                rows.append({**ids, "start_tr": int(s), **_columns(cls[k], mean[k])})
        else:
            rows.append({**ids, "n_windows": len(starts), **_columns(cls.mean(0), mean.mean(0))})
    df = pd.DataFrame(rows)
    if out is not None:
        write_parquet_atomic(df, out)
    return df


def _columns(cls: torch.Tensor, mean: torch.Tensor) -> dict:
    c, m = cls.numpy().astype(np.float32), mean.numpy().astype(np.float32)
    return {**{f"cls_{i:04d}": v for i, v in enumerate(c)}, **{f"mean_{i:04d}": v for i, v in enumerate(m)}}
