"""The one road from data to model input: corpora, time-series files or recordings as a
checkpoint's windows.

A corpus stores cleaned, unscaled recordings; the model expects them cleaned the way its
pretraining data were and scaled with its pretraining statistics. Every task and the demo read
data through here (reconstruction, prediction, forecasting, ``brainlm embed``, attention,
networks and group maps), so all of them see the same numbers and refuse the same mismatches.
The forward passes on those windows are :mod:`brainlm.tasks.inference`.

* loading: :func:`load_model`, :func:`open_corpus`, :func:`random_like`;
* the checkpoint's contract: :func:`check_atlas`, :func:`preprocess` (a raw recording),
  :func:`model_scaler` (a corpus: its cleaning must match), :func:`iter_model_input`;
* windows: :func:`model_windows` (deterministic tiles), :func:`recording_windows` and
  :func:`model_inputs` (every recording of a corpus, files or recordings), :func:`parcel_xyz`;
* :func:`input_gain`: the gain and offset that an imported checkpoint's contract asks for
  (``scaler_fit.input_gain`` / ``input_offset``: an upstream normalization's constant, times
  the one chosen by :func:`calibrate_input_gain`), set on the scaler that :func:`model_scaler`
  returns (:func:`with_input_gain`: the contract's ``gain``/``offset``, pooled or per-recording
  scaling alike), so every window made from a corpus carries it.

Model families. Everything here takes a model of any family
(:class:`~brainlm.model.family.MaskedBrainModel`: :class:`~brainlm.model.brainlm.BrainLM` or an
imported upstream one); what differs between families (token layout, pooling, masked values) is
answered by the model itself, see :mod:`brainlm.model.family`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from brainlm.data.atlas import Atlas
from brainlm.data.contract import CLEANING_FIELDS, PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.data.recording import Recording
from brainlm.data.scaling import pooled_scaling
from brainlm.data.sources import check_unique_ids, discover_files, specs_from_files
from brainlm.data.windows import tile
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.folder import load_pretrained
from brainlm.model.family import MaskedBrainModel

#: Contract fields that change the cleaned signal; a corpus must match the checkpoint on all
#: (but ``percent_signal_change`` for a checkpoint with per-recording scaling, which removes it).
CLEANING_KEYS = CLEANING_FIELDS


def is_model(obj) -> bool:
    """Whether ``obj`` is a model already (any family: :class:`~brainlm.model.brainlm.BrainLM`
    or an imported upstream one, see :mod:`brainlm.model.upstream`) rather than a checkpoint
    path."""
    return isinstance(obj, torch.nn.Module)


def load_model(checkpoint: str | Path | MaskedBrainModel, device: str = "cpu") -> MaskedBrainModel:
    """A model (any family) from a checkpoint folder (``RUN/model``), or the model itself when
    given one."""
    if is_model(checkpoint):
        return checkpoint
    return load_pretrained(checkpoint, map_location=device)


def random_like(model: MaskedBrainModel, seed: int) -> MaskedBrainModel:
    """The same architecture (any family), contract and atlas as ``model`` with freshly
    initialised weights: the untrained control of every task. Seeded; torch's global random
    state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        fresh = type(model)(model.config, contract=model.contract, atlas=model.atlas)
    return fresh.to(next(model.parameters()).device)


def check_atlas(model: MaskedBrainModel, atlas: Atlas, *, transfer: bool = False, source: str | None = None) -> None:
    """Error when ``atlas`` is not the one the model was pretrained on, unless ``transfer`` (the
    coordinate embedding makes any atlas usable, but results differ)."""
    if model.atlas is None or transfer or atlas.matches(model.atlas):
        return
    raise BrainLMInputError(
        f"data are on atlas {atlas.name!r} ({atlas.n_parcels} parcels) but the model was "
        f"pretrained on {model.atlas.name!r} ({model.atlas.n_parcels} parcels); pass "
        "transfer_atlas=True (--transfer-atlas) to run it through parcel coordinates anyway", source)


def preprocess(model: MaskedBrainModel | str | Path, recording: Recording, *,
               transfer_atlas: bool = False) -> np.ndarray:
    """The checkpoint's preprocessing contract on a raw recording: (T_out, P) float32, cleaned,
    resampled to the contract's TR and scaled with the pretraining statistics (or, for a
    checkpoint that scales per recording, the recording's own, times its input gain).
    ``model``: a model, a checkpoint folder, a shipped model's name or a Hub id."""
    model = load_model(model)
    if model.contract is not None and not model.contract.is_fitted \
            and "upstream_normalization" in model.contract.scaler_fit:
        # Upstream never released its scaling statistics: a corpus' training split stands in.
        raise BrainLMInputError("an imported upstream checkpoint has no scaling statistics; prepare "
                                "the recordings as a corpus (brainlm prepare ... --atlas a424) and "
                                "pass the corpus instead", recording.source or recording.id)
    if model.contract is None or not model.contract.is_fitted:
        raise BrainLMInputError("this model has no fitted preprocessing contract; load a "
                                "pretrained checkpoint or set model.contract", recording.source or recording.id)
    check_atlas(model, recording.atlas, transfer=transfer_atlas, source=recording.source or recording.id)
    if not model.contract.per_recording and not _has_statistics_for(model, recording.atlas):
        raise BrainLMInputError(
            f"this checkpoint scales with its pretraining statistics, one per parcel of "
            f"{model.atlas.name if model.atlas else 'its atlas'!r} ({np.size(model.contract.median)}); the recording "
            f"is on {recording.atlas.name!r} ({recording.n_parcels} parcels), which has none: prepare the "
            "recordings as a corpus (its training split supplies them) or use a checkpoint that scales each "
            "recording by its own statistics (hcp-fresh)", recording.source or recording.id)
    # Pooled statistics of a checkpoint are its input as is (a fine-tuned imported model's
    # already carry its gain); per-recording scaling takes the gain here, as in model_scaler.
    contract = with_input_gain(model, model.contract) if model.contract.per_recording else model.contract
    return contract.transform(recording)


def _has_statistics_for(model: MaskedBrainModel, atlas: Atlas) -> bool:
    """Whether a pooled contract's per-parcel statistics belong to ``atlas``'s parcels: the same
    parcel names in the same order (by count alone where the checkpoint records no atlas)."""
    if model.atlas is not None:
        return list(atlas.parcel_names) == list(model.atlas.parcel_names)
    return np.size(model.contract.median) == atlas.n_parcels


def model_windows(model: MaskedBrainModel, data: np.ndarray,
                  source: str | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Deterministic non-overlapping tiles of a preprocessed recording for ``model``.

    data: (T, P) -> (windows Tensor (W, window_trs, P) float32, starts (W,) first TR of each);
    an error naming ``source`` when T < window_trs.
    """
    w = model.config.window_trs
    if data.shape[0] < w:
        raise BrainLMInputError(f"recording has {data.shape[0]} TRs after preprocessing; the "
                                f"model needs windows of {w} TRs", source)
    tiles, starts = tile(data, w)
    return torch.from_numpy(tiles), starts


def parcel_xyz(atlas: Atlas) -> torch.Tensor:
    """Parcel centres of ``atlas`` as the model's coordinate input: (P, 3) float32, MNI mm."""
    return torch.from_numpy(np.array(atlas.xyz, dtype=np.float32))


def open_corpus(corpus: str | Path | Corpus) -> Corpus:
    """A :class:`Corpus` from a path (or the corpus itself)."""
    return corpus if isinstance(corpus, Corpus) else Corpus(corpus)


def model_scaler(model: MaskedBrainModel, corpus: Corpus, *, transfer_atlas: bool = False) -> PreprocessingContract:
    """The contract whose scaling turns the corpus' cleaned recordings into model input.

    The checkpoint's scaling mode decides. Per-recording scaling: the checkpoint's contract
    (each recording by its own statistics of the checkpoint's normalization, on any atlas).
    Pooled: on the pretraining atlas the checkpoint's own contract (what pretraining saw); a
    transferred atlas (or an imported upstream checkpoint) has no statistics in the checkpoint,
    so the corpus' pooled statistics (fitted on its training split, or on all its recordings
    for an evaluation-only cohort; no targets involved) are used. The checkpoint's input gain
    (:func:`input_gain`) is set on the result whenever the statistics are not the checkpoint's
    own. Errors when the corpus was cleaned or normalized differently from the pretraining
    data, or is on another atlas without ``transfer_atlas``.
    """
    check_atlas(model, corpus.atlas, transfer=transfer_atlas, source=corpus.path)
    if model.contract is None:
        raise BrainLMInputError("checkpoint has no preprocessing contract (contract.json)", corpus.path)
    mine, theirs = model.contract.cleaning(), corpus.contract.cleaning()
    # Percent signal change is a map a * x + b per parcel, which per-recording robust or min-max
    # scaling removes (demeaning keeps a).
    exempt = {"percent_signal_change"} if model.contract.unit_free else set()
    differ = [k for k in CLEANING_KEYS if k not in exempt and mine.get(k) != theirs.get(k)]
    if differ:
        raise BrainLMInputError(
            "the corpus was cleaned differently from the model's pretraining data ("
            + ", ".join(f"{k}: corpus {theirs.get(k)!r} vs model {mine.get(k)!r}" for k in differ)
            + "); prepare it again with the checkpoint's settings (brainlm prepare ... --like "
            "CHECKPOINT)", corpus.path)
    if corpus.contract.normalization != model.contract.normalization:
        # The corpus' pooled statistics (and its per-recording attributes' meaning) belong to
        # its normalization: another one would feed the model numbers on another scale.
        raise BrainLMInputError(
            f"field 'normalization' is {corpus.contract.normalization!r} in the corpus but "
            f"{model.contract.normalization!r} in the checkpoint; prepare the corpus again like the "
            "checkpoint (brainlm prepare ... --like CKPT)", corpus.path)
    if model.contract.per_recording:
        return with_input_gain(model, model.contract)
    # An imported upstream checkpoint has no statistics (never released): the corpus' own,
    # times the checkpoint's input gain (calibrated or chosen; 1 when never set).
    if model.contract.is_fitted and (model.atlas is None or corpus.atlas.matches(model.atlas)):
        return model.contract
    scaler = corpus.contract
    if scaler.per_recording:
        # The model saw pooled scaling: the corpus' pooled statistics, not its per-recording mode.
        scaler = PreprocessingContract.from_dict({**scaler.to_dict(), "scaling": "pooled"})
    return with_input_gain(model, scaler)


def input_gain(model: MaskedBrainModel) -> tuple[float, float]:
    """(gain, offset) that turn normalized values into the model's input:
    ``input = gain * (x - centre) / spread + offset`` (robust: centre = median, spread = IQR).

    Read from the checkpoint's contract (``scaler_fit.input_gain``, ``input_offset``). Only
    imported upstream checkpoints carry them (upstream's scaling statistics were never released,
    so the corpus' statistics stand in, and their amplitude may not be what the weights expect;
    the gain is the upstream normalization's constant, e.g. 1 / 41.44047, times the calibrated
    one, see :func:`calibrate_input_gain`); (1.0, 0.0) otherwise.
    """
    fit = model.contract.scaler_fit if model.contract is not None else {}
    gain, offset = float(fit.get("input_gain", 1.0)), float(fit.get("input_offset", 0.0))
    if not (np.isfinite(gain) and gain > 0 and np.isfinite(offset)):
        raise BrainLMInputError(f"contract.json has input_gain {gain!r}, input_offset {offset!r}; "
                                "expected a gain > 0 and a finite offset")
    return gain, offset


def with_input_gain(model: MaskedBrainModel, scaler: PreprocessingContract) -> PreprocessingContract:
    """``scaler`` with the model's input gain and offset (:func:`input_gain`) as its ``gain``
    and ``offset``: the one place where the gain enters.

    The scaler's data-layer scaling then reads ``gain * (x - centre) / spread + offset``, with
    pooled or per-recording statistics alike, so everything that scales with the returned
    contract (task windows, the fine-tuning data module) makes the same model input. The gain
    is set, not multiplied, so applying it twice changes nothing. Missing parcels still become
    0. ``scaler`` itself is returned when it already has that gain and offset.
    """
    gain, offset = input_gain(model)
    if (scaler.gain, scaler.offset) == (gain, offset):
        return scaler
    out = PreprocessingContract.from_dict(scaler.to_dict())
    out.gain, out.offset = gain, offset
    out.scaler_fit = {**out.scaler_fit, "input_gain": gain, "input_offset": offset}
    return out


def iter_model_input(corpus: Corpus, rows, scaler: PreprocessingContract) -> Iterator[np.ndarray]:
    """Recordings ``rows`` (manifest row indices) as model input, one at a time: (T_i, P)
    float32 arrays, cleaned and robust-scaled (pooled, or by each recording's own statistics),
    missing parcels 0."""
    for i in rows:
        yield corpus.read(int(i), scaler=scaler)


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


def is_corpus(paths: list[Path]) -> bool:
    """Whether ``paths`` name one prepared corpus folder (rather than time-series files)."""
    return len(paths) == 1 and (paths[0] / "corpus.json").is_file()


def input_atlas(model: MaskedBrainModel, data, atlas: Atlas | None = None) -> Atlas:
    """The atlas that the recordings of ``data`` are on: a corpus' own, the Recordings' own,
    ``atlas`` for files when given, else the checkpoint's."""
    data = list(data)
    if data and all(isinstance(d, Recording) for d in data):
        return data[0].atlas
    paths = [Path(d) for d in data]
    if is_corpus(paths):
        corpus_atlas = open_corpus(paths[0]).atlas
        if atlas is not None and not atlas.matches(corpus_atlas):
            raise BrainLMInputError(f"--atlas is {atlas.name!r} but the corpus is on {corpus_atlas.name!r}; "
                                    "a corpus carries its atlas: leave --atlas out", str(paths[0]))
        return corpus_atlas
    if atlas is not None:
        return atlas
    if model.atlas is None:
        raise BrainLMInputError("checkpoint has no atlas; pass the files' atlas (--atlas) or a prepared "
                                "corpus", str(paths[0]))
    return model.atlas


def recording_windows(model: MaskedBrainModel, data, *, tr: float | None = None, orientation: str = "auto",
                      key: str | None = None, transfer_atlas: bool = False, atlas: Atlas | None = None,
                      ) -> Iterator[tuple[dict, torch.Tensor, np.ndarray, torch.Tensor]]:
    """Every recording of ``data`` as the model's windows, one recording at a time.

    Parameters
    ----------
    data : list of paths, or list of Recording
        One prepared corpus folder (cleaning checked against the checkpoint, scaled by
        :func:`model_scaler`; recordings shorter than one window are skipped), time-series
        files/folders, read with ``tr`` (seconds), ``orientation`` and ``key`` on ``atlas``
        (default: the checkpoint's) and preprocessed with the checkpoint's contract, or
        ``Recording`` objects (as :func:`model_inputs` takes them).
    atlas : Atlas, optional
        The atlas of the files (another one than the checkpoint's needs ``transfer_atlas``: the
        checkpoint's cleaning, then its scaling mode; with pooled scaling the statistics are
        pooled over the files given, as the checkpoint has none for that atlas).

    Yields
    ------
    ids : dict
        ``recording_id``, ``subject``, ``session``, ``task``, ``run``, ``site`` (and ``split``
        for a corpus).
    windows : Tensor (W, window_trs, P) float32
    starts : ndarray (W,) int, first TR of each window
    xyz : Tensor (P, 3) float32, parcel centroids in mm
    """
    data = [data] if isinstance(data, (str, Path, Recording)) else list(data)
    if not data:
        raise BrainLMInputError("no data given; expected a prepared corpus or time-series files")
    if all(isinstance(d, Recording) for d in data):
        yield from _recording_inputs(model, data, transfer_atlas, None)
        return
    if any(isinstance(d, Recording) for d in data):
        raise BrainLMInputError("data mixes Recording objects and paths; pass one kind")
    paths = [Path(d) for d in data]
    if is_corpus(paths):
        input_atlas(model, paths, atlas)  # a corpus on another atlas than --atlas is an error
        yield from _corpus_windows(model, open_corpus(paths[0]), transfer_atlas)
        return
    atlas = input_atlas(model, paths, atlas)
    check_atlas(model, atlas, transfer=transfer_atlas, source=str(paths[0]))
    files, _ = discover_files(paths)
    specs = specs_from_files(files, tr=tr)
    check_unique_ids(specs)
    if not _scales_alone(model, atlas):
        # Pooled scaling on an atlas the checkpoint has no statistics for: pooled over the files.
        yield from _recording_inputs(model, [s.load(atlas, orientation=orientation, key=key) for s in specs],
                                     transfer_atlas, None)
        return
    xyz = parcel_xyz(atlas)
    for spec in specs:
        rec = spec.load(atlas, orientation=orientation, key=key)
        windows, starts = model_windows(model, preprocess(model, rec, transfer_atlas=transfer_atlas),
                                        source=spec.recording_id)
        yield (_ids(spec.recording_id, rec.subject, rec.session, rec.task, rec.run, rec.site),
               windows, starts, xyz)


def _scales_alone(model: MaskedBrainModel, atlas: Atlas) -> bool:
    """Whether one recording on ``atlas`` can be scaled without the others: the checkpoint
    scales per recording, or it holds pooled statistics for this atlas."""
    contract = model.contract
    if contract is None:
        return True  # preprocess() gives the error
    return contract.per_recording or (model.atlas is not None and atlas.matches(model.atlas))


def _corpus_windows(model: MaskedBrainModel, corpus: Corpus, transfer_atlas: bool):
    scaler = model_scaler(model, corpus, transfer_atlas=transfer_atlas)
    xyz = parcel_xyz(corpus.atlas)
    m = corpus.manifest
    for i, scaled in enumerate(iter_model_input(corpus, range(len(m)), scaler)):
        if scaled.shape[0] < model.config.window_trs:
            continue
        windows, starts = model_windows(model, scaled)
        r = m.iloc[i]
        yield (_ids(r["recording_id"], r["subject"], r["session"], r["task"], r["run"], r["site"],
                    split=r["split"]), windows, starts, xyz)


def _ids(recording_id, subject, session, task, run, site, split=None) -> dict:
    ids = {"recording_id": recording_id, "subject": subject, "session": session, "task": task,
           "run": run, "site": site}
    if split is not None:
        ids["split"] = split
    return ids


@dataclass
class ModelInput:
    """One recording ready for the model.

    Attributes
    ----------
    ids : dict
        ``recording_id``, ``subject`` (and, where known, session, task, run, site, split).
    windows : torch.Tensor, shape (W, window_trs, P), float32
        Deterministic non-overlapping tiles of the preprocessed (scaled) recording.
    xyz : torch.Tensor, shape (P, 3), float32
        Parcel centres, MNI mm.
    atlas : Atlas
        The parcellation of the data (the model's, or another one with ``transfer_atlas``).
    """

    ids: dict
    windows: torch.Tensor
    xyz: torch.Tensor
    atlas: Atlas

    @property
    def timeseries(self) -> np.ndarray:
        """The tiles end to end: (W * window_trs, P) float32, the model's input signal."""
        w = self.windows.numpy()
        return w.reshape(-1, w.shape[2])


def model_inputs(model: MaskedBrainModel, data, *, transfer_atlas: bool = False, target_tr: float | None = None,
                 tr: float | None = None, orientation: str = "auto", key: str | None = None,
                 atlas: Atlas | None = None) -> Iterator[ModelInput]:
    """Model input for every recording of ``data``.

    Parameters
    ----------
    model : MaskedBrainModel
        A pretrained model (any family) with its preprocessing contract.
    data : path, list of paths, or list of Recording
        * a prepared corpus folder (its cleaning must match the checkpoint's contract; on the
          checkpoint's atlas the checkpoint's scaling is applied, on another atlas the corpus'
          own training-split scaling), or time-series files/folders on ``atlas`` (default: the
          checkpoint's; read with ``tr``, ``orientation``, ``key``) -- exactly as
          ``brainlm embed`` reads them;
        * ``Recording`` objects: on the checkpoint's atlas, :func:`preprocess`; on another
          atlas (``transfer_atlas``), cleaned with the checkpoint's settings, resampled to
          ``target_tr`` (default: the contract's) and robust-scaled with statistics pooled over
          the recordings given (the checkpoint has none for that atlas), or each by its own
          when the checkpoint scales per recording.
    transfer_atlas : bool
        Allow an atlas other than the checkpoint's (through parcel coordinates).
    atlas : Atlas, optional
        The atlas of time-series files (default: the checkpoint's).

    Yields
    ------
    ModelInput
        Recordings shorter than one window are skipped for corpora (as in ``brainlm embed``)
        and an error for ``Recording`` objects.
    """
    if isinstance(data, Recording):
        data = [data]
    if isinstance(data, (str, Path)):
        data = [data]
    data = list(data)
    if not data:
        raise BrainLMInputError("no data given; expected a corpus, files, or recordings")
    if all(isinstance(d, Recording) for d in data):
        atlas = data[0].atlas
        for ids, windows, _, xyz in _recording_inputs(model, data, transfer_atlas, target_tr):
            yield ModelInput(ids=ids, windows=windows, xyz=xyz, atlas=atlas)
        return
    if any(isinstance(d, Recording) for d in data):
        raise BrainLMInputError("data mixes Recording objects and paths; pass one kind")
    atlas = input_atlas(model, data, atlas)
    for ids, windows, _, xyz in recording_windows(model, data, tr=tr, orientation=orientation, key=key,
                                                  transfer_atlas=transfer_atlas, atlas=atlas):
        yield ModelInput(ids=ids, windows=windows, xyz=xyz, atlas=atlas)


def _recording_inputs(model: MaskedBrainModel, recordings: list[Recording], transfer_atlas: bool,
                      target_tr: float | None) -> Iterator[tuple[dict, torch.Tensor, np.ndarray, torch.Tensor]]:
    """Recordings of one atlas as (ids, windows, starts, xyz), as :func:`recording_windows`."""
    atlas = recordings[0].atlas
    for rec in recordings:
        if not rec.atlas.matches(atlas):
            raise BrainLMInputError(f"recordings are on different atlases ({atlas.name!r} and "
                                    f"{rec.atlas.name!r}); pass recordings of one atlas",
                                    rec.source or rec.id)
        check_atlas(model, rec.atlas, transfer=transfer_atlas, source=rec.source or rec.id)
    if model.contract is None:
        raise BrainLMInputError("the model has no preprocessing contract; load a pretrained checkpoint")
    xyz = parcel_xyz(atlas)
    on_model_atlas = model.atlas is not None and atlas.matches(model.atlas)
    if target_tr is None and (on_model_atlas or model.contract.per_recording):
        # One recording at a time: the checkpoint's statistics, or each recording's own.
        scaled = (preprocess(model, rec, transfer_atlas=transfer_atlas) for rec in recordings)
    else:
        cleaning = {**model.contract.cleaning(), **model.contract.scaling_settings()}
        if target_tr is not None:
            cleaning["target_tr"] = float(target_tr)
        contract = PreprocessingContract.from_dict(cleaning)
        cleaned = [contract.clean(r.timeseries, r.tr, confounds=r.confounds,
                                  parcel_names=r.atlas.parcel_names, source=r.source or r.id).data
                   for r in recordings]
        if contract.per_recording:
            # Each recording by its own statistics (scale() computes them), times the gain.
            contract = with_input_gain(model, contract)
        elif on_model_atlas:
            contract.median, contract.iqr = model.contract.median, model.contract.iqr
            contract.gain, contract.offset = model.contract.gain, model.contract.offset
        else:
            # The checkpoint holds no scaling statistics for this atlas: pool them over the data.
            med, iqr, _ = pooled_scaling(cleaned, contract.normalization)
            contract.median, contract.iqr = med.tolist(), iqr.tolist()
            contract = with_input_gain(model, contract)
        scaled = (contract.scale(c) for c in cleaned)
    for rec, x in zip(recordings, scaled):
        windows, starts = model_windows(model, x, source=rec.source or rec.id)
        ids = {"recording_id": rec.id, "subject": rec.subject, "session": rec.session,
               "task": rec.task, "run": rec.run, "site": rec.site, **dict(rec.phenotypes)}
        yield ids, windows, starts, xyz
