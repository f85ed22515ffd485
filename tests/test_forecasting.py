"""Forecasting: windows, baselines, BrainLM future-mask fine-tuning, rollout, metrics, CLI.

Everything runs on the embedded real HCP data (the ``hcp`` / ``hcp_corpus`` / ``trained``
fixtures) with small settings.
"""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
import torch

from brainlm import BrainLMInputError
from brainlm.commands import main
from brainlm.data.atlas import load_atlas
from brainlm.data.contract import PreprocessingContract
from brainlm.data.corpus import Corpus
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.model import MaskSpec
from brainlm.checkpoints.folder import load_pretrained, pretraining_spatial_statistics
from brainlm.tasks.forecasting import (BASELINES, BaselineSettings, BrainLMForecaster, FinetuneSettings,
                                       NeuralTraining, check_lengths, evaluate, finetune, forecast,
                                       forecast_windows, load_forecaster, make_baseline, predict_future,
                                       step_metrics)
from brainlm.tasks.forecasting.api import with_window
from brainlm.tasks.forecasting.evaluate import evaluate_run
from brainlm.tasks.forecasting.windows import split_recordings, split_windows
from brainlm.tasks.model_input import model_scaler, preprocess

C, H = 180, 20
FAST = BaselineSettings(ar_order=3, var_order=1, lstm_hidden=16, ode_latent=8, ode_hidden=16, ode_step_trs=2.0,
                        neural=NeuralTraining(epochs=2, crops_per_recording=2, batch_size=8))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread for this module, restored afterwards. The recurrent baselines run
    thousands of tiny ops; on a shared, busy 2-core machine two OpenMP threads waiting on each
    other made them up to 1000x slower, while one thread is as fast as two at these sizes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def test_windows(hcp_corpus):
    return forecast_windows(hcp_corpus, C, H, split="test", stride=100)


@pytest.fixture(scope="module")
def fitted(hcp_corpus):
    """Every baseline fitted on the HCP training split with small settings."""
    train = split_recordings(hcp_corpus, "train")
    val = forecast_windows(hcp_corpus, C, H, split="val", stride=200)
    return {name: make_baseline(name, C, H, FAST).fit(train, (val.context, val.target)) for name in BASELINES}


@pytest.fixture(scope="module")
def finetuned(trained, hcp_corpus, tmp_path_factory):
    """`brainlm forecast finetune` on the pretrained tiny model: 1 epoch of 2 crops per recording."""
    out = tmp_path_factory.mktemp("forecast") / "ft"
    assert main(["forecast", "finetune", str(trained / "model"), hcp_corpus.path, "--context", "180",
                 "--horizon", "20", "--out", str(out), "--epochs", "1", "--crops-per-recording", "2",
                 "--batch-size", "5", "--quiet"]) == 0
    return out


def test_windows_are_the_corpus_tiles_cut_at_the_context(hcp_corpus, test_windows):
    w = test_windows
    assert w.context.shape == (11, C, 94) and w.target.shape == (11, H, 94)  # (1200 - 200) / 100 + 1
    row = int(np.flatnonzero(hcp_corpus.manifest["recording_id"] == w.recording_ids[3])[0])
    full = hcp_corpus.read(row, int(w.starts[3]), int(w.starts[3]) + C + H)
    np.testing.assert_array_equal(np.concatenate([w.context[3], w.target[3]]), full)
    again = forecast_windows(hcp_corpus, C, H, split="test", stride=100)
    np.testing.assert_array_equal(again.context, w.context)
    np.testing.assert_array_equal(again.starts, w.starts)


def test_baselines_shapes_and_no_leakage_of_target_trs(fitted, test_windows):
    w = test_windows
    tiles = np.concatenate([w.context, w.target], axis=1)
    rng = np.random.default_rng(0)
    future_changed = tiles.copy()
    future_changed[:, C:] = rng.normal(0, 5, future_changed[:, C:].shape)
    past_changed = tiles.copy()
    past_changed[:, C - 1] += 1.0
    for name, model in fitted.items():
        pred = model.predict(split_windows(tiles, C)[0])
        assert pred.shape == (11, H, 94) and pred.dtype == np.float32 and np.isfinite(pred).all(), name
        # Changing the TRs to be predicted changes nothing ...
        np.testing.assert_array_equal(model.predict(split_windows(future_changed, C)[0]), pred, err_msg=name)
        # ... while the last context TR matters (so the check above can fail).
        assert not np.array_equal(model.predict(split_windows(past_changed, C)[0]), pred), name


def test_persistence_repeats_last_tr_and_ar_var_beat_it_on_real_data(fitted, test_windows):
    w = test_windows
    pred = fitted["persistence"].predict(w.context)
    np.testing.assert_array_equal(pred, np.repeat(w.context[:, -1:], H, axis=1))
    np.testing.assert_allclose(fitted["context_mean"].predict(w.context)[:, 5], w.context.mean(axis=1), rtol=1e-6)
    mse = {n: step_metrics(fitted[n].predict(w.context), w.target)["mse"] for n in ("persistence", "ar", "var")}
    # Real HCP BOLD is autocorrelated but mean-reverting: linear AR models fitted on other
    # subjects forecast better than holding the last value.
    assert mse["ar"].mean() < mse["persistence"].mean()
    assert mse["var"].mean() < mse["persistence"].mean()
    assert mse["ar"][0] < mse["persistence"][0]


def test_neural_baselines_are_deterministic_under_a_seed(hcp_corpus, fitted, test_windows):
    train = split_recordings(hcp_corpus, "train")[:2]
    state = torch.random.get_rng_state()
    for name in ("lstm", "neural_ode"):
        settings = [BaselineSettings(**{**FAST.__dict__, "neural": NeuralTraining(
            epochs=1, crops_per_recording=2, batch_size=4, seed=seed)}) for seed in (0, 0, 1)]
        first, again, other = (make_baseline(name, C, H, s).fit(train).predict(test_windows.context)
                               for s in settings)
        np.testing.assert_array_equal(again, first)
        assert not np.array_equal(other, first)
        # The fixture's fit scored each epoch on validation windows and kept the best one.
        hist = fitted[name].history_
        assert len(hist) == 2 and all(np.isfinite([e["train_mse"], e["val_mse"]]).all() for e in hist)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone


def test_brainlm_future_mask_hides_the_target_trs(trained, test_windows):
    model = load_pretrained(trained / "model").eval()
    xyz = torch.from_numpy(np.array(model.atlas.xyz, dtype=np.float32)).expand(4, -1, -1)
    tiles = torch.from_numpy(np.concatenate([test_windows.context[:4], test_windows.target[:4]], axis=1))
    changed = tiles.clone()
    changed[:, C:] = torch.randn(4, H, 94) * 5
    mask = model.sample_mask(MaskSpec("future", future_trs=H), 4, 94)

    def future(x, m):
        with torch.no_grad():
            return model.unpatchify(model.forward_decoder(model.forward_encoder(x, xyz, m), xyz, 94))[:, C:]

    torch.testing.assert_close(future(changed, mask), future(tiles, mask), rtol=0, atol=0)
    # Without the mask the future values do reach the prediction: the check above can fail.
    assert not torch.allclose(future(changed, None), future(tiles, None))
    # The forecasting path reads the context only, and predicts what the masked model predicts.
    pred = predict_future(model, test_windows.context[:4], model.atlas.xyz, H)
    np.testing.assert_allclose(pred, future(tiles, mask).numpy(), rtol=1e-5, atol=1e-5)


def test_step_metrics_pooling(test_windows):
    rng = np.random.default_rng(1)
    target = test_windows.target
    m = step_metrics(target, target)
    assert np.allclose(m["mse"], 0) and np.allclose(m["r2"], 1) and np.allclose(m["pearson_r"], 1)
    pred = target + rng.normal(0, 0.5, target.shape).astype(np.float32)
    m = step_metrics(pred, target)
    assert all(v.shape == (H,) for v in m.values())
    s = 7
    y, f = target[:, s].astype(np.float64), pred[:, s].astype(np.float64)
    assert m["mse"][s] == pytest.approx(((y - f) ** 2).mean())
    assert m["r2"][s] == pytest.approx(1 - ((y - f) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    r = [np.corrcoef(f[w], y[w])[0, 1] for w in range(len(y))]  # across parcels, per window
    assert m["pearson_r"][s] == pytest.approx(np.mean(r))
    with pytest.raises(BrainLMInputError, match="same shape"):
        step_metrics(pred[:, :5], target)


def test_finetune_writes_both_models_and_is_deterministic(finetuned, trained, hcp_corpus, tmp_path):
    info = json.loads((finetuned / "finetune.json").read_text())
    assert info["window_trs"] == 200 and info["settings"]["horizon_trs"] == 20
    for kind, folder in (("finetuned", "model"), ("scratch", "scratch")):
        m = info["models"][kind]
        assert m["folder"] == folder and len(m["train_seconds_per_epoch"]) == 1
        assert m["train_windows_per_epoch"] == 10 and np.isfinite(m["best_val_mse"])
        assert json.loads((finetuned / folder / "forecasting.json").read_text())["horizon_trs"] == 20
    assert info["models"]["finetuned"]["initialisation"] == "pretrained"
    # The fine-tuned forecaster carries the pretraining data's spatial statistics (the zero-shot
    # spatial baseline); the scratch model, which never saw that data, does not.
    source = pretraining_spatial_statistics(load_pretrained(trained / "model"))
    forwarded = pretraining_spatial_statistics(load_pretrained(finetuned / "model"))
    assert source is not None and forwarded is not None
    np.testing.assert_array_equal(forwarded.covariance, source.covariance)
    assert pretraining_spatial_statistics(load_pretrained(finetuned / "scratch")) is None
    # Fine-tuning moved the weights, and differently from the randomly initialised control.
    sha = {d: json.loads((d / "config.json").read_text())["sha256"]
           for d in (trained / "model", finetuned / "model", finetuned / "scratch")}
    assert len(set(sha.values())) == 3
    # The same settings and seed give bit-identical weights.
    again = finetune(trained / "model", hcp_corpus.path, tmp_path / "again", FinetuneSettings(
        epochs=1, crops_per_recording=2, batch_size=5, scratch=False))
    assert json.loads((tmp_path / "again" / "model" / "config.json").read_text())["sha256"] == \
        sha[finetuned / "model"]
    assert again["models"]["finetuned"]["best_val_mse"] == info["models"]["finetuned"]["best_val_mse"]
    with pytest.raises(BrainLMInputError, match="exists"):
        finetune(trained / "model", hcp_corpus.path, tmp_path / "again", FinetuneSettings(epochs=1))


def test_evaluate_cli_scores_every_method_per_step(finetuned, hcp_corpus, tmp_path):
    out = tmp_path / "eval"
    assert main(["forecast", "evaluate", str(finetuned), hcp_corpus.path, "--out", str(out), "--stride", "100",
                 "--ar-order", "3", "--var-order", "1", "--lstm-hidden", "16", "--ode-latent", "8",
                 "--ode-hidden", "16", "--ode-step", "2", "--epochs", "1", "--crops-per-recording", "2",
                 "--quiet"]) == 0
    res = json.loads((out / "forecast.json").read_text())
    expected = {"brainlm_finetuned", "brainlm_scratch", "brainlm_pretrained", *BASELINES}
    assert set(res["methods"]) == expected and res["n_windows"] == 11 and res["stride_trs"] == 100
    for name, m in res["methods"].items():
        assert all(len(m[k]) == H and np.isfinite(m[k]).all() for k in ("mse", "r2", "pearson_r")), name
    assert len(res["best_by_step"]["mse"]) == H and res["summary"].startswith("Lowest MSE per step")
    # Fine-tuned models report the training time of their fine-tuning run, not 0.
    trained_for = json.loads((finetuned / "finetune.json").read_text())["models"]
    assert res["methods"]["brainlm_finetuned"]["fit_seconds"] == trained_for["finetuned"]["fit_seconds"] > 0
    assert res["methods"]["brainlm_scratch"]["fit_seconds"] == trained_for["scratch"]["fit_seconds"] > 0
    md = (out / "forecast.md").read_text()
    assert "| 20 |" in md and "BrainLM fine-tuned" in md and "neural ODE" in md
    # The command draws the figure from the saved numbers (the task writes numbers only).
    img = matplotlib.image.imread(out / "forecast_error.png")
    assert img.ndim == 3 and img.shape[1] > img.shape[0] > 100
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_forecast_rolls_out_by_feeding_predictions_back(finetuned, hcp):
    model = load_forecaster(finetuned / "model")
    assert model.forecast_trs == 20
    rec = hcp[6]
    f50 = forecast(model, rec, 50)
    assert f50.shape == (50, 94) and np.isfinite(f50).all()
    np.testing.assert_array_equal(forecast(model, rec, 50), f50)  # deterministic
    np.testing.assert_allclose(forecast(model, rec, 20), f50[:20], rtol=0, atol=1e-6)
    data = preprocess(model, rec)
    # The second pass is the first pass's forecast appended to the context.
    fed = np.concatenate([data, f50[:20]])
    np.testing.assert_allclose(forecast(model, fed, 20), f50[20:40], rtol=1e-5, atol=1e-5)
    # A context that ends inside the recording: the forecast is of TRs the recording holds.
    inside = forecast(finetuned / "model", rec, 20, context_end=600)
    np.testing.assert_allclose(inside, predict_future(model, data[None, 420:600], rec.atlas.xyz, 20)[0],
                               rtol=1e-5, atol=1e-5)


def test_with_window_keeps_weights(trained):
    model = load_pretrained(trained / "model")
    longer = with_window(model, 240)
    assert longer.config.window_trs == 240 and longer.config.n_patches == 12
    for (k, a), (_, b) in zip(model.state_dict().items(), longer.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(BrainLMInputError, match="multiple"):
        with_window(model, 230)


def test_bad_input(trained, hcp_corpus, hcp, fitted, tmp_path, capsys):
    ckpt = trained / "model"
    with pytest.raises(BrainLMInputError, match="horizon_trs 30 is not a multiple of the patch"):
        finetune(ckpt, hcp_corpus.path, tmp_path / "x", FinetuneSettings(context_trs=170, horizon_trs=30))
    with pytest.raises(BrainLMInputError, match="not a multiple of the patch length"):
        finetune(ckpt, hcp_corpus.path, tmp_path / "x", FinetuneSettings(context_trs=175, horizon_trs=20))
    with pytest.raises(BrainLMInputError, match="longer than every recording"):
        finetune(ckpt, hcp_corpus.path, tmp_path / "x", FinetuneSettings(context_trs=1200, horizon_trs=20))
    with pytest.raises(BrainLMInputError, match="gradient_clip -1.0; expected a number >= 0"):
        finetune(ckpt, hcp_corpus.path, tmp_path / "x", FinetuneSettings(clip=-1.0))
    assert not (tmp_path / "x").exists()
    with pytest.raises(BrainLMInputError, match="longer than every recording"):
        forecast_windows(hcp_corpus, 1190, 20)
    with pytest.raises(BrainLMInputError, match="horizon_trs is 0"):
        check_lengths(180, 0)
    with pytest.raises(BrainLMInputError, match="unknown baseline"):
        evaluate(hcp_corpus, context_trs=C, horizon_trs=H, baselines=["prophet"])
    with pytest.raises(BrainLMInputError, match="at least 3"):
        fitted["ar"].predict(np.zeros((1, 2, 94), dtype=np.float32))
    model = load_pretrained(ckpt)
    with pytest.raises(BrainLMInputError, match="needs 180"):
        forecast(model, hcp[0].timeseries[:100], 20)  # 100 TRs of context; one pass reads 180
    with pytest.raises(BrainLMInputError, match="step_trs 30"):
        forecast(model, hcp[0], 20, step_trs=30)
    with pytest.raises(BrainLMInputError, match="horizon_trs is -1"):
        forecast(model, hcp[0], -1)
    assert not (tmp_path / "x").exists()
    code = main(["forecast", "finetune", str(ckpt), hcp_corpus.path, "--out", str(tmp_path / "y"),
                 "--horizon", "25"])
    assert code == 2 and "not a multiple of the patch" in capsys.readouterr().err
    assert main(["forecast", "evaluate", str(tmp_path), hcp_corpus.path, "--out", str(tmp_path / "z")]) == 2
    assert "no finetune.json" in capsys.readouterr().err


def test_brainlm_forecaster_rolls_out_past_its_step(trained, test_windows):
    f = BrainLMForecaster(trained / "model", 40, context_trs=C)
    pred = f.predict(test_windows.context[:2])
    assert pred.shape == (2, 40, 94) and f.describe()["rollout_passes"] == 2


@pytest.fixture(scope="module")
def hcp_without_psc(hcp, tmp_path_factory):
    """The HCP recordings prepared without percent signal change: cleaned differently from the
    `trained` checkpoint's pretraining corpus."""
    return prepare_corpus(hcp, tmp_path_factory.mktemp("nopsc") / "corpus",
                          PrepareSettings.of(atlas=load_atlas("aal2"),
                                             contract=PreprocessingContract(percent_signal_change=False)))


def test_a_corpus_cleaned_differently_is_refused_by_finetuning_and_evaluation(
        trained, finetuned, hcp_without_psc, tmp_path):
    # The same message as every other task gives for this checkpoint and corpus.
    with pytest.raises(BrainLMInputError) as other:
        model_scaler(load_pretrained(trained / "model"), hcp_without_psc)
    message = "the corpus was cleaned differently from the model's pretraining data"
    assert message in other.value.reason and "percent_signal_change" in other.value.reason
    with pytest.raises(BrainLMInputError, match=message) as ft:
        finetune(trained / "model", hcp_without_psc.path, tmp_path / "ft", FinetuneSettings(epochs=1))
    assert ft.value.reason == other.value.reason
    with pytest.raises(BrainLMInputError, match=message) as ev:
        evaluate_run(finetuned, hcp_without_psc.path, tmp_path / "ev", baselines=["persistence"])
    assert ev.value.reason == other.value.reason
    with pytest.raises(BrainLMInputError, match=message):
        evaluate(hcp_without_psc, context_trs=C, horizon_trs=H, models={"m": finetuned / "model"},
                 baselines=[])
    assert not (tmp_path / "ft").exists() and not (tmp_path / "ev").exists()
    # Baselines alone need no checkpoint: they read the corpus with its own scaling.
    alone = evaluate(hcp_without_psc, context_trs=C, horizon_trs=H, baselines=["persistence"])
    assert alone["methods"]["persistence"]["mean"]["mse"] > 0


def test_finetuning_reads_with_and_keeps_the_checkpoint_contract(trained, hcp, tmp_path):
    # Cleaned like the pretraining data but split differently: the corpus' scaling statistics
    # (fitted on its own training split) differ from the checkpoint's.
    other = prepare_corpus(hcp, tmp_path / "resplit",
                           PrepareSettings.of(atlas=load_atlas("aal2"), split_seed=7,
                                              contract=PreprocessingContract(percent_signal_change=True)))
    pretrained = load_pretrained(trained / "model")
    assert other.contract.median != pretrained.contract.median
    scaler = model_scaler(pretrained, other)
    assert scaler.to_dict() == pretrained.contract.to_dict()
    out = tmp_path / "ft"
    finetune(trained / "model", other.path, out, FinetuneSettings(epochs=1, crops_per_recording=1,
                                                                  batch_size=5, scratch=False))
    for name in ("contract.json", "atlas.json"):
        assert json.loads((out / "model" / name).read_text()) == \
            json.loads((trained / "model" / name).read_text()), name
    # Every forecaster then sees the checkpoint's scale, not the corpus' own.
    own = forecast_windows(other, C, H, split="test")
    mine = forecast_windows(other, C, H, split="test", scaler=scaler)
    assert not np.allclose(own.context, mine.context)
    row = int(np.flatnonzero(other.manifest["recording_id"] == mine.recording_ids[0])[0])
    raw = other.read(row, 0, C + H, scaled=False)
    np.testing.assert_array_equal(mine.context[0], scaler.scale(raw)[:C])
    res = evaluate(Corpus(other.path), context_trs=C, horizon_trs=H, models={"ft": out / "model"},
                   baselines=["persistence"], out=tmp_path / "ev")
    assert "pretraining statistics" in res["units"]
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["forecast.json", "forecast.md"]
