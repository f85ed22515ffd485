"""brainlm.sklearn: the transformers in Pipeline, cross_val_score and GridSearchCV, cloned and
pickled; the score of the CLI's zero-shot linear path on the same folds; clear errors; and the
road from a nilearn NiftiLabelsMasker. Uses the shipped ``hcp-small`` checkpoint (AAL2, fast) and
a small simulated cohort with a known group effect."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from nilearn.connectome import ConnectivityMeasure
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedGroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import brainlm
from brainlm.data.corpus import Corpus
from brainlm.data.contract import ReferenceContract
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.folder import load_pretrained
from brainlm.checkpoints.shipped import resolve_checkpoint
from brainlm.simulate import CohortSpec, simulate_cohort
from brainlm.sklearn import BrainLMEmbedding, LatentConnectivity, masker_atlas
from brainlm.tasks.model_input import model_scaler, read_model_input, subject_keys
from brainlm.tasks.prediction import PredictionSettings, evaluate_prediction
from brainlm.tasks.prediction.heads import LOGISTIC_CS

pytestmark = pytest.mark.usefixtures("one_thread")
CKPT = "hcp-small"


@pytest.fixture(scope="module")
def model():
    return load_pretrained(CKPT)


@pytest.fixture(scope="module")
def cohort():
    """20 simulated subjects on AAL2, one 300-TR recording each at TR 0.72 s (raw units)."""
    return simulate_cohort(CohortSpec(20, atlas="aal2", n_trs=300, tr=0.72, sites=1, seed=3))


@pytest.fixture(scope="module")
def corpus(cohort, model, tmp_path_factory):
    """The cohort prepared like the checkpoint (its cleaning and statistics)."""
    like = ReferenceContract(contract=model.contract, atlas=model.atlas, name=CKPT,
                             path=str(resolve_checkpoint(CKPT)))
    return prepare_corpus(cohort, tmp_path_factory.mktemp("c") / "corpus", PrepareSettings.of(like=like))


def test_clone_pickle_and_feature_names(cohort, model):
    X = [r.timeseries for r in cohort[:3]]
    emb = BrainLMEmbedding(CKPT, pooling="both", tr=0.72)
    twin = clone(emb)
    assert twin.get_params() == emb.get_params() and not hasattr(twin, "model_")
    out = emb.fit_transform(X)
    assert out.shape == (3, 2 * model.config.dim) and out.dtype == np.float32
    names = emb.get_feature_names_out()
    assert names[0] == "cls_0000" and names[-1] == f"mean_{model.config.dim - 1:04d}"
    back = pickle.loads(pickle.dumps(emb))
    np.testing.assert_array_equal(back.transform(X), out)
    # refits nothing: the same features whatever it was fitted on
    np.testing.assert_array_equal(clone(emb).fit(X[2:]).transform(X), out)


def test_raw_arrays_with_tr_equal_the_prepared_corpus(cohort, corpus, model):
    """tr= sends raw arrays through the checkpoint's contract: the same model input as a corpus
    prepared like the checkpoint gives."""
    scaler = model_scaler(model, corpus)
    series = read_model_input(corpus, np.arange(3), scaler)
    ids = list(corpus.manifest["subject"][:3])
    raw = [next(r.timeseries for r in cohort if r.subject == s) for s in ids]
    a = BrainLMEmbedding(CKPT, tr=0.72).fit(raw).transform(raw)
    b = BrainLMEmbedding(CKPT).fit(series).transform(series)
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_clear_errors(cohort):
    raw = [r.timeseries for r in cohort[:2]]
    with pytest.raises(BrainLMInputError, match=r"X\[0\].*94 parcel columns; expected 90|90 parcel columns; expected 94"):
        BrainLMEmbedding(CKPT, tr=0.72).fit([raw[0][:, :90]])
    with pytest.raises(BrainLMInputError, match=r"looks unscaled .* pass tr="):
        BrainLMEmbedding(CKPT).fit(raw)
    with pytest.raises(BrainLMInputError, match="expected the repetition time"):
        BrainLMEmbedding(CKPT, tr=-1).fit(raw)
    with pytest.raises(BrainLMInputError, match="at least one window of 200 TRs"):
        BrainLMEmbedding(CKPT, tr=0.72).fit([raw[0][:150]])
    with pytest.raises(BrainLMInputError, match="parcel columns"):
        LatentConnectivity(CKPT, tr=0.72).fit([raw[0][:, :10]])


def test_pipeline_under_group_kfold(cohort):
    """A Pipeline with LogisticRegression under GroupKFold in cross_val_score: the score is the
    one of the same steps fitted fold by fold by hand, and the known group effect is found."""
    X = [r.timeseries for r in cohort]
    y = np.array([int(r.phenotypes["group"]) for r in cohort])
    groups = np.array([r.subject for r in cohort])
    pipe = make_pipeline(BrainLMEmbedding(CKPT, pooling="mean", tr=0.72), StandardScaler(),
                         LogisticRegression(C=0.1, max_iter=5000))
    cv = GroupKFold(n_splits=4)
    scores = cross_val_score(pipe, X, y, groups=groups, cv=cv, scoring="accuracy")
    by_hand = []
    for tr, te in cv.split(X, y, groups):
        fitted = clone(pipe).fit([X[i] for i in tr], y[tr])
        by_hand.append(np.mean(fitted.predict([X[i] for i in te]) == y[te]))
    np.testing.assert_allclose(scores, by_hand)
    assert scores.shape == (4,) and 0.0 <= scores.min() and scores.max() <= 1.0


def test_same_score_as_the_cli_linear_path(corpus, model):
    """`brainlm evaluate predict ... --methods brainlm_cls_logistic` and a Pipeline with
    LogisticRegression in cross_val_score (the nested C search inside) on the same folds give
    the same ROC AUC fold by fold."""
    settings = PredictionSettings(n_folds=3, inner_folds=2, seeds=(0,))
    result = evaluate_prediction(CKPT, corpus, "group", task="classification", methods=["brainlm_cls_logistic"],
                                 settings=settings)
    cli = [f["metrics"]["roc_auc"] for f in result["fits"] if f["method"] == "brainlm_cls_logistic"]
    c = Corpus(corpus.path)
    rows = np.arange(len(c.manifest))
    X = read_model_input(c, rows, model_scaler(model, c))
    y = c.manifest["group"].to_numpy().astype(np.int64)
    groups = subject_keys(c, rows)
    head = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                        {"logisticregression__C": list(LOGISTIC_CS)}, scoring="roc_auc",
                        cv=StratifiedGroupKFold(2, shuffle=True, random_state=0))
    pipe = make_pipeline(BrainLMEmbedding(CKPT, pooling="cls"), head)
    outer = StratifiedGroupKFold(3, shuffle=True, random_state=0)
    ours = cross_val_score(pipe, X, y, groups=groups, cv=outer, scoring="roc_auc", params={"gridsearchcv__groups": groups})
    np.testing.assert_allclose(ours, cli, atol=1e-9)


def test_latent_connectivity_is_vectorised_like_nilearn(cohort, model):
    X = [r.timeseries for r in cohort[:2]]
    lc = LatentConnectivity(CKPT, tr=0.72).fit(X)
    vec = lc.transform(X)
    p = model.atlas.n_parcels
    assert vec.shape == (2, p * (p + 1) // 2) == (2, lc.n_features_out_)
    assert len(lc.get_feature_names_out()) == vec.shape[1]
    mats = clone(lc).set_params(vectorize=False).fit(X).transform(X)
    assert mats.shape == (2, p, p) and np.allclose(mats, mats.transpose(0, 2, 1))
    # the same layout as nilearn's ConnectivityMeasure(vectorize=True) on those matrices
    cm = ConnectivityMeasure(kind="covariance", vectorize=True)
    from nilearn.connectome import sym_matrix_to_vec
    np.testing.assert_array_equal(vec, sym_matrix_to_vec(mats))
    assert cm.vectorize and vec[0].shape == sym_matrix_to_vec(np.eye(p)).shape
    off = clone(lc).set_params(discard_diagonal=True).fit(X).transform(X)
    assert off.shape == (2, p * (p - 1) // 2)
    # in GridSearchCV like any transformer (a parameter of the step is searched)
    pipe = make_pipeline(LatentConnectivity(CKPT, tr=0.72), LogisticRegression(max_iter=2000))
    y = np.array([0, 1] * 4)
    Xs = [r.timeseries for r in cohort[:8]]
    search = GridSearchCV(pipe, {"latentconnectivity__discard_diagonal": [True, False]}, cv=2).fit(Xs, y)
    assert search.best_params_["latentconnectivity__discard_diagonal"] in (True, False)
    assert pickle.loads(pickle.dumps(lc)).transform(X[:1]).shape == (1, vec.shape[1])


def test_nilearn_masker_road(tmp_path):
    """NiftiLabelsMasker(...).fit_transform(img) -> BrainLMEmbedding: the masker's t_r and labels
    image become tr= and atlas= (masker_atlas), with nothing copied by hand."""
    from nilearn.maskers import NiftiLabelsMasker

    from brainlm.data.example_scans import write_fmriprep_example

    ex = write_fmriprep_example(tmp_path / "ex", subjects=1, n_trs=220)
    bold = next(ex.derivatives.rglob("*_desc-preproc_bold.nii.gz"))
    names = list(__import__("pandas").read_csv(ex.atlas_labels, sep="\t")["name"])
    masker = NiftiLabelsMasker(labels_img=str(ex.atlas_image), labels=names, t_r=0.72, standardize=None)
    series = masker.fit_transform(str(bold))
    atlas = masker_atlas(masker)
    assert atlas.n_parcels == series.shape[1] and list(atlas.parcel_names) == names
    emb = BrainLMEmbedding(CKPT, tr=masker.t_r, atlas=atlas, transfer_atlas=True, pooling="mean")
    out = emb.fit_transform([series])
    assert out.shape == (1, 96) and np.isfinite(out).all()
    # without a TR the raw masker output is refused, naming what to pass
    with pytest.raises(BrainLMInputError, match="pass tr="):
        BrainLMEmbedding(CKPT, atlas=atlas, transfer_atlas=True).fit([series])
    # raw arrays on another atlas are scaled with the checkpoint's statistics by parcel name only
    other = type(atlas)(name="renamed", parcel_names=[f"p{i}" for i in range(atlas.n_parcels)], xyz=atlas.xyz)
    with pytest.raises(BrainLMInputError, match="pretraining statistics, one per parcel"):
        BrainLMEmbedding(CKPT, tr=0.72, atlas=other, transfer_atlas=True).fit([series])


def test_brainlm_embed_takes_arrays_like_the_transformer(cohort):
    raw = [r.timeseries for r in cohort[:2]]
    df = brainlm.embed(CKPT, raw, tr=0.72)
    assert list(df["subject"]) == ["0000", "0001"] and df["n_windows"].tolist() == [1, 1]
    out = BrainLMEmbedding(CKPT, tr=0.72, pooling="both").fit_transform(raw)
    np.testing.assert_allclose(df[[c for c in df.columns if c.startswith(("cls_", "mean_"))]].to_numpy(),
                               out, atol=1e-5)
    with pytest.raises(BrainLMInputError, match="pass tr="):
        brainlm.embed(CKPT, raw)
