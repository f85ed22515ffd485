"""A checkpoint's view of a prepared corpus: the recordings as model input.

A corpus stores cleaned, unscaled recordings; the model expects them cleaned the way its
pretraining data were and scaled with its pretraining statistics. Evaluation tasks read corpora
through here so that reconstruction, prediction and ``brainlm embed`` see the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.errors import BrainLMInputError
from brainlm.model.brainlm import BrainLM

#: Contract fields that change the cleaned signal; a corpus must match the checkpoint on all.
CLEANING_KEYS = ("target_tr", "drop_initial_trs", "percent_signal_change", "detrend", "high_pass_hz",
                 "low_pass_hz", "confounds", "bad_parcels")


def load_model(checkpoint: str | Path | BrainLM, device: str = "cpu") -> BrainLM:
    """A BrainLM from a checkpoint folder (``RUN/model``), or the model itself when given one."""
    if isinstance(checkpoint, BrainLM):
        return checkpoint
    return BrainLM.from_pretrained(checkpoint, map_location=device)


def open_corpus(corpus: str | Path | Corpus) -> Corpus:
    """A :class:`Corpus` from a path (or the corpus itself)."""
    return corpus if isinstance(corpus, Corpus) else Corpus(corpus)


def model_scaler(model: BrainLM, corpus: Corpus, *, transfer_atlas: bool = False) -> PreprocessingContract:
    """The contract whose robust scaling turns the corpus' cleaned recordings into model input.

    On the pretraining atlas that is the checkpoint's own contract (what pretraining saw); a
    transferred atlas has no statistics in the checkpoint, so the corpus' scaling (fitted on its
    training split, no targets involved) is used. Errors when the corpus was cleaned differently
    from the pretraining data or is on another atlas without ``transfer_atlas``.
    """
    model.check_atlas(corpus.atlas, transfer=transfer_atlas, source=corpus.path)
    if model.contract is None or not model.contract.is_fitted:
        raise BrainLMInputError("checkpoint has no fitted preprocessing contract (contract.json)",
                                corpus.path)
    mine, theirs = model.contract.to_dict(), corpus.contract.to_dict()
    differ = [k for k in CLEANING_KEYS if mine.get(k) != theirs.get(k)]
    if differ:
        raise BrainLMInputError(
            "the corpus was cleaned differently from the model's pretraining data ("
            + ", ".join(f"{k}: corpus {theirs.get(k)!r} vs model {mine.get(k)!r}" for k in differ)
            + "); prepare it again with the checkpoint's settings", corpus.path)
    if model.atlas is None or corpus.atlas.matches(model.atlas):
        return model.contract
    return corpus.contract


def iter_model_input(corpus: Corpus, rows, scaler: PreprocessingContract) -> Iterator[np.ndarray]:
    """Recordings ``rows`` (manifest row indices) as model input, one at a time: (T_i, P)
    float32 arrays, cleaned and robust-scaled, missing parcels 0."""
    for i in rows:
        yield scaler.scale(corpus.read(int(i), scaled=False))


def read_model_input(corpus: Corpus, rows, scaler: PreprocessingContract) -> list[np.ndarray]:
    """Recordings ``rows`` (manifest row indices) as model input, all in memory.

    Returns
    -------
    list of ndarray, each (T_i, P) float32: cleaned and robust-scaled, missing parcels 0.
    """
    return list(iter_model_input(corpus, rows, scaler))


def subject_keys(corpus: Corpus, rows) -> np.ndarray:
    """Subject of each row as ``site/subject`` (the corpus keys subjects by site and id, so two
    sites' ``sub-01`` are different people). Shape (len(rows),), dtype object."""
    m = corpus.manifest
    site = m["site"].astype(object).where(m["site"].notna(), "")
    keys = (site.astype(str) + "/" + m["subject"].astype(str)).to_numpy(dtype=object)
    return keys[np.asarray(rows, dtype=int)]
