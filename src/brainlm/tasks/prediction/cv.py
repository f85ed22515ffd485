"""Nested cross-validation grouped by subject, fold metrics, and the paired comparison.

Outer folds: ``GroupKFold`` (regression) or ``StratifiedGroupKFold`` (classification) with
shuffling, one split per seed, so every recording of a subject is on the same side. The
hyper-parameter search runs on the outer training fold only, with inner folds built the same
way from the outer training subjects; early-stopping validation subjects are also drawn from
the outer training fold. :func:`subject_leaks` checks any list of splits.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score, r2_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedGroupKFold

REGRESSION_METRICS = ("mse", "r2", "pearson_r")
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "roc_auc")
#: Metric used for model selection and for the paired comparison, and whether higher is better.
PRIMARY = {"regression": ("mse", False), "classification": ("roc_auc", True)}


def grouped_folds(groups: np.ndarray, y: np.ndarray, n_folds: int, seed: int,
                  classification: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs with every subject (group) on one side only.

    groups, y: (n,). Shuffled by ``seed``; stratified by ``y`` for classification.
    """
    splitter = (StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed) if classification
                else GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed))
    return [(tr, te) for tr, te in splitter.split(np.zeros(len(y)), y, groups)]


def subject_leaks(groups: np.ndarray, splits) -> list[tuple[int, list]]:
    """Subjects found on both sides of a split: ``[(split index, [subjects])]`` (empty: none).

    groups : (n,) subject of each sample; splits : iterable of (train indices, test indices).
    """
    leaks = []
    for k, (a, b) in enumerate(splits):
        both = sorted(set(np.asarray(groups)[a]) & set(np.asarray(groups)[b]))
        if both:
            leaks.append((k, both))
    return leaks


def take(X, idx):
    """Rows ``idx`` of an array, or items of a list (time series, window embeddings)."""
    if isinstance(X, np.ndarray):
        return X[idx]
    return [X[i] for i in idx]


def nested_search(estimator, grid: dict, X, y, inner) -> GridSearchCV:
    """Grid search over ``inner`` folds (indices into ``X``), refitted on all of ``X``."""
    scoring = "roc_auc" if _is_classifier_grid(estimator) else "neg_mean_squared_error"
    search = GridSearchCV(estimator, grid, cv=inner, scoring=scoring, refit=True, n_jobs=1,
                          error_score="raise")
    return search.fit(X, y)


def _is_classifier_grid(estimator) -> bool:
    from sklearn.base import is_classifier

    return is_classifier(estimator)


def scores_of(fitted, X, classification: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(predictions, scores): labels and a continuous score for classification; predictions and
    None for regression."""
    pred = np.asarray(fitted.predict(X))
    if not classification:
        return pred.astype(np.float64), None
    if hasattr(fitted, "decision_function"):  # False for a pipeline ending in kNN
        return pred, np.asarray(fitted.decision_function(X), dtype=np.float64)
    return pred, np.asarray(fitted.predict_proba(X))[:, 1].astype(np.float64)


def fold_metrics(y_true: np.ndarray, pred: np.ndarray, score: np.ndarray | None,
                 classification: bool) -> dict[str, float]:
    """Regression: MSE (of the standardised target when ``y_true`` is standardised), R^2 and
    Pearson r (NaN for a constant prediction). Classification: accuracy, balanced accuracy,
    ROC-AUC of ``score``."""
    if classification:
        return {"accuracy": float(accuracy_score(y_true, pred)),
                "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
                "roc_auc": float(roc_auc_score(y_true, score))}
    r = float(stats.pearsonr(y_true, pred)[0]) if np.std(pred) > 0 and np.std(y_true) > 0 else float("nan")
    return {"mse": float(np.mean((pred - y_true) ** 2)), "r2": float(r2_score(y_true, pred)), "pearson_r": r}


def corrected_resampled_ttest(differences, n_train: float, n_test: float) -> dict:
    """Nadeau & Bengio's corrected resampled t-test on per-fold score differences.

    Folds of repeated cross-validation share training data, so the plain paired t-test
    underestimates the variance; the correction inflates it by ``n_test / n_train``:
    ``t = mean(d) / sqrt((1/J + n_test/n_train) var(d))`` with J - 1 degrees of freedom
    (J = folds x seeds). Returns mean difference, t, two-sided p and df.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    j = len(d)
    if j < 2:
        return {"mean_difference": float(d.mean()) if j else None, "t": None, "p": None, "df": j - 1,
                "n_pairs": j}
    var = d.var(ddof=1)
    mean = d.mean()
    if var == 0:
        t = 0.0 if mean == 0 else float(np.sign(mean) * np.inf)
        p = 1.0 if mean == 0 else 0.0
    else:
        t = float(mean / np.sqrt((1.0 / j + n_test / n_train) * var))
        p = float(2 * stats.t.sf(abs(t), df=j - 1))
    return {"mean_difference": float(mean), "t": t, "p": p, "df": j - 1, "n_pairs": j}
