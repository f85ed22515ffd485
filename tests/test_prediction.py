"""Phenotype prediction on a synthetic cohort with known answers, with the HCP-pretrained tiny
checkpoint: no subject on both sides of any split (outer, inner, early stopping), known effects
found and the negative control at chance, the embedding transformer in scikit-learn pipelines,
LoRA, the paired test, and bad input that leaves no results behind."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold, KFold, cross_val_score
from sklearn.pipeline import make_pipeline

from brainlm.commands import main
from brainlm.data.atlas import load_atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.checkpoints.folder import load_pretrained
from brainlm.simulate import CohortSpec, simulate_cohort
from brainlm.tasks.inference import encode
from brainlm.tasks.model_input import model_scaler, preprocess, read_model_input, subject_keys
from brainlm.tasks.prediction import (
    BrainLMEmbedding, BrainLMFineTuner, FineTuneSchedule, PredictionSettings, add_lora, corrected_resampled_ttest,
    evaluate_prediction, grouped_folds, subject_leaks)
from brainlm.tasks.prediction.training import loss_function, random_crops, train_early_stopping

RUNS = 2

# The tests share 2 cores with other jobs: one BLAS/torch thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """40 simulated subjects (AAL2, TR 0.72 s, three sites), each scanned in 2 runs of 300 TRs:
    80 recordings, prepared like the HCP corpus of the `trained` checkpoint."""
    sims = simulate_cohort(CohortSpec(40, atlas="aal2", n_trs=600, tr=0.72, seed=0))
    recordings = []
    for rec in sims:
        for k, part in enumerate(np.array_split(rec.timeseries, RUNS)):
            recordings.append(Recording(part, rec.tr, rec.atlas, rec.subject, site=rec.site, task="rest",
                                        run=str(k + 1), phenotypes=rec.phenotypes))
    return prepare_corpus(recordings, tmp_path_factory.mktemp("cohort") / "corpus",
                          PrepareSettings.of(atlas=load_atlas("aal2"),
                                             contract=PreprocessingContract(percent_signal_change=True)))


QUICK = PredictionSettings(n_folds=3, inner_folds=2, seeds=(0,), lstm_epochs=2, finetune_epochs=1,
                           probe_epochs=30, patience=1, batch_size=16)


@pytest.fixture(scope="module")
def every_method(trained, cohort, tmp_path_factory):
    """Every method on the binary `group` target, on the 32 subjects of the corpus' training
    split (the returned dict also lists the subjects on each side of every split; the JSON
    leaves those out)."""
    out = tmp_path_factory.mktemp("pred") / "group"
    return out, evaluate_prediction(trained / "model", cohort, "group", settings=QUICK, split="train",
                                    out=out)


def test_no_subject_on_both_sides_of_any_split(every_method, cohort):
    _, r = every_method
    subjects = set(subject_keys(cohort, cohort.split_indices("train")))
    assert len(subjects) == 32 and r["recordings"] == 64 and r["split"] == "train"
    names = {m["name"] for m in r["methods"]}
    assert len(r["fits"]) == 3 * len(names) == 45
    for fit in r["fits"]:
        train, test = set(fit["subjects"]["train"]), set(fit["subjects"]["test"])
        assert not train & test, (fit["method"], train & test)
        assert train | test == subjects
        assert fit["subjects"]["inner"], fit["method"]
        for inner_train, inner_val in fit["subjects"]["inner"]:
            # Hyper-parameter search and early stopping stay inside the outer training fold.
            assert not set(inner_train) & set(inner_val), fit["method"]
            assert set(inner_train) | set(inner_val) <= train, fit["method"]
    # Outer test folds partition the subjects.
    tested = [s for f in r["folds"] for s in f["test_subjects"]]
    assert sorted(tested) == sorted(subjects)


def test_the_leak_check_catches_recording_level_folds(cohort):
    # Folds over recordings (what a plain KFold does) put a subject's two runs on both sides:
    # the check used above must see that, or it could not fail.
    groups = subject_keys(cohort, np.arange(len(cohort.manifest)))
    naive = list(KFold(5, shuffle=True, random_state=0).split(groups))
    assert subject_leaks(groups, naive)
    y = np.arange(len(groups), dtype=float)
    assert not subject_leaks(groups, grouped_folds(groups, y, 5, seed=0, classification=False))
    assert not subject_leaks(groups, grouped_folds(groups, y % 2, 5, seed=1, classification=True))


def test_every_method_reports_classification_metrics(every_method, cohort):
    out, r = every_method
    assert r["target"]["task"] == "classification" and r["reference"] == "fc_correlation_logistic"
    expected = {"brainlm_cls_logistic", "brainlm_cls_svc", "brainlm_cls_knn", "brainlm_mean_logistic",
                "brainlm_mean_svc", "brainlm_mean_knn", "random_brainlm_cls_logistic",
                "random_brainlm_mean_logistic", "fc_correlation_logistic", "fc_tangent_logistic",
                "raw_pca_svc", "lstm", "finetune_linear_probe", "finetune_full", "finetune_lora"}
    assert {m["name"] for m in r["methods"]} == expected
    for name, s in r["summary"].items():
        for metric in ("accuracy", "balanced_accuracy", "roc_auc"):
            assert 0.0 <= s[metric]["mean"] <= 1.0, (name, metric)
    for name, c in r["comparison"].items():
        assert c["metric"] == "roc_auc" and c["n_pairs"] == 3 and 0 <= c["p"] <= 1
    saved = json.loads((out / "prediction.json").read_text())
    assert saved["summary"] == r["summary"] and saved["folds"] == r["folds"]
    assert "subjects" not in saved["fits"][0]
    assert "| fc_correlation_logistic | baseline |" in (out / "prediction.md").read_text()
    oof = pd.read_parquet(out / "predictions.parquet")
    assert len(oof) == 64 * len(expected)  # every recording predicted once per method
    train = cohort.manifest[cohort.manifest["split"] == "train"]
    assert set(oof["recording_id"]) == set(train["recording_id"])


def test_known_effect_found_and_negative_control_at_chance(trained, cohort):
    settings = PredictionSettings(n_folds=5, inner_folds=3, seeds=(0, 1))
    methods = ["fc_correlation_ridge", "brainlm_mean_ridge", "random_brainlm_mean_ridge"]
    age = evaluate_prediction(trained / "model", cohort, "age", methods=methods, settings=settings)
    fc = age["summary"]["fc_correlation_ridge"]
    assert fc["pearson_r"]["mean"] > 0.35 and fc["r2"]["mean"] > 0.1
    assert fc["mse"]["sd_seeds"] is not None and len(fc["mse"]["per_seed"]) == 2
    # null_score changes nothing in the simulation: explaining any of its variance out of fold
    # would be a leak. (Its per-fold Pearson r is not checked: on test folds of 8 subjects it
    # ranges from -0.3 to +0.3 for permuted null targets.)
    null = evaluate_prediction(trained / "model", cohort, "null_score", methods=methods, settings=settings)
    for name, s in null["summary"].items():
        assert s["r2"]["mean"] < 0.0, name
        assert s["r2"]["mean"] < age["summary"][name]["r2"]["mean"], name


def test_same_call_same_numbers(trained, cohort, capsys):
    kw = dict(methods=["fc_tangent_ridge", "brainlm_cls_knn"], settings=QUICK)
    a = evaluate_prediction(trained / "model", cohort, "trait", **kw)
    b = evaluate_prediction(trained / "model", cohort, "trait", progress="folds", **kw)
    assert a["summary"] == b["summary"] and a["folds"] == b["folds"]
    # progress="folds": one line per outer fold with the reference's score on that fold.
    lines = capsys.readouterr().err.strip().splitlines()
    assert [ln.split(":")[1].strip() for ln in lines] == [f"seed 0 fold {k}/{QUICK.n_folds}" for k in (1, 2, 3)]
    ref = [f["metrics"]["mse"] for f in b["fits"] if f["method"] == "fc_correlation_ridge"]
    assert all(f"fc_correlation_ridge {m:.3f}" in ln for m, ln in zip(ref, lines)) and len(ref) == 3


def test_embedding_transformer_in_a_pipeline(trained, cohort, hcp):
    model = load_pretrained(trained / "model")
    series = read_model_input(cohort, range(20), model_scaler(model, cohort))
    groups = subject_keys(cohort, range(20))
    y = cohort.manifest["age"].to_numpy()[:20]
    pipe = make_pipeline(BrainLMEmbedding(trained / "model", pooling="mean"), Ridge(alpha=10.0))
    scores = cross_val_score(pipe, series, y, groups=groups, cv=GroupKFold(4), scoring="r2")
    assert scores.shape == (4,) and np.isfinite(scores).all()

    emb = BrainLMEmbedding(trained / "model", pooling="both").fit(series)
    x = emb.transform(series[:3])
    assert x.shape == (3, 2 * model.config.dim) and x.dtype == np.float32
    np.testing.assert_array_equal(x, emb.transform(series[:3]))  # deterministic
    assert list(emb.get_feature_names_out()[[0, -1]]) == ["cls_0000", f"mean_{model.config.dim - 1:04d}"]
    # Window embeddings averaged per recording; the same as `encode` on a raw Recording.
    windows = emb.transform_windows([preprocess(model, hcp[0])])[0]
    assert windows.shape == (6, 2 * model.config.dim)
    enc = encode(model, [hcp[0]])[0]
    np.testing.assert_allclose(emb.transform([hcp[0]])[0], np.concatenate([enc["cls"], enc["mean"]]), rtol=1e-5)
    # The random-weights control is another function of the same data, reproducible by seed.
    rnd = BrainLMEmbedding(trained / "model", weights="random", random_state=1).fit(series)
    assert not np.allclose(rnd.transform(series[:3]), emb.transform(series[:3])[:, :model.config.dim])
    again = BrainLMEmbedding(trained / "model", weights="random", random_state=1).fit(series)
    np.testing.assert_array_equal(rnd.transform(series[:3]), again.transform(series[:3]))


def test_embedding_transformer_bad_input(trained):
    emb = BrainLMEmbedding(trained / "model")
    with pytest.raises(BrainLMInputError, match="one 2-D array"):
        emb.fit(np.zeros((300, 94), dtype=np.float32))
    with pytest.raises(BrainLMInputError, match=r"X\[1\].*93 parcel columns"):
        emb.fit([np.zeros((300, 94)), np.zeros((300, 93))])
    with pytest.raises(BrainLMInputError, match=r"X\[0\].*150 TRs"):
        emb.fit([np.zeros((150, 94))])
    with pytest.raises(BrainLMInputError, match="pooling"):
        BrainLMEmbedding(trained / "model", pooling="max").fit([np.zeros((300, 94))])


def test_lora_starts_from_the_pretrained_encoder_and_leaves_it_untouched(trained, cohort):
    model = load_pretrained(trained / "model")
    copy_ = copy.deepcopy(model)
    wrapped = add_lora(copy_, rank=2)
    assert len(wrapped) == 4 * model.config.depth and "blocks.0.attn.qkv" in wrapped
    x = torch.from_numpy(read_model_input(cohort, [0], model_scaler(model, cohort))[0][:200][None])
    xyz = torch.from_numpy(np.array(model.atlas.xyz, dtype=np.float32))[None]
    with torch.no_grad():  # B = 0 at start: the adapted encoder is the pretrained one
        torch.testing.assert_close(copy_.forward_encoder(x, xyz).latent, model.forward_encoder(x, xyz).latent)

    series = read_model_input(cohort, range(24), model_scaler(model, cohort))
    y = cohort.manifest["age"].to_numpy()[:24]
    groups = subject_keys(cohort, range(24))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = BrainLMFineTuner(model, mode="lora", schedule=FineTuneSchedule(max_epochs=1), lora_rank=2).fit(series, y, groups)
    assert lora.n_trainable_ < 0.1 * sum(p.numel() for p in model.parameters())
    assert not set(lora.validation_groups_) & set(lora.train_groups_)
    tuned = lora.net_.model.state_dict()
    for name, value in before.items():  # frozen base weights, and the caller's model untouched
        torch.testing.assert_close(model.state_dict()[name], value)
        base = name.replace(".weight", ".base.weight").replace(".bias", ".base.bias")
        torch.testing.assert_close(tuned.get(name, tuned.get(base)), value)
    full = BrainLMFineTuner(model, mode="full", schedule=FineTuneSchedule(max_epochs=1)).fit(series, y, groups)
    assert full.n_trainable_ == model.count_parameters()["encoder"] + 2 * model.config.dim + 1
    # The head starts from a ridge probe: before any epoch the validation loss is already below
    # that of predicting the mean (MSE 1 on the standardised target, roughly).
    assert full.log_.val_loss[0] < 1.5 and full.log_.best_epoch in (0, 1)
    pred = full.predict(series[:4])
    assert pred.shape == (4,) and np.isfinite(pred).all()


def test_the_fine_tuners_schedule_clones_and_is_grid_searched(trained, cohort):
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV

    model = load_pretrained(trained / "model")
    tuner = BrainLMFineTuner(model, mode="linear_probe", schedule=FineTuneSchedule(max_epochs=1, batch_size=8),
                             probe_init=False)
    twin = clone(tuner)
    assert twin.get_params()["schedule"] == FineTuneSchedule(max_epochs=1, batch_size=8)
    assert (twin.max_epochs, twin.patience, twin.batch_size) == (1, 3, 8)
    assert set(tuner.get_params()) >= {"schedule", "lora_rank", "val_fraction", "random_state"}
    assert not {"lr", "max_epochs", "batch_size"} & set(tuner.get_params())
    series = read_model_input(cohort, range(12), model_scaler(model, cohort))
    y = cohort.manifest["age"].to_numpy()[:12]
    groups = subject_keys(cohort, range(12))
    grid = [FineTuneSchedule(lr=lr, max_epochs=1, batch_size=8) for lr in (1e-3, 1e-2)]
    search = GridSearchCV(tuner, {"schedule": grid}, cv=GroupKFold(2), scoring="neg_mean_squared_error")
    search.fit(series, y, groups=groups)
    assert search.best_params_["schedule"] in grid and np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.schedule.lr in (1e-3, 1e-2)
    with pytest.raises(BrainLMInputError, match="FineTuneSchedule max_epochs 0; expected a positive whole number"):
        FineTuneSchedule(max_epochs=0)
    with pytest.raises(BrainLMInputError, match="FineTuneSchedule lr -1.0; expected a positive number"):
        FineTuneSchedule(lr=-1.0)


def test_corrected_resampled_ttest():
    d = np.array([0.1, 0.2, 0.15, 0.05, 0.1, 0.2])
    out = corrected_resampled_ttest(d, n_train=80, n_test=20)
    j, var = len(d), d.var(ddof=1)
    t = d.mean() / np.sqrt((1 / j + 20 / 80) * var)
    assert out["t"] == pytest.approx(t) and out["df"] == 5
    from scipy import stats

    assert out["p"] == pytest.approx(2 * stats.t.sf(t, 5))
    # The correction makes it more conservative than the plain paired t-test.
    assert out["p"] > stats.ttest_1samp(d, 0).pvalue
    assert corrected_resampled_ttest(np.zeros(4), 10, 5)["p"] == 1.0


def _with_column(corpus, name, values):
    c = copy.copy(corpus)
    c.manifest = corpus.manifest.assign(**{name: values})
    return c


def _first_subjects(m: pd.DataFrame, k: int) -> np.ndarray:
    return m["subject"].isin(m["subject"].unique()[:k]).to_numpy().astype(int)


@pytest.mark.parametrize("column, make, task, settings, message", [
    ("nope", None, "auto", QUICK, r"'nope' is not a phenotype column.*available: \[.*'age'"),
    ("const", lambda m: np.full(len(m), 3.0), "auto", QUICK, "'const' is constant"),
    ("sparse", lambda m: np.where(np.arange(len(m)) < 56, np.nan, 1.0 * np.arange(len(m))), "auto", QUICK,
     r"missing for 70% of recordings \(56 of 80\); at most 50%"),
    ("one", lambda m: np.ones(len(m), dtype=int), "classification", QUICK, "'one' has one class"),
    ("many", lambda m: np.array(list("abcd"))[np.arange(len(m)) % 4], "auto", QUICK, "has 4 classes; only binary"),
    ("many", lambda m: np.arange(len(m)) % 4, "classification", QUICK, "has 4 classes; only binary"),
    ("sex", lambda m: np.where(np.arange(len(m)) % 2, "F", "M"), "regression", QUICK, "non-numeric values"),
    ("age", None, "auto", PredictionSettings(n_folds=50, seeds=(0,)), "40 subject.*fewer than the 50 folds"),
    ("rare", lambda m: _first_subjects(m, 2), "auto", QUICK, "class 1 of target 'rare' has 2 subject"),
])
def test_bad_targets_are_refused_before_any_work(trained, cohort, tmp_path, column, make, task,
                                                  settings, message):
    corpus = cohort if make is None else _with_column(cohort, column, make(cohort.manifest))
    out = tmp_path / "res"
    with pytest.raises(BrainLMInputError, match=message):
        evaluate_prediction(trained / "model", corpus, column, task=task, settings=settings, out=out)
    assert not out.exists()


def test_cli_runs_and_reports(trained, cohort, tmp_path, capsys):
    out = tmp_path / "age"
    assert main(["evaluate", "predict", str(trained / "model"), cohort.path, "--target", "age",
                 "--methods", "fc_correlation_ridge,brainlm_mean_ridge", "--folds", "3",
                 "--inner-folds", "2", "--seeds", "0,1", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| brainlm_mean_ridge | BrainLM zero-shot |" in printed and "Best BrainLM method" in printed
    saved = json.loads((out / "prediction.json").read_text())
    assert [m["name"] for m in saved["methods"]] == ["brainlm_mean_ridge", "fc_correlation_ridge"]
    assert saved["settings"]["seeds"] == [0, 1] and len(saved["fits"]) == 2 * 3 * 2


def test_cli_bad_input_exits_2_without_results(trained, cohort, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["evaluate", "predict", str(trained / "model"), cohort.path, "--target", "height",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("brainlm evaluate: error:") and "height" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["evaluate", "predict", str(trained / "model"), cohort.path, "--target", "age",
                 "--methods", "fc_correlation_ridge,transformer_magic", "--out", str(out)]) == 2
    assert "transformer_magic" in capsys.readouterr().err and not out.exists()


def _reference_early_stopping(net, optimizer, epoch_data, val_x, val_y, classification, max_epochs, patience,
                              batch_size, generator):
    """The hand-written loop that phenotype heads used before they trained through Lightning:
    the one trainer must reproduce it exactly (same seeds, same data order, same stopping)."""
    loss_fn = loss_function(classification)

    def validate():
        net.eval()
        with torch.no_grad():
            out = torch.cat([net(val_x[i:i + batch_size]) for i in range(0, len(val_x), batch_size)])
        return float(loss_fn(out, val_y))

    vals, train, stale = [validate()], [], 0
    best, best_epoch, best_state = vals[0], 0, copy.deepcopy(net.state_dict())
    for epoch in range(1, max_epochs + 1):
        x, y = epoch_data(epoch)
        order = torch.randperm(len(x), generator=generator)
        net.train()
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        train.append(total / len(order))
        vals.append(validate())
        if vals[-1] < best:
            best, best_epoch, stale, best_state = vals[-1], epoch, 0, copy.deepcopy(net.state_dict())
        else:
            stale += 1
            if stale >= patience:
                break
    net.load_state_dict(best_state)
    return train, vals, best_epoch


class _WindowMean(torch.nn.Module):
    """window [B, T, P] -> [B]: a linear map of the window's mean over time."""

    def __init__(self, n_parcels):
        super().__init__()
        self.lin = torch.nn.Linear(n_parcels, 1)

    def forward(self, x):
        return self.lin(x.mean(dim=1)).squeeze(-1)


@pytest.mark.parametrize("lr, classification", [(0.05, False), (0.05, True), (5.0, False)])
def test_early_stopping_through_lightning_matches_the_hand_loop(cohort, tmp_path, monkeypatch, lr,
                                                               classification):
    monkeypatch.chdir(tmp_path)
    series = [cohort.read(i)[:, :8] for i in range(12)]
    target = cohort.manifest["group" if classification else "age"].to_numpy()[:12].astype(np.float32)
    if not classification:
        target = (target - target.mean()) / target.std()
    y = torch.from_numpy(target)
    val_x = torch.stack([torch.from_numpy(np.ascontiguousarray(x[:50])) for x in series[8:]])
    val_y = y[8:]

    def run(trainer):
        torch.manual_seed(0)
        net = _WindowMean(8)
        opt = torch.optim.AdamW(net.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(1)

        def epoch_data(epoch):
            return torch.cat([random_crops(series[:8], 50, gen) for _ in range(3)]), y[:8].repeat(3)
        out = trainer(net, opt, epoch_data, val_x, val_y, classification, 12, 2, 5, gen)
        return net, out

    net_a, (train, vals, best_epoch) = run(_reference_early_stopping)
    net_b, log = run(lambda net, opt, data, vx, vy, c, e, p, b, g: train_early_stopping(
        net, opt, epoch_data=data, val_inputs=vx, val_targets=vy, classification=c, max_epochs=e,
        patience=p, batch_size=b, generator=g))
    assert log.train_loss == train and log.val_loss == vals and log.best_epoch == best_epoch
    for (k, a), (_, b) in zip(net_a.state_dict().items(), net_b.state_dict().items()):
        assert torch.equal(a, b), k
    # The best weights were restored: the validation loss is the lowest seen, never above the start.
    with torch.no_grad():
        final = float(loss_function(classification)(net_b(val_x), val_y))
    assert final == pytest.approx(min(log.val_loss), rel=1e-6) and final <= log.val_loss[0]
    if lr == 5.0:  # a step size that only makes things worse: the starting point is kept
        assert log.best_epoch == 0 and len(log.train_loss) == 2
    assert not list(tmp_path.iterdir())  # no logs, no checkpoint files
