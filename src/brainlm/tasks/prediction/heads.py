"""Scikit-learn heads on fixed-length features, with their hyper-parameter grids.

Every head standardises its features (statistics from the training fold, inside the pipeline)
and is tuned by the nested grid search of :mod:`brainlm.tasks.prediction.cv`. Regression heads
predict the standardised target; classification heads give a score for ROC-AUC
(``decision_function`` or ``predict_proba``).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR

from brainlm.errors import BrainLMInputError

#: Head kinds; ``linear`` is ridge regression or L2 logistic regression.
HEADS = ("linear", "svm", "knn")
RIDGE_ALPHAS = np.logspace(-1, 6, 8)
LOGISTIC_CS = np.logspace(-4, 2, 7)
SVM_CS = (0.1, 1.0, 10.0)
KNN_NEIGHBOURS = (5, 10, 20)


def head_name(kind: str, task: str) -> str:
    """The estimator's name in tables: ridge / logistic, svr / svc, knn."""
    return {("linear", "regression"): "ridge", ("linear", "classification"): "logistic",
            ("svm", "regression"): "svr", ("svm", "classification"): "svc"}.get((kind, task), kind)


def make_head(kind: str, task: str, n_train_min: int, steps=()) -> tuple[Pipeline, dict]:
    """A pipeline ``[*steps, StandardScaler, head]`` and its grid (``head__param``).

    Parameters
    ----------
    kind : {"linear", "svm", "knn"}
    task : {"regression", "classification"}
    n_train_min : int
        Fewest training samples of any fit in the search (bounds the kNN neighbours).
    steps : sequence of (name, transformer)
        Feature steps fitted inside each training fold before the scaler (e.g. FC, PCA).
    """
    classification = task == "classification"
    if kind == "linear":
        head = (LogisticRegression(max_iter=5000) if classification else Ridge())
        grid = {"head__C": list(LOGISTIC_CS)} if classification else {"head__alpha": list(RIDGE_ALPHAS)}
    elif kind == "svm":
        head = SVC(kernel="rbf") if classification else SVR(kernel="rbf")
        grid = {"head__C": list(SVM_CS)}
    elif kind == "knn":
        head = KNeighborsClassifier() if classification else KNeighborsRegressor()
        ks = sorted({min(k, max(1, n_train_min - 1)) for k in KNN_NEIGHBOURS})
        grid = {"head__n_neighbors": ks}
    else:
        raise BrainLMInputError(f"head {kind!r}; expected one of {HEADS}")
    return Pipeline([*steps, ("scale", StandardScaler()), ("head", head)]), grid
