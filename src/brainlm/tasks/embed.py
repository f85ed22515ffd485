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
from brainlm.errors import BrainLMInputError
from brainlm.model.brainlm import BrainLM

_CLEANING_KEYS = ("target_tr", "drop_initial_trs", "percent_signal_change", "detrend", "high_pass_hz",
                  "low_pass_hz", "confounds", "bad_parcels")


def embed(checkpoint: str | Path, data: list[str | Path], out: str | Path | None = None, *,
          per_window: bool = False, tr: float | None = None, orientation: str = "auto",
          key: str | None = None, transfer_atlas: bool = False, batch_size: int = 32,
          device: str = "cpu") -> pd.DataFrame:
    """Embeddings of every recording in ``data``; written to ``out`` (Parquet) when given."""
    model = BrainLM.from_pretrained(checkpoint, map_location=device)
    rows = []
    for ids, windows, starts, xyz in _recordings(model, data, tr, orientation, key, transfer_atlas):
        cls, mean = model.embed_windows(windows, xyz, batch_size)
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


def _recordings(model: BrainLM, data, tr, orientation, key, transfer_atlas):
    """Yield (ids, windows [W, T, P], starts [W], xyz [P, 3]) per recording."""
    paths = [Path(d) for d in data]
    if len(paths) == 1 and (paths[0] / "corpus.json").is_file():
        yield from _from_corpus(model, paths[0], transfer_atlas)
        return
    from brainlm.data.sources import check_unique_ids, discover_files, specs_from_files

    if model.atlas is None:
        raise BrainLMInputError("checkpoint has no atlas; embed a prepared corpus instead", str(paths[0]))
    files, _ = discover_files(paths)
    specs = specs_from_files(files, tr=tr)
    check_unique_ids(specs)
    xyz = torch.from_numpy(np.array(model.atlas.xyz, dtype=np.float32))
    for spec in specs:
        rec = spec.load(model.atlas, orientation=orientation, key=key)
        wins, starts = model.windows(model.preprocess(rec))
        yield _ids(spec.recording_id, rec.subject, rec.session, rec.task, rec.run, rec.site), wins, starts, xyz


def _from_corpus(model: BrainLM, path: Path, transfer_atlas: bool):
    from brainlm.data.corpus import Corpus

    corpus = Corpus(path)
    model.check_atlas(corpus.atlas, transfer=transfer_atlas, source=str(path))
    if model.contract is None or not model.contract.is_fitted:
        raise BrainLMInputError("checkpoint has no fitted preprocessing contract", str(path))
    mine, theirs = model.contract.to_dict(), corpus.contract.to_dict()
    differ = [k for k in _CLEANING_KEYS if mine.get(k) != theirs.get(k)]
    if differ:
        raise BrainLMInputError(
            "the corpus was cleaned differently from the model's pretraining data ("
            + ", ".join(f"{k}: corpus {theirs.get(k)!r} vs model {mine.get(k)!r}" for k in differ)
            + "); prepare it again with the checkpoint's settings or embed the source files", str(path))
    # On the pretraining atlas the checkpoint's scaling applies; a transferred atlas has no
    # statistics in the checkpoint, so the corpus' own (training-split) scaling is used.
    scaler = model.contract if model.atlas is None or corpus.atlas.matches(model.atlas) else corpus.contract
    xyz = torch.from_numpy(np.array(corpus.atlas.xyz, dtype=np.float32))
    m = corpus.manifest
    for i in range(len(m)):
        cleaned = corpus.read(i, scaled=False)
        scaled = scaler.scale(cleaned)
        if scaled.shape[0] < model.config.window_trs:
            continue
        wins, starts = model.windows(scaled)
        r = m.iloc[i]
        yield (_ids(r["recording_id"], r["subject"], r["session"], r["task"], r["run"], r["site"],
                    split=r["split"]), wins, starts, xyz)


def _ids(recording_id, subject, session, task, run, site, split=None) -> dict:
    d = {"recording_id": recording_id, "subject": subject, "session": session, "task": task,
         "run": run, "site": site}
    if split is not None:
        d["split"] = split
    return d
