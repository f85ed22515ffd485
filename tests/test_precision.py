"""Mixed precision: bf16-mixed trains and infers on every path, close to fp32, and ``auto``
picks it only where bfloat16 is native.

CPU autocast reproduces the GPU's dtype mix (matrix products in bfloat16, fp32 parameters and
losses), so every path a GPU run takes is exercised here.

How close is close (the tolerances below)
-----------------------------------------
bfloat16 keeps 8 significant bits: rounding an input of a matrix product changes it by at most
``u = 2**-8 = 0.0039`` relative, and products accumulate in fp32. Rounding errors of the terms of a
dot product are independent, so an output element carries a relative error of order ``u`` (not
``u`` times the width), and the errors of successive layers add up in quadrature: about
``u * sqrt(m)`` after ``m`` matrix products in a row. The ``small`` model runs about 25 in a row
(patch embedding, 3 encoder and 2 decoder blocks of 4 each, the heads), so one predicted value
moves by about ``0.0039 * 5 = 2%``: that bounds the embeddings and predictions
(``VALUE_RTOL = 0.05``, a norm over all values, 2.5x the estimate). A loss is a mean over
thousands of such values, whose independent errors cancel down by the square root of their
count: the masked MSE agrees far closer than one value, and ``LOSS_RTOL = 0.01`` (about
``2.5 u``) is loose for it. A training step of AdamW moves each weight by about the learning rate
whatever the gradient's small error, so a few dozen steps keep the two runs' losses within the
same 1% (measured: 0.1%). A broken path fails these by far: a mask token put back in the wrong
slot, a cast that drops the residual stream or a loss on the wrong tokens changes the loss by
tens of percent, and the training runs below lower the loss by more than 10x the tolerance, so
a path that does not learn cannot pass either.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainlm.commands import main
from brainlm.model import MaskSpec
from brainlm.model import precision as precision_module
from brainlm.model.brainlm import BrainLM
from brainlm.checkpoints.folder import load_pretrained
from brainlm.model.config import preset
from brainlm.model.precision import autocast, resolve_precision
from brainlm.checkpoints.upstream_import import load_upstream
from brainlm.tasks.forecasting.finetune import FinetuneSettings, finetune
from brainlm.tasks.inference import embed_windows, predict_masked
from brainlm.tasks.model_input import model_scaler, read_model_input, subject_keys
from brainlm.tasks.prediction import BrainLMEmbedding, BrainLMFineTuner, FineTuneSchedule
from brainlm.tasks.reconstruction import evaluate_reconstruction
from brainlm.train.pretrain import PretrainSettings, pretrain
from brainlm.errors import BrainLMInputError

FIXTURES = Path(__file__).parent / "fixtures" / "upstream_brainlm"
LOSS_RTOL = 0.01
VALUE_RTOL = 0.05
PRECISIONS = ("32-true", "bf16-mixed")

pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a, b) -> float:
    """||a - b|| / ||b|| over all values (float64)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def windows(hcp_corpus):
    """Four real 200-TR windows of the HCP corpus (model input) and their AAL2 coordinates."""
    x = torch.from_numpy(np.stack([hcp_corpus.read(i)[:200] for i in range(4)]))
    xyz = torch.tensor(np.asarray(hcp_corpus.atlas.xyz, dtype=np.float32)).expand(4, -1, -1)
    return x, xyz


# -- which precision -------------------------------------------------------------------------------
def test_auto_picks_bf16_only_where_bfloat16_is_native(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: ())
    assert resolve_precision("auto", "cpu") == "32-true"  # emulated bf16 is slower than fp32
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: ("avx512_bf16",))
    assert resolve_precision("auto", "cpu") == "bf16-mixed"
    # On a CPU, bf16 pays only for a wide enough model (the 96-wide presets train no faster).
    assert resolve_precision("auto", "cpu", width=512) == "bf16-mixed"
    assert resolve_precision("auto", "cpu", width=96) == "32-true"
    assert resolve_precision("bf16-mixed", "cpu", width=96) == "bf16-mixed"  # asked for: given
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    assert resolve_precision("auto", "gpu") == "32-true"
    with pytest.raises(BrainLMInputError, match="V100.*no bfloat16"):
        resolve_precision("bf16-mixed", "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "gpu") == resolve_precision("auto", "cuda:1") == "bf16-mixed"
    assert resolve_precision("auto", "gpu", width=96) == "bf16-mixed"  # a GPU: whatever the width
    assert resolve_precision("16-mixed", "gpu") == "16-mixed"


def test_auto_pretraining_records_what_it_resolved_to(monkeypatch, hcp_corpus, tmp_path):
    monkeypatch.setattr(precision_module, "cpu_bf16_features", lambda: ("amx_bf16",))
    for name, width, expected in (("narrow", 96, "32-true"), ("wide", 256, "bf16-mixed")):
        s = PretrainSettings(corpus=hcp_corpus.path, preset="small", epochs=1, crops_per_recording=1,
                             accelerator="cpu", model_overrides={"dim": width, "heads": 4})
        pretrain(s, tmp_path / name, progress=False)
        assert json.loads((tmp_path / name / "metrics.json").read_text())["precision"] == expected


def test_the_cpu_features_are_read_from_torch():
    features = precision_module.cpu_bf16_features()
    assert set(features) <= {"amx_bf16", "avx512_bf16"}
    caps = torch.cpu.get_capabilities()
    assert ("avx512_bf16" in features) == bool(caps.get("avx512_bf16"))


@pytest.mark.parametrize("value, message", [("16-mixed", "needs a CUDA GPU"), ("bf16-true", "expected one of")])
def test_a_precision_the_device_cannot_run_is_refused_in_one_line(value, message, hcp_corpus, tmp_path, capsys):
    with pytest.raises(BrainLMInputError, match=message):
        resolve_precision(value, "cpu")
    if value == "16-mixed":  # (bf16-true is not among the CLI's choices: argparse refuses it)
        code = main(["pretrain", hcp_corpus.path, "--out", str(tmp_path / "run"), "--precision", value,
                     "--accelerator", "cpu"])
        err = capsys.readouterr().err
        assert code == 2 and "needs a CUDA GPU" in err and "Traceback" not in err
        assert len([ln for ln in err.splitlines() if ln.strip()]) == 1
        assert not (tmp_path / "run").exists()  # refused before anything is written


# -- the model under autocast ------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["axial", "full", "hybrid"])
def test_every_decoder_trains_under_bf16_autocast(variant, windows):
    x, xyz = windows
    kw = {"decoder_attention": "full"} if variant == "full" else {}
    if variant == "hybrid":
        kw["spatial_prior_parcels"] = x.shape[2]
    torch.manual_seed(0)
    model = BrainLM(preset("small", **kw))
    if variant == "hybrid":
        frames = x.reshape(-1, x.shape[2])
        model.prior_mean.copy_(frames.mean(0))
        model.prior_covariance.copy_(torch.cov(frames.T) + 0.1 * torch.eye(x.shape[2]))
    mask = model.sample_mask(MaskSpec("random", 0.75), 4, x.shape[2], torch.Generator().manual_seed(1))
    out = {}
    for name in PRECISIONS:
        model.zero_grad()
        with autocast(name, "cpu"):
            loss, pred = model(x, xyz, mask)
        loss.backward()
        out[name] = (loss.item(), pred.float().detach(), model.mask_token.grad.clone())
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    (l32, p32, g32), (l16, p16, g16) = out["32-true"], out["bf16-mixed"]
    assert p16.dtype == torch.float32 and out["bf16-mixed"][1].shape == p32.shape
    assert abs(l16 - l32) <= LOSS_RTOL * l32, (l16, l32)
    assert rel(p16, p32) <= VALUE_RTOL
    # The learned mask token is cast for the decoder, and its gradient still reaches it.
    assert g16.abs().sum() > 0 and rel(g16, g32) <= 0.1


@pytest.mark.parametrize("family", ["paper", "vitmae"])
def test_the_original_brainlm_families_run_under_bf16_autocast(family):
    model, _ = load_upstream(FIXTURES / ("paper_13m_small" if family == "paper" else "vitmae_small"))
    model.eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 200, 424, generator=gen)
    xyz = torch.tensor(np.asarray(model.atlas.xyz, dtype=np.float32)) if model.atlas is not None else \
        torch.rand(424, 3, generator=gen) * 140 - 70
    mask = model.sample_mask(MaskSpec("random", 0.75), 2, 424, gen)  # [2, P, N]; the image model: [2, L]
    emb = {p: embed_windows(model, x, xyz, 2, p) for p in PRECISIONS}
    rec = {p: predict_masked(model, x, xyz, mask, 2, p) for p in PRECISIONS}
    for part in (0, 1):  # CLS and mean pooling
        assert rel(emb["bf16-mixed"][part], emb["32-true"][part]) <= VALUE_RTOL
    assert rel(rec["bf16-mixed"], rec["32-true"]) <= VALUE_RTOL
    # bf16 inference is as deterministic as fp32.
    again = embed_windows(model, x, xyz, 2, "bf16-mixed")
    assert torch.equal(again[0], emb["bf16-mixed"][0])
    # A training step (fine-tuning an imported model): the loss and the gradients reach every
    # trained weight in both precisions.
    model.train()
    losses = {}
    for p in PRECISIONS:
        model.zero_grad()
        with autocast(p, "cpu"):
            loss, _ = model(x, xyz.expand(2, -1, -1), mask)
        loss.backward()
        losses[p] = loss.item()
        assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in model.parameters() if q.requires_grad)
    assert abs(losses["bf16-mixed"] - losses["32-true"]) <= LOSS_RTOL * losses["32-true"]


# -- pretraining through Lightning's bf16-mixed ---------------------------------------------------------
@pytest.fixture(scope="module")
def runs(hcp_corpus, tmp_path_factory):
    """``small`` pretrained for one epoch of 15 steps (5 training subjects x 48 crops / 16) from
    seed 0 in each precision, and the full decoder and the hybrid for 5 steps:
    {(variant, precision): run folder}."""
    root = tmp_path_factory.mktemp("precision")
    out = {}
    for variant, kw, crops in (("axial", {}, 48), ("full", {"model_overrides": {"decoder_attention": "full"}}, 16),
                               ("hybrid", {"spatial_prior": True}, 16)):
        for p in PRECISIONS:
            s = PretrainSettings(corpus=hcp_corpus.path, preset="small", epochs=1, crops_per_recording=crops,
                                 accelerator="cpu", precision=p, **kw)
            pretrain(s, root / f"{variant}-{p}", progress=False)
            out[variant, p] = root / f"{variant}-{p}"
    return out


def logged(run: Path) -> pd.DataFrame:
    return pd.read_csv(next((run / "logs" / "csv").glob("version_*/metrics.csv")))


@pytest.mark.parametrize("variant", ["axial", "full", "hybrid"])
def test_bf16_pretraining_follows_fp32_from_the_same_seed(runs, variant):
    fp32, bf16 = (runs[variant, p] for p in PRECISIONS)
    m32, m16 = (json.loads((r / "metrics.json").read_text()) for r in (fp32, bf16))
    assert (m32["precision"], m16["precision"]) == PRECISIONS
    t32, t16 = (logged(r)["train/loss"].dropna().to_numpy() for r in (fp32, bf16))
    assert len(t32) == len(t16) >= 1
    np.testing.assert_allclose(t16, t32, rtol=LOSS_RTOL)
    v32, v16 = m32["metrics_last_epoch"]["val/masked_mse"], m16["metrics_last_epoch"]["val/masked_mse"]
    assert abs(v16 - v32) <= LOSS_RTOL * v32
    if variant == "axial":  # 15 steps: the loss falls by far more than the tolerance
        assert t32[-1] < (1 - 10 * LOSS_RTOL) * t32[0]
    # The checkpoint of a bf16 run holds fp32 weights, like any other.
    model = load_pretrained(bf16 / "model")
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_reconstruction_evaluation_matches_fp32(runs, hcp_corpus, tmp_path):
    ck = runs["axial", "32-true"] / "model"
    res = {p: evaluate_reconstruction(ck, hcp_corpus, ratios=(0.5,), precision=p) for p in PRECISIONS}
    assert res["bf16-mixed"]["precision"] == "bf16-mixed"
    r32, r16 = (res[p]["results"][0]["methods"]["brainlm"]["r2"] for p in PRECISIONS)
    mse32 = res["32-true"]["results"][0]["methods"]["brainlm"]["mse"]
    # R² = 1 - MSE / var: its change is the MSE's relative change times (1 - R²).
    assert abs(r16 - r32) <= LOSS_RTOL * mse32 / res["32-true"]["results"][0]["methods"]["zero"]["mse"] + 1e-9
    assert res["32-true"]["results"][0]["methods"]["spatial"] == res["bf16-mixed"]["results"][0]["methods"]["spatial"]
    code = main(["evaluate", "recon", str(ck), hcp_corpus.path, "--out", str(tmp_path / "r"), "--ratios", "0.5",
                 "--precision", "bf16-mixed"])
    assert code == 0
    assert json.loads((tmp_path / "r" / "reconstruction.json").read_text())["precision"] == "bf16-mixed"


# -- fine-tuning ------------------------------------------------------------------------------------
def test_bf16_forecast_finetuning_follows_fp32(runs, hcp_corpus, tmp_path):
    ck = runs["axial", "32-true"] / "model"
    out = {}
    for p in PRECISIONS:
        s = FinetuneSettings(epochs=1, crops_per_recording=4, batch_size=5, scratch=False, accelerator="cpu",
                             precision=p)
        out[p] = finetune(ck, hcp_corpus.path, tmp_path / p, s)
    assert out["bf16-mixed"]["precision"] == "bf16-mixed"
    f32, f16 = (out[p]["models"]["finetuned"] for p in PRECISIONS)
    assert abs(f16["val_mse_before"] - f32["val_mse_before"]) <= LOSS_RTOL * f32["val_mse_before"]
    assert abs(f16["best_val_mse"] - f32["best_val_mse"]) <= LOSS_RTOL * f32["best_val_mse"]


@pytest.mark.parametrize("mode", ["linear_probe", "full", "lora"])
def test_bf16_prediction_finetuning_runs_every_mode(mode, runs, hcp_corpus):
    model = load_pretrained(runs["axial", "32-true"] / "model")
    rows = range(len(hcp_corpus.manifest))
    series = read_model_input(hcp_corpus, rows, model_scaler(model, hcp_corpus))
    groups = subject_keys(hcp_corpus, rows)
    y = np.linspace(20.0, 35.0, len(series))
    # What the encoder's first matrix product computes in, during each fit (the hook travels
    # with the fine-tuner's copy of the model).
    seen: list[torch.dtype] = []
    model.patch_embed.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    fits, dtypes = {}, {}
    for p in PRECISIONS:
        seen.clear()
        fits[p] = BrainLMFineTuner(model, mode=mode, schedule=FineTuneSchedule(max_epochs=2, patience=2, batch_size=8),
                                   precision=p,
                                   val_fraction=0.3).fit(series, y, groups)
        dtypes[p] = set(seen)
    assert dtypes == {"32-true": {torch.float32}, "bf16-mixed": {torch.bfloat16}}
    f32, f16 = fits["32-true"], fits["bf16-mixed"]
    # The same validation subjects, and a starting point (the probe on the frozen encoder's
    # features) that agrees as closely as the features do.
    assert list(f16.validation_groups_) == list(f32.validation_groups_)
    assert len(f16.log_.val_loss) == len(f32.log_.val_loss) >= 2
    assert np.isfinite(f16.log_.val_loss).all() and np.isfinite(f16.predict(series)).all()
    with torch.no_grad():
        x = torch.from_numpy(np.stack([s[:200] for s in series[:4]]))
        feats = {}
        for p, fit in fits.items():
            with autocast(p, "cpu"):
                feats[p] = fit.net_.features(x).float()
    if mode == "linear_probe":  # nothing trained in the encoder: same weights, features within bf16
        assert rel(feats["bf16-mixed"], feats["32-true"]) <= VALUE_RTOL
    assert fits["bf16-mixed"].precision_ == "bf16-mixed" and fits["32-true"].precision_ == "32-true"


def test_bf16_embedding_estimator_matches_fp32(runs, hcp_corpus):
    model = load_pretrained(runs["axial", "32-true"] / "model")
    series = read_model_input(hcp_corpus, range(3), model_scaler(model, hcp_corpus))
    e = {p: BrainLMEmbedding(model, pooling="both", precision=p).fit(series).transform(series) for p in PRECISIONS}
    assert rel(e["bf16-mixed"], e["32-true"]) <= VALUE_RTOL
    with pytest.raises(BrainLMInputError, match="expected one of"):
        BrainLMEmbedding(model, precision="fp8").fit(series)


# -- embeddings: one file and a sharded dataset ------------------------------------------------------
def test_bf16_embeddings_from_the_command_and_a_dataset_record_their_precision(runs, hcp_corpus, tmp_path, capsys):
    from brainlm.tasks.embed import read_embeddings

    ck = runs["axial", "32-true"] / "model"
    for p in PRECISIONS:
        assert main(["embed", str(ck), hcp_corpus.path, "--out", str(tmp_path / f"{p}.parquet"),
                     "--precision", p]) == 0
    e32, e16 = (pd.read_parquet(tmp_path / f"{p}.parquet").filter(regex="^(cls|mean)_").to_numpy() for p in PRECISIONS)
    assert rel(e16, e32) <= VALUE_RTOL and not np.array_equal(e16, e32)
    folder = tmp_path / "bank"
    assert main(["embed", str(ck), hcp_corpus.path, "--out", str(folder), "--precision", "bf16-mixed",
                 "--shard-size", "3", "--quiet"]) == 0
    manifest = json.loads((folder / "_embeddings.json").read_text())
    assert manifest["settings"]["precision"] == "bf16-mixed"
    pd.testing.assert_frame_equal(read_embeddings(folder), pd.read_parquet(tmp_path / "bf16-mixed.parquet"))
    # A process that would compute its shards in another precision is refused, not mixed in.
    (folder / "part-00001.parquet").unlink()
    manifest.pop("complete", None)
    (folder / "_embeddings.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["embed", str(ck), hcp_corpus.path, "--out", str(folder), "--shard-size", "3", "--quiet"]) == 2
    assert "precision" in capsys.readouterr().err


def test_non_finite_embeddings_are_never_written():
    from brainlm.tasks.embed import embedding_rows

    cls = torch.zeros(2, 4)
    cls[1, 2] = float("nan")
    with pytest.raises(BrainLMInputError, match="NaN or infinite.*nothing is written"):
        embedding_rows({"recording_id": "sub-01"}, np.array([0, 200]), cls, torch.zeros(2, 4))
