"""Train/validation/test assignment by subject, so no person is in two splits.

Upstream BrainLM split by file, which puts different runs of one subject on both sides.
Evaluation-only cohorts (fractions ``(0, 0, 1)``, every subject in ``test``) are allowed: the
corpus then takes its scaling statistics from a checkpoint (``brainlm prepare --like``) or
pools them over all its recordings, and says which (:mod:`brainlm.data.prepare`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from brainlm.errors import BrainLMInputError

SPLITS = ("train", "val", "test")


def split_sizes(n_groups: int, fractions: Sequence[float]) -> list[int]:
    """Number of groups per split by largest remainder; every split with a positive fraction
    gets at least one group when there are enough groups, and ``train`` gets one whenever its
    fraction is above 0 (a split with fraction 0 never gets any: ``(0, 0, 1)`` is an
    evaluation-only cohort)."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or not np.isfinite(f).all() or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise BrainLMInputError(
            f"split fractions {list(fractions)} must be three numbers >= 0 (train, val, test) "
            "summing to 1")
    exact = f * n_groups
    sizes = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - sizes), kind="stable")[: n_groups - sizes.sum()]:
        sizes[k] += 1
    wanted = np.flatnonzero(f > 0)
    for k in wanted:
        if sizes[k] == 0 and n_groups >= len(wanted):
            donor = int(np.argmax(sizes))
            sizes[donor] -= 1
            sizes[k] += 1
    if f[0] > 0 and sizes[0] == 0 and n_groups > 0:
        donor = int(np.argmax(sizes))
        sizes[donor] -= 1
        sizes[0] += 1
    return sizes.tolist()


def assign_splits(groups: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  seed: int = 0) -> dict[str, str]:
    """Assign each distinct group (a subject, or a site for site-level splits) to a split.

    Parameters
    ----------
    groups : sequence of str
        One entry per recording; repeated entries are the same group.
    fractions : (train, val, test)
        Fractions of groups (not recordings) per split.
    seed : int
        The assignment depends only on the seed and the set of groups (not on their order).

    Returns
    -------
    dict mapping group -> ``"train" | "val" | "test"``.
    """
    unique = sorted(set(map(str, groups)))
    order = np.random.default_rng(seed).permutation(len(unique))
    sizes = split_sizes(len(unique), fractions)
    labels = np.repeat(np.array(SPLITS), sizes)
    return {unique[i]: str(labels[rank]) for rank, i in enumerate(order)}


def explicit_splits(groups: Sequence[str], assignments: Mapping[str, str]) -> dict[str, str]:
    """A split for each distinct group, given by the user (e.g. a fixed external test set, or a
    leave-one-subject-out fold).

    Parameters
    ----------
    groups : sequence of str
        One entry per recording (subject keys: ``SITE/SUBJECT`` for recordings with a site).
    assignments : mapping
        Group -> ``"train" | "val" | "test"``; every group must be listed (all in ``test``:
        an evaluation-only cohort).
    """
    unique = sorted(set(map(str, groups)))
    bad = {g: s for g, s in assignments.items() if s not in SPLITS}
    if bad:
        raise BrainLMInputError(f"split assignments {dict(list(bad.items())[:3])}: expected one of {SPLITS}")
    missing = [g for g in unique if g not in assignments]
    if missing:
        raise BrainLMInputError(f"split assignments lack {len(missing)} subject(s) of the data, e.g. "
                                f"{missing[:3]} (keys are SITE/SUBJECT for recordings with a site)")
    return {g: str(assignments[g]) for g in unique}
