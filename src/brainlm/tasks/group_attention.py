"""Group differences in attention: ``brainlm attention CHECKPOINT CORPUS --group-by COLUMN``.

For every recording, the CLS token's attention to each parcel (mean over the parcel's time
patches, the windows, and the chosen layers and heads) is expressed relative to its uniform
value (1 = the parcel gets its share), so recordings whose CLS token attends more to itself stay
comparable. Recordings are averaged per subject (the exchangeable unit of a between-subject
design; ``unit="recording"`` when recordings are independent). Two groups are compared parcel
by parcel with a studentised (Welch t) permutation test of the group labels, exact when the
number of distinct labellings is at most ``n_permutations``, and Benjamini-Hochberg FDR over
parcels. Per network, the mean t and a set-shift test: do the network's parcels rank, as a
set, higher or lower in t than random sets of as many parcels? (Parcels are exchanged
independently, so spatial autocorrelation is ignored; read it as descriptive.) The same test on each parcel's FC strength
(mean Fisher-z correlation with all other parcels) is the baseline.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from brainlm.data.atlas import Atlas, network_order
from brainlm.data.corpus import Corpus
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.tasks.attention import extract_attention
from brainlm.tasks.model_input import is_model, load_model, model_inputs
from brainlm.tasks.results import Record, TaskResult
from brainlm.tasks.results_folder import parcel_table_text, publish_results, read_parcel_table
from brainlm.tasks.settings import resolve_settings

__all__ = ["GroupAttentionResult", "GroupAttentionSettings", "group_attention", "parcel_set_enrichment", "permutation_test", "welch_t"]


def welch_t(x: np.ndarray, in_b: np.ndarray) -> np.ndarray:
    """Welch t of group B minus group A for every column and every labelling.

    Parameters
    ----------
    x : ndarray, shape (n, P)
        One row per unit (subject or recording).
    in_b : ndarray of bool, shape (n,) or (M, n)
        Membership of group B for one labelling or M labellings.

    Returns
    -------
    ndarray, shape (P,) or (M, P)
    """
    g = np.atleast_2d(in_b).astype(np.float64)
    nb = g.sum(axis=1, keepdims=True)
    na = g.shape[1] - nb
    s1, s2 = g @ x, g @ (x * x)
    t1, t2 = x.sum(axis=0), (x * x).sum(axis=0)
    mb, ma = s1 / nb, (t1 - s1) / na
    vb = np.clip((s2 - nb * mb ** 2) / (nb - 1), 0, None)
    va = np.clip((t2 - s2 - na * ma ** 2) / (na - 1), 0, None)
    se = np.sqrt(vb / nb + va / na)
    t = np.divide(mb - ma, se, out=np.zeros_like(se), where=se > 0)
    return t[0] if np.ndim(in_b) == 1 else t


def permutation_test(x: np.ndarray, in_b: np.ndarray, *, n_permutations: int = 5000, seed: int = 0,
                     chunk: int = 1000) -> dict:
    """Two-sided permutation test of the group labels, per column, studentised (Welch t).

    Exact (every distinct labelling with the same group sizes) when there are at most
    ``n_permutations`` of them, else ``n_permutations`` random labellings with
    ``p = (1 + #{|t*| >= |t|}) / (1 + n_permutations)``.

    Returns
    -------
    dict with ``t`` and ``p`` (ndarray, shape (P,)), ``n_permutations`` (labellings used),
    ``exact`` (bool).
    """
    x = np.asarray(x, dtype=np.float64)
    in_b = np.asarray(in_b, dtype=bool)
    n, nb = len(in_b), int(in_b.sum())
    t_obs = welch_t(x, in_b)
    exceed = np.zeros(x.shape[1])
    exact = math.comb(n, nb) <= n_permutations
    if exact:
        labellings = _all_labellings(n, nb)
        total = len(labellings)
    else:
        rng = np.random.default_rng(seed)
        total = n_permutations
    done = 0
    while done < total:
        m = min(chunk, total - done)
        g = labellings[done:done + m] if exact else np.stack([rng.permutation(in_b) for _ in range(m)])
        exceed += (np.abs(welch_t(x, g)) >= np.abs(t_obs) - 1e-12).sum(axis=0)
        done += m
    p = exceed / total if exact else (1 + exceed) / (1 + total)
    return {"t": t_obs, "p": np.clip(p, 0, 1), "n_permutations": int(total), "exact": bool(exact)}


def _all_labellings(n: int, nb: int) -> np.ndarray:
    out = np.zeros((math.comb(n, nb), n), dtype=bool)
    for i, members in enumerate(combinations(range(n), nb)):
        out[i, list(members)] = True
    return out


def _smallest_p(n: int, nb: int, n_permutations: int) -> float:
    """The smallest two-sided p-value the test can give (mirror labellings tie when sizes match)."""
    distinct = math.comb(n, nb)
    if distinct <= n_permutations:
        return (2 if 2 * nb == n else 1) / distinct
    return 1 / (1 + n_permutations)


def parcel_set_enrichment(values: np.ndarray, members: np.ndarray, *, alternative: str = "two-sided",
                          n_permutations: int = 10000, seed: int = 0) -> dict:
    """Do the ``members`` parcels rank differently in ``values`` than random parcel sets of that size?

    The statistic is the members' mean rank as a percentile of all parcels (0.5 expected by
    chance); its null distribution comes from random sets of as many parcels. Ranks make it
    robust to a few extreme parcels; parcels are exchanged independently, so spatial
    autocorrelation is not modelled.

    Parameters
    ----------
    values : ndarray, shape (P,)
        E.g. the t map of a group difference.
    members : ndarray of bool, shape (P,)
    alternative : {"two-sided", "greater", "less"}
        "two-sided": the set is shifted up or down as a whole; "greater": it ranks higher.

    Returns
    -------
    dict: ``mean_percentile``, ``p`` (``(1 + #as extreme) / (1 + n_permutations)``), ``n``.
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise BrainLMInputError(f"alternative is {alternative!r}; expected 'two-sided', 'greater' or 'less'")
    v = np.asarray(values, dtype=np.float64)
    members = np.asarray(members, dtype=bool)
    k, p = int(members.sum()), v.size
    if k == 0 or k == p:
        return {"mean_percentile": float("nan"), "p": float("nan"), "n": k}
    pct = (pd.Series(v).rank(method="average").to_numpy() - 0.5) / p
    obs = pct[members].mean()
    rng = np.random.default_rng(seed)
    # Each row of a random ordering of the parcels: its first k entries are a random set of k.
    null = np.empty(n_permutations)
    for start in range(0, n_permutations, 1000):
        m = min(1000, n_permutations - start)
        draws = np.argsort(rng.random((m, p)), axis=1)[:, :k]
        null[start:start + m] = pct[draws].mean(axis=1)
    if alternative == "two-sided":
        hits = np.abs(null - 0.5) >= abs(obs - 0.5) - 1e-12
    elif alternative == "greater":
        hits = null >= obs - 1e-12
    else:
        hits = null <= obs + 1e-12
    return {"mean_percentile": float(obs), "p": float((1 + hits.sum()) / (1 + n_permutations)), "n": k}


# -- data --------------------------------------------------------------------------------------
def _group_table(data, group_by: str) -> tuple[pd.DataFrame, str]:
    """(recording_id, subject, group value) for every recording, and a description of the data."""
    if isinstance(data, Recording):
        data = [data]
    if isinstance(data, (str, Path)) or (isinstance(data, list) and len(data) == 1
                                         and isinstance(data[0], (str, Path))):
        path = Path(data if isinstance(data, (str, Path)) else data[0])
        if not (path / "corpus.json").is_file():
            raise BrainLMInputError("not a prepared corpus (corpus.json missing); the group column is "
                                    "read from the corpus manifest", str(path))
        corpus = Corpus(path)
        m = corpus.manifest
        if group_by not in m.columns or group_by in ("recording_id", "source", "split"):
            raise BrainLMInputError(f"corpus has no column {group_by!r}; phenotype columns: "
                                    f"{corpus.phenotype_columns}, ids: subject, session, task, run, site",
                                    str(path))
        return pd.DataFrame({"recording_id": m["recording_id"], "subject": m["subject"],
                             "group": m[group_by]}), str(path)
    recs = list(data)
    if not recs or not all(isinstance(r, Recording) for r in recs):
        raise BrainLMInputError("data must be a prepared corpus or a list of Recording objects")
    rows = []
    for r in recs:
        value = r.phenotypes.get(group_by, getattr(r, group_by, None) if group_by in
                                 ("session", "task", "run", "site") else None)
        rows.append({"recording_id": r.id, "subject": r.subject, "group": value})
    if all(row["group"] is None for row in rows):
        raise BrainLMInputError(f"no recording has a phenotype {group_by!r}")
    return pd.DataFrame(rows), f"{len(recs)} recordings"


def _choose_groups(table: pd.DataFrame, group_by: str, groups, unit: str, n_permutations: int,
                   alpha: float, source: str) -> tuple[pd.DataFrame, list[str]]:
    t = table.copy()
    t["group"] = t["group"].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v))
                                else (str(int(v)) if isinstance(v, (float, np.floating)) and float(v).is_integer()
                                      else str(v)))
    missing = int(t["group"].isna().sum())
    t = t.dropna(subset=["group"])
    levels = sorted(t["group"].unique(), key=_natural)
    if groups is None:
        if len(levels) < 2:
            raise BrainLMInputError(
                f"column {group_by!r} has {len(levels)} level(s) {levels} among the recordings"
                f"{f' ({missing} missing)' if missing else ''}; expected two groups to compare", source)
        if len(levels) > 2:
            raise BrainLMInputError(
                f"column {group_by!r} has {len(levels)} levels ({levels[:8]}{' ...' if len(levels) > 8 else ''}); "
                "expected two: choose them with --groups A,B (groups=[A, B])", source)
        chosen = levels
    else:
        chosen = [str(g) for g in groups]
        if len(chosen) != 2 or chosen[0] == chosen[1]:
            raise BrainLMInputError(f"groups is {groups!r}; expected two different levels of {group_by!r}", source)
        absent = [g for g in chosen if g not in levels]
        if absent:
            raise BrainLMInputError(f"group(s) {absent} not found in column {group_by!r}; levels: {levels[:20]}",
                                    source)
    t = t[t["group"].isin(chosen)]
    if unit == "subject":
        per = t.groupby("subject")["group"].nunique()
        mixed = per[per > 1].index.tolist()
        if mixed:
            raise BrainLMInputError(
                f"subject(s) {mixed[:5]} have recordings in both groups of {group_by!r}; a between-subject "
                "test needs one group per subject (use unit='recording' / --unit recording for "
                "independent recordings)", source)
    counts = {g: int(t.loc[t["group"] == g, unit if unit == "subject" else "recording_id"].nunique()) for g in chosen}
    n, nb = sum(counts.values()), counts[chosen[1]]
    if min(counts.values()) < 3 or _smallest_p(n, nb, n_permutations) > alpha:
        raise BrainLMInputError(
            f"too few {unit}s per group for the permutation test: "
            + ", ".join(f"{group_by}={g}: {c}" for g, c in counts.items())
            + f"; need at least 3 per group and enough to reach p < {alpha} "
            f"(smallest attainable p here: {_smallest_p(n, nb, n_permutations):.3g})", source)
    return t, chosen


def _natural(v: str):
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


# -- the task ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupAttentionSettings:
    """How :func:`group_attention` compares two groups.

    Attributes
    ----------
    groups : (A, B), optional
        The two levels to compare; the difference is B - A (default: sorted levels).
    unit : {"subject", "recording"}
        What the labels are permuted over.
    layers : list of int, optional
        Encoder layers to average (default: all), heads always all.
    n_permutations : int
        Random labellings (exact enumeration when fewer distinct labellings exist).
    alpha : float
        FDR level for ``significant``.
    transfer_atlas, target_tr :
        Another atlas than the checkpoint's; for ``Recording`` input, resample to this TR (s).
    fc_baseline : bool
        Run the same test on each parcel's FC strength.
    parcel_sets : dict of str -> bool array (P,), optional
        Hypothesis sets (e.g. the parcels a known effect alters) scored like the networks: mean
        t, mean t percentile and the two-sided set-shift p (:func:`parcel_set_enrichment`).
    batch_size, device : forward passes.
    seed : int
        Seeds the permutations.
    """

    groups: tuple | None = None
    unit: str = "subject"
    layers: tuple[int, ...] | None = None
    n_permutations: int = 5000
    alpha: float = 0.05
    transfer_atlas: bool = False
    target_tr: float | None = None
    fc_baseline: bool = True
    parcel_sets: dict | None = None
    batch_size: int = 8
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.unit not in ("subject", "recording"):
            raise BrainLMInputError(f"unit is {self.unit!r}; expected 'subject' or 'recording'")
        if self.n_permutations < 1 or not 0 < self.alpha < 1:
            raise BrainLMInputError("n_permutations must be >= 1 and alpha in (0, 1)")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))


@dataclass(frozen=True)
class NetworkShift(Record):
    """The group difference summarised over one network's parcels."""

    network: str
    parcels: int
    mean_difference: float
    mean_t: float
    significant_parcels: int
    t_mean_percentile: float
    shift_p: float


@dataclass(frozen=True)
class SetShift(Record):
    """The group difference summarised over one hypothesis set of parcels."""

    set: str
    parcels: int
    mean_t: float
    t_mean_percentile: float
    shift_p: float


@dataclass(frozen=True)
class PermutationCount(Record):
    """How many labellings the permutation test drew, and whether they were all of them."""

    n: int
    exact: bool


@dataclass(frozen=True)
class GroupAttentionResult(TaskResult):
    """What :func:`group_attention` returns and writes as ``group_attention.json``. The maps
    compared are ``attention`` and, with the FC baseline, ``fc_strength``: ``permutations``,
    ``significant`` (parcels with q < alpha), ``networks`` and ``parcel_sets`` are keyed by them."""

    KIND: ClassVar[str] = "group_attention"

    task: str
    checkpoint: str | None
    data: object
    atlas: str
    parcels: int
    group_by: str
    groups: dict[str, str]
    difference: str
    unit: str
    n: dict[str, dict]
    settings: dict
    permutations: dict[str, PermutationCount]
    significant: dict[str, int]
    networks: dict[str, list[NetworkShift]]
    parcel_sets: dict[str, list[SetShift]]
    parcels_table: dict
    seconds: float


def group_attention(checkpoint, data, group_by: str, out=None, settings: GroupAttentionSettings | None = None,
                    **options) -> GroupAttentionResult:
    """Mean CLS attention per parcel per group, the difference map and its permutation test.

    Parameters
    ----------
    checkpoint : path or BrainLM
    data : corpus path, or list of Recording (group from ``phenotypes[group_by]``)
    group_by : str
        A manifest/phenotype column with two levels (or more, with ``groups``).
    out : path, optional
        Folder to write (replaced atomically when complete): ``group_attention.json``,
        ``group_attention.md``, ``parcels.tsv`` and ``recordings.parquet``. Numbers only: the
        figures are drawn from these files by
        :func:`brainlm.report.attention_figures.draw_group_folder` (``brainlm attention`` does).
    settings : GroupAttentionSettings, optional
        Or its fields as keywords (``unit="recording"``), not both.

    Returns
    -------
    GroupAttentionResult
    """
    t0 = time.perf_counter()
    s = resolve_settings(GroupAttentionSettings, settings, options)
    table, source = _group_table(data, group_by)
    table, chosen = _choose_groups(table, group_by, s.groups, s.unit, s.n_permutations, s.alpha, source)
    model = load_model(checkpoint, s.device)
    _check_layers(model, s.layers)
    rows, atlas = _recording_maps(model, data, set(table["recording_id"]), s)
    table = table[table["recording_id"].isin(rows)]
    if atlas is None or table.empty:
        raise BrainLMInputError("no recording of the two groups is long enough for one model window", source)
    # Recordings too short for a window drop out: the group sizes are checked again.
    table, chosen = _choose_groups(table, group_by, chosen, s.unit, s.n_permutations, s.alpha, source)

    key = "subject" if s.unit == "subject" else "recording_id"
    units = table.groupby(key, sort=True).agg(group=("group", "first"), recordings=("recording_id", list))
    in_b = (units["group"] == chosen[1]).to_numpy()
    result_maps = {}
    for what in ("attention", "fc_strength") if s.fc_baseline else ("attention",):
        x = np.stack([np.mean([rows[r][what] for r in recs], axis=0) for recs in units["recordings"]])
        result_maps[what] = _compare(x, in_b, s.n_permutations, s.alpha, s.seed)
    nets = list(atlas.networks) if atlas.networks is not None else [None] * atlas.n_parcels
    parcels = _parcel_table(atlas, nets, result_maps)
    result = GroupAttentionResult.from_json({
        "task": "group attention",
        "checkpoint": None if is_model(checkpoint) else str(checkpoint), "data": source,
        "atlas": atlas.name, "parcels": atlas.n_parcels, "group_by": group_by,
        "groups": {"a": chosen[0], "b": chosen[1]}, "difference": f"{chosen[1]} - {chosen[0]}",
        "unit": s.unit,
        "n": {g: {f"{s.unit}s": int((units["group"] == g).sum()),
                  "recordings": int(table.loc[table["group"] == g, "recording_id"].nunique())} for g in chosen},
        "settings": {"layers": "all" if s.layers is None else list(s.layers), "heads": "all",
                     "attention": "CLS to parcel (mean over time patches and windows), relative to uniform",
                     "statistic": "Welch t", "n_permutations": s.n_permutations, "alpha": s.alpha,
                     "fdr": "Benjamini-Hochberg over parcels", "seed": s.seed, "transfer_atlas": s.transfer_atlas},
        "permutations": {k: {"n": v["n_permutations"], "exact": v["exact"]} for k, v in result_maps.items()},
        "significant": {k: int(np.sum(v["significant"])) for k, v in result_maps.items()},
        "networks": {k: _network_summary(v, nets, s.seed) for k, v in result_maps.items()},
        "parcel_sets": {k: _set_summary(v, atlas, s.parcel_sets or {}, s.seed) for k, v in result_maps.items()},
        "parcels_table": parcels.to_dict(orient="list"),
        "seconds": round(time.perf_counter() - t0, 1),
    })
    if out is not None:
        _write(result, parcels, _per_recording(rows, table, atlas, group_by), out)
    return result


def _check_layers(model, layers) -> None:
    if layers is None:
        return
    bad = [i for i in layers if not -model.config.depth <= i < model.config.depth]
    if bad:
        raise BrainLMInputError(f"layer(s) {bad} do not exist; the encoder has {model.config.depth} "
                                f"layers (0-{model.config.depth - 1})")


def _recording_maps(model, data, wanted: set, s: GroupAttentionSettings) -> tuple[dict, Atlas | None]:
    """Each wanted recording's relative CLS attention (P,), FC strength (P,) or None, and window
    count; and the atlas read (None when no recording had a full window)."""
    if isinstance(data, Recording):
        data = [data]
    if isinstance(data, list) and data and isinstance(data[0], Recording):
        data = [r for r in data if r.id in wanted]
    layers = None if s.layers is None else list(s.layers)
    rows, atlas = {}, None
    for item in model_inputs(model, data, transfer_atlas=s.transfer_atlas, target_tr=s.target_tr):
        rid = item.ids["recording_id"]
        if rid not in wanted:
            continue
        atlas = item.atlas
        maps = extract_attention(model, item.windows, item.xyz, batch_size=s.batch_size, parcel_matrix=False)
        rel = maps.relative_cls(layers=layers).mean(axis=0)
        rows[rid] = {"attention": rel, "fc_strength": _fc_strength(item.timeseries) if s.fc_baseline else None,
                     "windows": maps.n_windows}
    return rows, atlas


def _parcel_table(atlas: Atlas, nets: list, result_maps: dict) -> pd.DataFrame:
    """``parcels.tsv``: each parcel's centre and network, and every compared map's statistics."""
    parcels = pd.DataFrame({"parcel": atlas.parcel_names, "network": [n or "" for n in nets],
                            "x": atlas.xyz[:, 0], "y": atlas.xyz[:, 1], "z": atlas.xyz[:, 2]})
    for what, r in result_maps.items():
        for col in ("mean_a", "mean_b", "difference", "hedges_g", "t", "p", "q", "significant"):
            parcels[f"{what}_{col}"] = r[col]
    return parcels


def _per_recording(rows: dict, table: pd.DataFrame, atlas: Atlas, group_by: str) -> pd.DataFrame:
    """``recordings.parquet``: each recording's attention map with its ids and group."""
    per_recording = pd.DataFrame(
        np.stack([rows[r]["attention"] for r in table["recording_id"]]), columns=list(atlas.parcel_names))
    per_recording.insert(0, "recording_id", table["recording_id"].to_numpy())
    per_recording.insert(1, "subject", table["subject"].to_numpy())
    per_recording.insert(2, group_by, table["group"].to_numpy())
    return per_recording


def _fc_strength(x: np.ndarray) -> np.ndarray:
    """Mean Fisher-z correlation of every parcel with all others: (P,)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(x.astype(np.float64), rowvar=False)
    z = np.arctanh(np.clip(np.nan_to_num(r), -0.999999, 0.999999))
    np.fill_diagonal(z, 0.0)
    return z.sum(axis=1) / (z.shape[0] - 1)


def _compare(x: np.ndarray, in_b: np.ndarray, n_permutations: int, alpha: float, seed: int) -> dict:
    test = permutation_test(x, in_b, n_permutations=n_permutations, seed=seed)
    a, b = x[~in_b], x[in_b]
    na, nb = len(a), len(b)
    pooled = np.sqrt(((na - 1) * a.var(0, ddof=1) + (nb - 1) * b.var(0, ddof=1)) / (na + nb - 2))
    d = np.divide(b.mean(0) - a.mean(0), pooled, out=np.zeros(x.shape[1]), where=pooled > 0)
    g = d * (1 - 3 / (4 * (na + nb) - 9))  # Hedges' small-sample correction
    q = false_discovery_control(test["p"], method="bh")
    return {"mean_a": a.mean(0), "mean_b": b.mean(0), "difference": b.mean(0) - a.mean(0), "hedges_g": g,
            "t": test["t"], "p": test["p"], "q": q, "significant": q < alpha,
            "n_permutations": test["n_permutations"], "exact": test["exact"]}


def _network_summary(r: dict, nets, seed: int) -> list[dict]:
    names = network_order(nets)
    arr = np.array([n or "" for n in nets])
    out = []
    for n in names:
        members = arr == n
        e = parcel_set_enrichment(r["t"], members, seed=seed)
        out.append({"network": n, "parcels": int(members.sum()),
                    "mean_difference": float(r["difference"][members].mean()),
                    "mean_t": float(r["t"][members].mean()), "significant_parcels": int(r["significant"][members].sum()),
                    "t_mean_percentile": e["mean_percentile"], "shift_p": e["p"]})
    return out


def _set_summary(r: dict, atlas: Atlas, sets: dict, seed: int) -> list[dict]:
    out = []
    for name, members in sets.items():
        members = np.asarray(members, dtype=bool)
        if members.shape != (atlas.n_parcels,):
            raise BrainLMInputError(f"parcel set {name!r} has shape {members.shape}; expected "
                                    f"({atlas.n_parcels},), one flag per parcel of atlas {atlas.name!r}")
        e = parcel_set_enrichment(r["t"], members, seed=seed)
        out.append({"set": str(name), "parcels": int(members.sum()), "mean_t": float(r["t"][members].mean()),
                    "t_mean_percentile": e["mean_percentile"], "shift_p": e["p"]})
    return out


def markdown(result: dict, parcels: pd.DataFrame, top: int = 10) -> str:
    """The result as Markdown: groups, network summary and the top parcels."""
    r = result
    a, b = r["groups"]["a"], r["groups"]["b"]
    lines = [f"# Attention by {r['group_by']}: {b} vs {a} ({r['atlas']}, {r['parcels']} parcels)", "",
             "Groups: " + ", ".join(f"{r['group_by']}={g}: {v[r['unit'] + 's']} {r['unit']}s, "
                                    f"{v['recordings']} recordings" for g, v in r["n"].items())
             + f". Welch-t permutation test over {r['unit']}s "
             f"({r['permutations']['attention']['n']} labellings, "
             f"{'exact' if r['permutations']['attention']['exact'] else 'random'}), BH-FDR at "
             f"{r['settings']['alpha']}.", ""]
    for what, title in (("attention", "relative CLS attention"), ("fc_strength", "FC strength (baseline)")):
        if what not in r["networks"]:
            continue
        lines += [f"## {title}: {r['significant'][what]} parcel(s) with q < {r['settings']['alpha']}", "",
                  "| network | parcels | mean difference | mean t | significant | mean t percentile | network shift p |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {n['network']} | {n['parcels']} | {n['mean_difference']:+.4f} | {n['mean_t']:+.2f} | "
                  f"{n['significant_parcels']} | {n['t_mean_percentile']:.2f} | {n['shift_p']:.4f} |"
                  for n in r["networks"][what]]
        lines += [f"| set: {n['set']} | {n['parcels']} | | {n['mean_t']:+.2f} | | {n['t_mean_percentile']:.2f} | "
                  f"{n['shift_p']:.4f} |" for n in r["parcel_sets"].get(what, [])]
        best = parcels.reindex(parcels[f"{what}_t"].abs().sort_values(ascending=False).index).head(top)
        lines += ["", f"Top {top} parcels by |t|:", "", "| parcel | network | mean " + a + " | mean " + b
                  + " | difference | t | p | q |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {p.parcel} | {p.network} | {getattr(p, what + '_mean_a'):.4f} | {getattr(p, what + '_mean_b'):.4f} "
                  f"| {getattr(p, what + '_difference'):+.4f} | {getattr(p, what + '_t'):+.2f} | "
                  f"{getattr(p, what + '_p'):.4f} | {getattr(p, what + '_q'):.4f} |" for p in best.itertuples()]
        lines.append("")
    return "\n".join(lines)


_NUMERIC_COLUMNS = tuple(f"{what}_{col}" for what in ("attention", "fc_strength")
                         for col in ("mean_a", "mean_b", "difference", "hedges_g", "t", "p", "q"))


def read_parcels(path: str | Path) -> pd.DataFrame:
    """A saved ``parcels.tsv`` (one row per parcel), unlabelled networks kept as empty strings."""
    return read_parcel_table(path, ("parcel", "network", "x", "y", "z", "attention_mean_a", "attention_mean_b",
                                    "attention_difference", "attention_t", "attention_significant"),
                             numeric=_NUMERIC_COLUMNS)


def _write(result: GroupAttentionResult, parcels: pd.DataFrame, per_recording: pd.DataFrame, out) -> None:
    """``group_attention.json``, ``group_attention.md``, ``parcels.tsv`` and
    ``recordings.parquet`` in ``out``, published whole."""
    publish_results(out, {"parcels.tsv": parcel_table_text(parcels), "recordings.parquet": per_recording,
                          "group_attention.md": markdown(result, parcels),
                          "group_attention.json": result.dumps(indent=2)})
