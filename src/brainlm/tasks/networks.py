"""Functional-network identification from BrainLM's attention: ``brainlm networks``.

BrainLM is never told which network a parcel belongs to. Here each parcel gets a feature
vector from the pretrained model, and the question is whether parcels of the same functional
network (Yeo-7) have similar vectors:

* ``cls_attention``: the CLS token's attention to the parcel (mean over its time patches) in
  every window, layer and head (the paper's feature; paper: 58.8% kNN accuracy on A424);
* ``parcel_attention``: the parcel's row (where its tokens look) and column (who looks at it)
  of the parcel-by-parcel attention, every layer and head, mean over windows;
* ``token_embedding``: the final-layer embedding of the parcel's tokens (mean over its time
  patches) in every window;
* ``latent_connectivity``: the parcel's row of the correlation between parcels' final-layer token
  vectors across windows and time patches (each parcel's mean vector removed first, which takes
  out what the coordinate embedding puts there): functional connectivity in the model's latent
  space. It can only be read from the signal's co-fluctuation, so the time-shifted control
  removes it by construction; the untrained control says what pretraining adds to it.

Each is scored by leave-one-parcel-out k-nearest-neighbour classification (the paper's
protocol) and logistic regression, and without labels by k-means with k = number of networks
(adjusted Rand index, normalised mutual information). The same is done, on the same parcels
and the same model-input signal, for baselines: the parcel's functional-connectivity profile
(row of the Fisher-z FC), its raw time series (z-scored; nearest neighbours are then the most
correlated parcels), its MNI coordinates (networks are spatially clustered, so location alone
predicts much), spectral clustering of the FC, and chance. A randomly initialised model of the
same architecture is the control that separates what pretraining learned from what the
architecture and the coordinate embedding give for free; the pretrained model on the same data
with every parcel circularly shifted in time by its own offset (co-fluctuation between parcels
removed) is the control that separates network membership read from the signal from what the
model knows about a parcel's location.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed
from sklearn.cluster import KMeans, SpectralClustering
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (accuracy_score, adjusted_rand_score, balanced_accuracy_score, confusion_matrix,
                             normalized_mutual_info_score)
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from brainlm.data.atlas import Atlas, network_order
from brainlm.errors import BrainLMInputError
from brainlm.model.brainlm import BrainLM
from brainlm.tasks.attention import extract_attention
from brainlm.tasks.model_input import ModelInput, is_model, load_model, model_inputs, random_like
from brainlm.tasks.results import Record, TaskResult
from brainlm.tasks.results_folder import parcel_table_text, publish_results, read_parcel_table
from brainlm.tasks.settings import resolve_settings
from brainlm.validation import worker_count

__all__ = ["NETWORK_FEATURES", "BASELINE_FEATURES", "NetworksResult", "NetworksSettings", "ParcelFeatures", "evaluate_features",
           "identify_networks", "network_labels", "parcel_features", "time_shifted"]

#: Feature sets read from a BrainLM model.
NETWORK_FEATURES = ("cls_attention", "parcel_attention", "token_embedding", "latent_connectivity")
#: Feature sets of the baselines, from the model's input signal and the atlas.
BASELINE_FEATURES = ("fc_profile", "raw_timeseries", "coordinates")

_DESCRIPTIONS = {
    "cls_attention": "CLS-to-parcel attention per window x layer x head",
    "parcel_attention": "parcel-by-parcel attention row and column per layer x head",
    "token_embedding": "final-layer token embedding (mean over patches) per window",
    "latent_connectivity": "row of the Fisher-z correlation between parcels' centred final-layer token "
                           "vectors over windows and patches",
    "fc_profile": "row of the mean Fisher-z functional connectivity",
    "raw_timeseries": "z-scored model-input time series (all recordings)",
    "coordinates": "MNI x, y, z of the parcel centre",
}


# -- labels ------------------------------------------------------------------------------------
def network_labels(atlas: Atlas, labels=None) -> np.ndarray:
    """The network of every parcel, checked against the atlas.

    Parameters
    ----------
    atlas : Atlas
        The parcellation of the data.
    labels : None, path, or sequence of str/None
        ``None``: the atlas' own ``networks`` (Yeo-7 for the embedded atlases). A path: a TSV/CSV
        table with columns ``name`` (the atlas' parcel names, any order, each exactly once) and
        ``network`` (empty: unlabelled); an atlas table works as it is. A sequence: one label
        per parcel in atlas order.

    Returns
    -------
    ndarray of object, shape (P,)
        Network names, ``None`` for unlabelled parcels (left out of the evaluation).
    """
    source = None
    if labels is None:
        if atlas.networks is None:
            raise BrainLMInputError(
                f"atlas {atlas.name!r} has no network labels; pass --labels, a TSV with columns "
                "name, network (one row per parcel)")
        nets = list(atlas.networks)
    elif isinstance(labels, (str, Path)):
        source = str(labels)
        nets = _labels_from_table(Path(labels), atlas)
    else:
        nets = [None if (v is None or (isinstance(v, float) and np.isnan(v)) or v == "") else str(v)
                for v in labels]
        if len(nets) != atlas.n_parcels:
            raise BrainLMInputError(f"labels have {len(nets)} entries; expected {atlas.n_parcels}, one "
                                    f"per parcel of atlas {atlas.name!r}")
    y = np.array(nets, dtype=object)
    counts = pd.Series([n for n in nets if n is not None]).value_counts()
    if (counts >= 2).sum() < 2:
        raise BrainLMInputError(
            f"labels give {dict(counts)}; expected at least two networks with two or more parcels "
            "each", source)
    return y


def _labels_from_table(path: Path, atlas: Atlas) -> list:
    if not path.is_file():
        raise BrainLMInputError("labels table not found", str(path))
    try:
        df = pd.read_csv(path, sep="," if path.suffix.lower() == ".csv" else "\t", dtype=str,
                         keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - any parser failure is a bad file
        raise BrainLMInputError(f"cannot read labels table ({e})", str(path)) from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    if "name" not in df.columns or "network" not in df.columns:
        raise BrainLMInputError(f"labels table has columns {list(df.columns)}; expected name, network",
                                str(path))
    names = df["name"].str.strip()
    dupes = names[names.duplicated()].unique().tolist()
    if dupes:
        raise BrainLMInputError(f"parcel(s) {dupes[:5]} appear more than once", str(path))
    known = set(atlas.parcel_names)
    unknown = [n for n in names if n not in known]
    missing = [n for n in atlas.parcel_names if n not in set(names)]
    if unknown or missing:
        raise BrainLMInputError(
            f"labels do not match the parcels of atlas {atlas.name!r} ({atlas.n_parcels} parcels): "
            + "; ".join(filter(None, [unknown and f"{len(unknown)} unknown name(s) {unknown[:5]}",
                                      missing and f"{len(missing)} parcel(s) without a row {missing[:5]}"])),
            str(path))
    by_name = dict(zip(names, df["network"].str.strip()))
    return [by_name[n] or None for n in atlas.parcel_names]


# -- features ----------------------------------------------------------------------------------
@dataclass
class ParcelFeatures:
    """Per-parcel feature matrices and what the figures need.

    Attributes
    ----------
    features : dict of str -> ndarray, shape (P, F)
    fc : ndarray, shape (P, P)
        Mean Pearson correlation of the model-input signal over recordings.
    parcel_attention : ndarray, shape (P, P) or None
        Parcel-by-parcel attention, mean over layers, heads and windows.
    cls_map : ndarray, shape (P,) or None
        Relative CLS attention (1 = uniform), mean over windows, layers and heads.
    n_recordings, n_windows : int
    """

    features: dict
    fc: np.ndarray
    parcel_attention: np.ndarray | None
    cls_map: np.ndarray | None
    n_recordings: int
    n_windows: int


def parcel_features(model: BrainLM | None, inputs: list[ModelInput], *, batch_size: int = 8,
                    baselines: bool = True) -> ParcelFeatures:
    """Feature matrices of every parcel from a model's attention and embeddings (``model`` may
    be None for baselines only) and, with ``baselines``, from the model-input signal.

    Parameters
    ----------
    inputs : list of ModelInput
        One atlas; each recording's windows are its deterministic tiles.
    """
    if not inputs:
        raise BrainLMInputError("no recording long enough for one model window")
    atlas = inputs[0].atlas
    p = atlas.n_parcels
    feats: dict[str, np.ndarray] = {}
    cls, emb, parcel, n_win = [], [], 0.0, 0
    if model is not None:
        for item in inputs:
            maps = extract_attention(model, item.windows, item.xyz, batch_size=batch_size,
                                     parcel_matrix=True, token_embeddings=True)
            cls.append(maps.cls)
            emb.append(maps.embeddings)
            parcel = parcel + maps.parcel * maps.n_windows
            n_win += maps.n_windows
        cls_all = np.concatenate(cls)  # [W, layers, heads, P]
        parcel = parcel / n_win  # [layers, heads, P, P]
        feats["cls_attention"] = cls_all.reshape(-1, p).T.astype(np.float64)
        feats["parcel_attention"] = np.concatenate(
            [parcel.transpose(2, 0, 1, 3).reshape(p, -1), parcel.transpose(3, 0, 1, 2).reshape(p, -1)], axis=1)
        feats["token_embedding"] = np.concatenate(emb).transpose(1, 0, 2).reshape(p, -1).astype(np.float64)
        if model.has_parcel_patch_tokens:
            feats["latent_connectivity"] = latent_connectivity(model, inputs, batch_size)
        rel = cls_all.mean(axis=(1, 2), dtype=np.float64)
        cls_map = (rel / rel.mean(axis=1, keepdims=True)).mean(axis=0)
        parcel_mean = parcel.mean(axis=(0, 1))
    else:
        cls_map = parcel_mean = None
        n_win = sum(len(i.windows) for i in inputs)
    fcs, series = [], []
    for item in inputs:
        x = item.timeseries.astype(np.float64)
        x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
        series.append(x)
        fcs.append(np.corrcoef(x, rowvar=False))
    fc = np.nan_to_num(np.mean(fcs, axis=0))
    if baselines:
        z = np.arctanh(np.clip(np.stack(fcs), -0.999999, 0.999999)).mean(0)
        np.fill_diagonal(z, 0.0)
        feats["fc_profile"] = np.nan_to_num(z)
        feats["raw_timeseries"] = np.concatenate(series).T
        feats["coordinates"] = atlas.xyz.astype(np.float64)
    return ParcelFeatures(features=feats, fc=fc, parcel_attention=parcel_mean, cls_map=cls_map,
                          n_recordings=len(inputs), n_windows=n_win)


@torch.no_grad()
def latent_connectivity(model: BrainLM, inputs: list[ModelInput], batch_size: int = 8) -> np.ndarray:
    """(P, P) float64: Fisher-z correlation between parcels' final-layer token vectors, with
    nothing masked. Each token is a sample (window x time patch, over every recording); a
    parcel's sample is its D-vector minus the parcel's mean vector, and two parcels correlate as
    the cosine of their concatenated centred samples. Streamed: memory does not grow with the
    number of windows. Diagonal 0."""
    model.eval()
    dev = next(model.parameters()).device
    p = inputs[0].atlas.n_parcels
    gram = torch.zeros(p, p, dtype=torch.float64)
    total = None
    count = 0
    for item in inputs:
        xyz = item.xyz.to(dev)
        for i in range(0, len(item.windows), batch_size):
            x = item.windows[i:i + batch_size].to(dev)
            h = model.forward_encoder(x, xyz.expand(len(x), -1, -1), None).latent[:, 1:].double().cpu()
            h = h.reshape(len(x), p, -1, h.shape[-1]).transpose(0, 1).reshape(p, -1, h.shape[-1])  # [P, S, D]
            gram += torch.einsum("psd,qsd->pq", h, h)
            total = h.sum(1) if total is None else total + h.sum(1)  # [P, D]
            count += h.shape[1]
    mean = total / count
    centred = gram - count * (mean @ mean.T)
    norm = torch.sqrt(torch.clamp(torch.diagonal(centred), min=1e-12))
    r = (centred / norm[:, None] / norm[None, :]).numpy()
    z = np.arctanh(np.clip(r, -0.999999, 0.999999))
    np.fill_diagonal(z, 0.0)
    return z


def time_shifted(inputs: list[ModelInput], *, seed: int = 0) -> list[ModelInput]:
    """The same recordings with each parcel circularly shifted in time by its own random offset.

    Parameters
    ----------
    inputs : list of ModelInput
        Each recording's windows are consecutive tiles, so they are shifted end to end
        (``W * window_trs`` TRs) and cut into the same tiles again.

    Returns
    -------
    list of ModelInput, same shapes; offsets uniform in [T/4, 3T/4] TRs, seeded.
    """
    rng = np.random.default_rng(seed)
    out = []
    for item in inputs:
        w, t, p = item.windows.shape
        x = item.timeseries
        total = w * t
        offsets = rng.integers(total // 4, 3 * total // 4 + 1, size=p)
        rows = (np.arange(total)[:, None] - offsets[None, :]) % total
        shifted = np.take_along_axis(x, rows, axis=0).reshape(w, t, p)
        out.append(ModelInput(ids=dict(item.ids), windows=torch.from_numpy(np.ascontiguousarray(shifted)),
                              xyz=item.xyz, atlas=item.atlas))
    return out


# -- evaluation --------------------------------------------------------------------------------
def evaluate_features(x: np.ndarray, y: np.ndarray, *, n_neighbors: int = 5, seed: int = 0,
                      n_clusters: int | None = None) -> dict:
    """Leave-one-parcel-out kNN and logistic regression, and k-means clustering.

    Parameters
    ----------
    x : ndarray, shape (n, F)
        Features of the labelled parcels (standardised per feature over these parcels).
    y : ndarray, shape (n,)
        Network labels.
    n_neighbors : int
        k of the kNN classifier (Euclidean distance on standardised features).
    n_clusters : int, optional
        k-means clusters (default: the number of networks).

    Returns
    -------
    dict with ``knn_accuracy``, ``knn_balanced_accuracy``, ``logreg_accuracy``,
    ``logreg_balanced_accuracy``, ``kmeans_ari``, ``kmeans_nmi`` and the predictions
    ``knn_predicted``, ``logreg_predicted``, ``kmeans_cluster`` (lists, order of ``y``).
    """
    y = np.asarray(y).astype(str)
    # Features are standardised over all parcels (no labels involved) and rotated onto their
    # principal axes, keeping every component: Euclidean distances (kNN, k-means) are unchanged,
    # and so is the L2-penalised logistic regression, whose solution lies in the span of the
    # centred training parcels. Every fit then works in at most n dimensions instead of thousands.
    k = n_clusters or len(set(y))
    # Single-threaded BLAS/OpenMP: the matrices are tiny, and thread start-up and contention on a
    # shared CPU made each fit 10x slower.
    with threadpool_limits(1):
        z = PCA().fit_transform(StandardScaler().fit_transform(x))
        loo = LeaveOneOut()
        knn_pred = cross_val_predict(KNeighborsClassifier(n_neighbors=n_neighbors), z, y, cv=loo)
        lr_pred = cross_val_predict(LogisticRegression(C=1.0, solver="newton-cg", max_iter=1000), z, y, cv=loo)
        clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(z)
    return {
        "knn_accuracy": float(accuracy_score(y, knn_pred)),
        "knn_balanced_accuracy": float(balanced_accuracy_score(y, knn_pred)),
        "logreg_accuracy": float(accuracy_score(y, lr_pred)),
        "logreg_balanced_accuracy": float(balanced_accuracy_score(y, lr_pred)),
        "kmeans_ari": float(adjusted_rand_score(y, clusters)),
        "kmeans_nmi": float(normalized_mutual_info_score(y, clusters)),
        "knn_predicted": knn_pred.tolist(), "logreg_predicted": lr_pred.tolist(),
        "kmeans_cluster": clusters.tolist(),
    }


def spectral_clusters(affinity: np.ndarray, y: np.ndarray, *, seed: int = 0) -> dict:
    """Spectral clustering of a parcel affinity (negative entries set to 0), k = number of
    networks, scored by ARI and NMI against ``y``."""
    a = np.clip((affinity + affinity.T) / 2, 0, None)
    np.fill_diagonal(a, 0.0)
    k = len(set(y))
    labels = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed,
                                assign_labels="cluster_qr").fit_predict(a)
    return {"ari": float(adjusted_rand_score(y, labels)), "nmi": float(normalized_mutual_info_score(y, labels)),
            "cluster": labels.tolist()}


def chance_levels(y: np.ndarray, *, n_permutations: int = 200, seed: int = 0) -> dict:
    """Accuracy of always predicting the largest network, expected accuracy of guessing with the
    network frequencies, and the NMI (mean, 95th percentile) of clusterings with the sizes of
    the true networks shuffled over parcels (chance NMI is above 0 for few parcels)."""
    y = np.asarray(y).astype(str)
    share = pd.Series(y).value_counts(normalize=True)
    rng = np.random.default_rng(seed)
    nmi = np.array([normalized_mutual_info_score(y, rng.permutation(y)) for _ in range(n_permutations)])
    return {"majority_accuracy": float(share.max()), "majority_network": str(share.idxmax()),
            "stratified_accuracy": float((share ** 2).sum()), "balanced_accuracy": 1.0 / len(share),
            "ari": 0.0, "nmi_mean": float(nmi.mean()), "nmi_95th": float(np.quantile(nmi, 0.95))}


# -- the task ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworksSettings:
    """How :func:`identify_networks` reads the data and scores the features.

    Attributes
    ----------
    labels : None, path or sequence
        Network labels (see :func:`network_labels`); default: the atlas' networks.
    transfer_atlas : bool
        Allow an atlas other than the checkpoint's.
    target_tr : float, optional
        For ``Recording`` input on another atlas: resample to this TR (seconds).
    tr, orientation, key :
        How to read plain files (see :func:`brainlm.tasks.model_input.model_inputs`).
    n_neighbors : int
        k of the kNN classifier.
    max_recordings : int, optional
        Use the first N recordings only (memory: token embeddings are kept per window).
    untrained_control : bool
        Also score a randomly initialised model of the same architecture (seeded by ``seed``).
    shifted_control : bool
        Also score the pretrained model on the same recordings with every parcel's time series
        circularly shifted by its own random offset (a quarter to three quarters of the run).
        This keeps each parcel's own signal but removes its co-fluctuation with the other
        parcels, the thing functional networks are made of. Features that classify networks as
        well as before read the parcel's location (through the coordinate embedding) or its
        own dynamics, not network membership from the signal.
    batch_size, device : forward passes.
    seed : int
        Seeds the controls, k-means and spectral clustering.
    jobs : int
        Feature sets scored at once, each in its own process (-1: all cores). The
        leave-one-parcel-out logistic regressions dominate the run time (77% of it for 424
        parcels); the numbers do not depend on ``jobs``.
    """

    labels: object = None
    transfer_atlas: bool = False
    target_tr: float | None = None
    n_neighbors: int = 5
    max_recordings: int | None = None
    untrained_control: bool = True
    shifted_control: bool = True
    batch_size: int = 8
    device: str = "cpu"
    seed: int = 0
    tr: float | None = None
    orientation: str = "auto"
    key: str | None = None
    jobs: int = 1

    def __post_init__(self) -> None:
        if self.n_neighbors < 1:
            raise BrainLMInputError(f"n_neighbors is {self.n_neighbors}; expected an integer >= 1")
        if self.max_recordings is not None and self.max_recordings < 1:
            raise BrainLMInputError(f"max_recordings is {self.max_recordings}; expected an integer >= 1")
        worker_count(self.jobs)


@dataclass(frozen=True)
class NetworkScores(Record):
    """One feature set of one model, scored against the network labels (leave one parcel out)."""

    model: str
    features: str
    description: str
    dims: int
    knn_accuracy: float
    knn_balanced_accuracy: float
    logreg_accuracy: float
    logreg_balanced_accuracy: float
    kmeans_ari: float
    kmeans_nmi: float


@dataclass(frozen=True)
class ChanceLevels(Record):
    """Chance levels of the labelled parcels' networks (see :func:`chance_levels`)."""

    majority_accuracy: float
    majority_network: str
    stratified_accuracy: float
    balanced_accuracy: float
    ari: float
    nmi_mean: float
    nmi_95th: float


@dataclass(frozen=True)
class ClusterScores(Record):
    """Agreement of a clustering with the network labels."""

    ari: float
    nmi: float


@dataclass(frozen=True)
class NetworksResult(TaskResult):
    """What :func:`identify_networks` returns and writes as ``networks.json``: ``methods`` (one
    row per model and feature set), ``spectral`` (FC and attention), ``chance``, the confusion
    matrices of the paper's protocol and of the FC baseline, and the data and settings."""

    KIND: ClassVar[str] = "networks"

    task: str
    checkpoint: str | None
    data: object
    atlas: str
    parcels: int
    labelled_parcels: int
    unlabelled_parcels: list[str]
    labels: str
    networks: dict[str, int]
    recordings: int
    windows: int
    settings: dict
    methods: list[NetworkScores]
    spectral: dict[str, ClusterScores]
    chance: ChanceLevels
    confusion: dict
    seconds: float

    def method(self, model: str, features: str) -> NetworkScores | None:
        """The row of ``model`` (e.g. ``"BrainLM"``) and ``features``, or None when not scored."""
        return next((m for m in self.methods if m.model == model and m.features == features), None)

    def baseline(self, features: str) -> NetworkScores | None:
        """The baseline row of ``features`` (e.g. ``"fc_profile"``), or None."""
        return next((m for m in self.methods if m.features == features), None)


def identify_networks(checkpoint, data, out=None, settings: NetworksSettings | None = None,
                      **options) -> NetworksResult:
    """Identify functional networks from a pretrained BrainLM; see the module docstring.

    Parameters
    ----------
    checkpoint : path or BrainLM
        A checkpoint folder (``RUN/model``) or a loaded model.
    data : path, list of paths, or list of Recording
        See :func:`brainlm.tasks.model_input.model_inputs` (corpus, files, or recordings).
    out : path, optional
        Folder to write (replaced atomically when complete): ``networks.json``, ``networks.md``
        and ``parcels.tsv``. Numbers only: the figures are drawn from these files by
        :func:`brainlm.report.attention_figures.draw_network_folder` (``brainlm networks`` does).
    settings : NetworksSettings, optional
        Or its fields as keywords (``n_neighbors=3``), not both.

    Returns
    -------
    NetworksResult
    """
    t0 = time.perf_counter()
    s = resolve_settings(NetworksSettings, settings, options)
    model = load_model(checkpoint, s.device)
    inputs, y_all = _network_inputs(model, data, s)
    atlas = inputs[0].atlas
    labelled = np.array([n is not None for n in y_all])
    y = y_all[labelled].astype(str)
    if s.n_neighbors >= labelled.sum():
        raise BrainLMInputError(f"n_neighbors is {s.n_neighbors} but only {labelled.sum()} parcels are labelled")
    trained, control, sets = _feature_sets(model, inputs, s)
    score = delayed(evaluate_features)
    scored = Parallel(n_jobs=s.jobs)(score(x[labelled], y, n_neighbors=s.n_neighbors, seed=s.seed)
                                     for _, _, x in sets)
    rows, predictions = [], {}
    for (model_name, name, x), r in zip(sets, scored):
        predictions[f"{model_name}: {name}"] = r
        rows.append({"model": model_name, "features": name, "description": _DESCRIPTIONS[name],
                     "dims": int(x.shape[1]), **{k: v for k, v in r.items() if not k.endswith(("predicted", "cluster"))}})
    spectral = {"baseline: fc": spectral_clusters(trained.fc[np.ix_(labelled, labelled)], y, seed=s.seed),
                "BrainLM: parcel_attention": spectral_clusters(
                    trained.parcel_attention[np.ix_(labelled, labelled)], y, seed=s.seed)}
    if control is not None:
        spectral["BrainLM untrained: parcel_attention"] = spectral_clusters(
            control.parcel_attention[np.ix_(labelled, labelled)], y, seed=s.seed)
    order = network_order(y)
    paper = predictions["BrainLM: cls_attention"]["knn_predicted"]
    fc_pred = predictions["baseline: fc_profile"]["knn_predicted"]
    result = NetworksResult.from_json({
        "task": "network identification",
        "checkpoint": None if is_model(checkpoint) else str(checkpoint),
        "data": _describe(data), "atlas": atlas.name, "parcels": int(atlas.n_parcels),
        "labelled_parcels": int(labelled.sum()),
        "unlabelled_parcels": [atlas.parcel_names[i] for i in np.flatnonzero(~labelled)],
        "labels": "atlas networks" if s.labels is None else (str(s.labels) if isinstance(s.labels, (str, Path))
                                                             else "given"),
        "networks": {n: int((y == n).sum()) for n in order},
        "recordings": trained.n_recordings, "windows": trained.n_windows,
        "settings": _settings_record(model, s),
        "methods": rows,
        "spectral": {k: {"ari": v["ari"], "nmi": v["nmi"]} for k, v in spectral.items()},
        "chance": chance_levels(y, seed=s.seed),
        "confusion": {
            "labels": order,
            "BrainLM: cls_attention (kNN)": confusion_matrix(y, paper, labels=order).tolist(),
            "baseline: fc_profile (kNN)": confusion_matrix(y, fc_pred, labels=order).tolist()},
        "seconds": round(time.perf_counter() - t0, 1),
    })
    if out is not None:
        _write(result, _parcel_table(atlas, y_all, labelled, predictions, trained.cls_map), out)
    return result


def _network_inputs(model, data, s: NetworksSettings) -> tuple[list[ModelInput], np.ndarray]:
    """The model inputs (at most ``max_recordings``) and every parcel's network label (None:
    unlabelled). Labels are checked before the model runs, so a wrong table fails at once."""
    inputs = []
    for item in model_inputs(model, data, transfer_atlas=s.transfer_atlas, target_tr=s.target_tr, tr=s.tr,
                             orientation=s.orientation, key=s.key):
        if not inputs:
            y_all = network_labels(item.atlas, s.labels)
        inputs.append(item)
        if s.max_recordings is not None and len(inputs) >= s.max_recordings:
            break
    if not inputs:
        raise BrainLMInputError("no recording is long enough for one model window "
                                f"({model.config.window_trs} TRs)", _describe(data))
    return inputs, y_all


def _feature_sets(model, inputs: list[ModelInput], s: NetworksSettings):
    """The trained model's features, the untrained control's (or None), and every
    (model name, feature name, (P, D) features) set to score, baselines last."""
    trained = parcel_features(model, inputs, batch_size=s.batch_size)
    # The image ViT-MAE has no per-parcel tokens, hence no latent connectivity.
    sets = [("BrainLM", name, trained.features[name]) for name in NETWORK_FEATURES if name in trained.features]
    control = None
    if s.untrained_control:
        control = parcel_features(random_like(model, s.seed), inputs, batch_size=s.batch_size, baselines=False)
        sets += [("BrainLM untrained", name, control.features[name]) for name in NETWORK_FEATURES
                 if name in control.features]
    if s.shifted_control:
        shifted = parcel_features(model, time_shifted(inputs, seed=s.seed), batch_size=s.batch_size,
                                  baselines=False)
        sets += [("BrainLM, time-shifted input", name, shifted.features[name]) for name in NETWORK_FEATURES
                 if name in shifted.features]
    sets += [("baseline", name, trained.features[name]) for name in BASELINE_FEATURES]
    return trained, control, sets


def _settings_record(model, s: NetworksSettings) -> dict:
    """The settings as ``networks.json`` records them."""
    return {"n_neighbors": s.n_neighbors, "knn_metric": "euclidean on standardised features",
            "standardisation": "per feature over the labelled parcels (label-free)",
            "logreg": "multinomial, L2, C=1, standardised features", "cv": "leave one parcel out",
            "kmeans": "k = number of networks, 10 initialisations", "seed": s.seed,
            "transfer_atlas": s.transfer_atlas, "max_recordings": s.max_recordings,
            "controls": {"untrained": "same architecture, random weights" if s.untrained_control else None,
                         "time-shifted input": "each parcel circularly shifted by its own random "
                         "offset (co-fluctuation removed)" if s.shifted_control else None},
            "model": model.config.to_dict()}


def _parcel_table(atlas: Atlas, y_all: np.ndarray, labelled: np.ndarray, predictions: dict,
                  cls_map: np.ndarray) -> pd.DataFrame:
    """``parcels.tsv``: each parcel's centre, network, kNN predictions and relative CLS attention."""
    table = pd.DataFrame({"parcel": atlas.parcel_names, "x": atlas.xyz[:, 0], "y": atlas.xyz[:, 1],
                          "z": atlas.xyz[:, 2], "network": [n or "" for n in y_all]})
    for tag, r in predictions.items():
        if tag.startswith(("BrainLM: ", "baseline: fc_profile")):
            col = np.full(atlas.n_parcels, "", dtype=object)
            col[labelled] = r["knn_predicted"]
            table[f"knn[{tag}]"] = col
    table["relative_cls_attention"] = cls_map
    return table


def _describe(data) -> str | list:
    if isinstance(data, (str, Path)):
        return str(data)
    items = list(data) if not hasattr(data, "timeseries") else [data]
    return [str(d) if isinstance(d, (str, Path)) else getattr(d, "id", type(d).__name__) for d in items]


def markdown(result: dict) -> str:
    """The result as Markdown: methods table, spectral clustering and chance."""
    r = result
    lines = [f"# Network identification: {r['atlas']} ({r['labelled_parcels']} labelled parcels, "
             f"{len(r['networks'])} networks)", "",
             f"Data: {r['recordings']} recording(s), {r['windows']} window(s). Networks: "
             + ", ".join(f"{k} {v}" for k, v in r["networks"].items())
             + f". Leave-one-parcel-out, kNN k = {r['settings']['n_neighbors']}.", "",
             "| model | features | dims | kNN acc | kNN bal. acc | logreg acc | logreg bal. acc | k-means ARI | k-means NMI |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in r["methods"]:
        lines.append(f"| {m['model']} | {m['features']} | {m['dims']} | {m['knn_accuracy']:.3f} | "
                     f"{m['knn_balanced_accuracy']:.3f} | {m['logreg_accuracy']:.3f} | "
                     f"{m['logreg_balanced_accuracy']:.3f} | {m['kmeans_ari']:.3f} | {m['kmeans_nmi']:.3f} |")
    c = r["chance"]
    lines.append(f"| chance | majority ({c['majority_network']}) / stratified guess | | "
                 f"{c['majority_accuracy']:.3f} / {c['stratified_accuracy']:.3f} | {c['balanced_accuracy']:.3f} | "
                 f"{c['majority_accuracy']:.3f} / {c['stratified_accuracy']:.3f} | {c['balanced_accuracy']:.3f} | "
                 f"0 | {c['nmi_mean']:.3f} (95th pct {c['nmi_95th']:.3f}) |")
    lines += ["", "| spectral clustering of | ARI | NMI |", "|---|---|---|"]
    lines += [f"| {k} | {v['ari']:.3f} | {v['nmi']:.3f} |" for k, v in r["spectral"].items()]
    if r["unlabelled_parcels"]:
        lines += ["", f"Unlabelled parcels (left out): {', '.join(r['unlabelled_parcels'])}."]
    return "\n".join(lines) + "\n"


def read_parcels(path: str | Path) -> pd.DataFrame:
    """A saved ``parcels.tsv`` (one row per parcel), with empty network and prediction cells
    (unlabelled parcels) kept as empty strings."""
    return read_parcel_table(path, ("parcel", "x", "y", "z", "network", "knn[BrainLM: cls_attention]",
                                    "relative_cls_attention"), numeric=("relative_cls_attention",))


def _write(result: NetworksResult, table: pd.DataFrame, out) -> None:
    """``networks.json``, ``networks.md`` and ``parcels.tsv`` in ``out``, published whole."""
    publish_results(out, {"parcels.tsv": parcel_table_text(table), "networks.md": markdown(result),
                          "networks.json": result.dumps(indent=2)})
