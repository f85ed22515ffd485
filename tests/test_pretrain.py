"""Pretraining, checkpoints, embeddings and DDP, on the embedded real HCP data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainlm import BrainLMInputError
from brainlm.commands import main
from brainlm.data.contract import PreprocessingContract
from brainlm.data.prepare import PrepareSettings, prepare_corpus
from brainlm.data.samples import load_schaefer100_rest
from brainlm.model import MaskSpec
from brainlm.checkpoints.folder import load_pretrained, record_digests
from brainlm.tasks.inference import reconstruct
from brainlm.tasks.model_input import preprocess
from brainlm.model.precision import resolve_precision
from brainlm.train.trainer import BestEpoch, TrainerLogs, TrainerSettings, make_trainer

HERE = Path(__file__).parent


def test_tiny_pretraining_beats_trivial_baselines(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    last = metrics["metrics_last_epoch"]
    best = metrics["best_val_masked_mse"]
    baseline = min(last["val/baseline_zero_mse"], last["val/baseline_mean_mse"])
    assert best < 0.85 * baseline, metrics
    assert last["val/r2"] > 0.1
    # The fixture leaves accelerator and precision on "auto": bf16-mixed where the device that
    # trains multiplies bfloat16 natively (tests/test_precision.py).
    expected = resolve_precision("auto", "auto", width=96)
    assert metrics["parameters"]["total"] == 401_908 and metrics["precision"] == expected
    log = pd.read_csv(trained / "logs" / "csv" / "version_0" / "metrics.csv")
    assert log["val/masked_mse"].dropna().iloc[-1] < log["val/masked_mse"].dropna().iloc[0]
    assert any((trained / "logs" / "tensorboard" / "version_0").glob("events.out.tfevents.*"))


def test_checkpoint_reloads_exactly_and_carries_its_contract(trained, hcp, hcp_corpus):
    model = load_pretrained(trained / "model")
    assert sorted(p.name for p in (trained / "model").iterdir()) == [
        ".brainlm-output.json", "atlas.json", "config.json", "contract.json", "digests.json", "model.safetensors",
        "spatial_baseline.safetensors"]
    assert model.contract == hcp_corpus.contract and model.atlas.matches(hcp_corpus.atlas)
    # The checkpoint's preprocessing is exactly what the corpus stored for this recording.
    row = int(np.flatnonzero(hcp_corpus.manifest["subject"] == hcp[2].subject)[0])
    np.testing.assert_allclose(preprocess(model, hcp[2]), hcp_corpus.read(row), atol=1e-4)
    rec = reconstruct(model, hcp[2], MaskSpec(ratio=0.75), seed=3)
    assert rec["prediction"].shape == rec["target"].shape == rec["mask"].shape == (6, 200, 94)
    m = rec["mask"]
    assert m.mean() == pytest.approx(0.75, abs=0.01)
    err = ((rec["prediction"] - rec["target"]) ** 2)[m].mean()
    assert err < (rec["target"][m] ** 2).mean()  # beats predicting zero on a training subject
    again = reconstruct(model, hcp[2], MaskSpec(ratio=0.75), seed=3)
    np.testing.assert_array_equal(again["prediction"], rec["prediction"])


def test_embeddings_are_deterministic(trained, hcp_corpus, tmp_path, hcp):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert main(["embed", str(trained / "model"), hcp_corpus.path, "--out", str(a)]) == 0
    assert main(["embed", str(trained / "model"), hcp_corpus.path, "--out", str(b)]) == 0
    da, db = pd.read_parquet(a), pd.read_parquet(b)
    pd.testing.assert_frame_equal(da, db, check_exact=True)
    assert len(da) == 7 and da["n_windows"].tolist() == [6] * 7
    assert sum(c.startswith("cls_") for c in da) == 96 and sum(c.startswith("mean_") for c in da) == 96
    # Files give the same embeddings as the corpus they were prepared into.
    folder = tmp_path / "files"
    folder.mkdir()
    np.save(folder / f"sub-{hcp[0].subject}_bold.npy", hcp[0].timeseries)
    df = __import__("brainlm.tasks.embed", fromlist=["embed"]).embed(
        trained / "model", [folder], per_window=True, tr=0.72)
    assert len(df) == 6 and df["start_tr"].tolist() == [0, 200, 400, 600, 800, 1000]
    row = da[da["subject"] == hcp[0].subject]
    np.testing.assert_allclose(df.filter(like="cls_").mean().to_numpy(),
                               row.filter(like="cls_").to_numpy()[0], atol=1e-4)


def test_atlas_and_contract_mismatches_are_errors(trained, tmp_path, capsys):
    rest = load_schaefer100_rest()
    other = prepare_corpus([rest], tmp_path / "s100",
                           PrepareSettings.of(atlas=rest.atlas, min_trs=100,
                                              contract=PreprocessingContract(target_tr=0.72, percent_signal_change=True)))
    assert main(["embed", str(trained / "model"), other.path, "--out", str(tmp_path / "e.parquet")]) == 2
    assert "pretrained on 'aal2'" in capsys.readouterr().err
    assert main(["embed", str(trained / "model"), other.path, "--out", str(tmp_path / "e.parquet"),
                 "--transfer-atlas"]) == 2
    assert "cleaned differently" in capsys.readouterr().err  # target_tr 0.72 vs None
    assert not (tmp_path / "e.parquet").exists()


def test_damaged_checkpoints_are_refused(trained, tmp_path):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(trained / "model", ck)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(BrainLMInputError, match="truncated or altered"):
        load_pretrained(ck)
    (ck / "model.safetensors").write_bytes(data)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model"]["depth"] = 4
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BrainLMInputError, match="config.json was altered"):  # digests.json (issue 18)
        load_pretrained(ck)
    del cfg["digests"]  # removing the digests does not make an edit load (issue 25)
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BrainLMInputError, match="names no digests.json"):
        load_pretrained(ck)
    (ck / "digests.json").unlink()  # vouched for as an old checkpoint: the weights still decide
    record_digests(ck)
    with pytest.raises(BrainLMInputError, match=r"do not match the architecture.*missing \['blocks.3"):
        load_pretrained(ck)
    (ck / "config.json").unlink()
    with pytest.raises(BrainLMInputError, match="lacks config.json"):
        load_pretrained(ck)


def test_masking_defaults_come_from_the_preset_and_explicit_ratios_win():
    from brainlm.model.masking import MaskSpec
    from brainlm.train.pretrain import PretrainSettings, check_settings

    assert PretrainSettings("c", preset="small").mask_spec() == MaskSpec("random", 0.2, 20, 0.9)
    assert PretrainSettings("c", preset="tiny").mask_spec() == MaskSpec("random", 0.75, 20, None)
    assert PretrainSettings("c", preset="small", mask_ratio=0.5).mask_spec() == MaskSpec("random", 0.5)
    assert PretrainSettings("c", preset="tiny", mask_ratio_max=0.9).mask_spec() == MaskSpec("random", 0.75, 20, 0.9)
    with pytest.raises(BrainLMInputError, match="--mask-ratio-max 0.5 is below the smallest mask ratio 0.75"):
        check_settings(PretrainSettings("c", preset="tiny", mask_ratio_max=0.5))
    with pytest.raises(BrainLMInputError, match="--mask-ratio 1.5"):
        check_settings(PretrainSettings("c", preset="small", mask_ratio=1.5))


def test_resume_and_run_folder_checks(hcp_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["pretrain", hcp_corpus.path, "--out", str(run), "--crops-per-recording", "2", "--quiet"]
    assert main(base + ["--epochs", "1"]) == 0
    assert main(base + ["--epochs", "1"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(base + ["--epochs", "2", "--resume", "--mask-ratio", "0.5", "--preset", "13m"]) == 2
    err = capsys.readouterr().err
    assert "mask_ratio: None -> 0.5" in err and "preset: 'small' -> '13m'" in err
    assert main(base + ["--epochs", "2", "--resume"]) == 0
    logs = sorted((run / "logs" / "csv").glob("version_*/metrics.csv"))
    assert len(logs) == 2  # the resumed run logs next to the first, never over it
    epochs = pd.concat([pd.read_csv(f) for f in logs])["epoch"].dropna().unique().tolist()
    assert sorted(epochs) == [0, 1]
    assert main(["pretrain", hcp_corpus.path, "--out", str(tmp_path / "r2"), "--window-trs", "2000",
                 "--quiet"]) == 2
    assert "window of 2000 TRs is longer than every recording of split 'train'" in capsys.readouterr().err


def test_ddp_on_two_cpu_processes(hcp_corpus, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    proc = subprocess.run([sys.executable, str(HERE / "ddp_pretrain_script.py"), hcp_corpus.path,
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["seen"] and r1["seen"] and r0["seen"] != r1["seen"]   # each rank its own data
    assert r0["weights"] == r1["weights"]                           # gradients were all-reduced


def test_progress_off_a_terminal_is_one_line_per_epoch(hcp_corpus, tmp_path, capsys):
    # pytest's captured stdout is not a terminal: what a CI log or `brainlm demo > log` sees.
    run = tmp_path / "run"
    assert main(["pretrain", hcp_corpus.path, "--out", str(run), "--crops-per-recording", "2",
                 "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "\r" not in out  # no bar redrawn over itself
    lines = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(" · ")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "min left" in lines[0] and "min left" not in lines[1]
    logged = pd.read_csv(next((run / "logs" / "csv").glob("version_*/metrics.csv")))
    last_val = logged["val/masked_mse"].dropna().iloc[-1]
    assert f"val masked MSE {last_val:.4f}" in lines[1]
    # A resumed run counts on from where it stopped.
    assert main(["pretrain", hcp_corpus.path, "--out", str(run), "--crops-per-recording", "2",
                 "--epochs", "4", "--resume"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(" · ")[0] for ln in lines] == ["epoch 3/4", "epoch 4/4"]


def test_precision_follows_the_device_that_trains():
    # "auto" is settled by the device that trains (tests/test_precision.py has the rules).
    assert resolve_precision("auto", "auto") == resolve_precision("auto", "cuda" if torch.cuda.is_available() else "cpu")
    setup = make_trainer(TrainerSettings(1, accelerator="cpu"), silent=True, width=96)
    assert setup.precision == resolve_precision("auto", "cpu", width=96) and setup.best is None
    assert make_trainer(TrainerSettings(1, accelerator="cpu", precision="32-true"), silent=True).precision == "32-true"
    assert not setup.trainer.loggers and setup.trainer.checkpoint_callback is None  # writes nothing
    with pytest.raises(BrainLMInputError, match="monitored metric"):
        BestEpoch(None, keep="memory")
    with pytest.raises(BrainLMInputError, match="checkpoint_dir"):
        BestEpoch("val/loss", keep="checkpoint")


@pytest.mark.parametrize("fields, message", [
    ({"max_epochs": 0}, "max_epochs 0; expected a positive whole number"),
    ({"max_epochs": 1.5}, "max_epochs 1.5; expected a positive whole number"),
    ({"devices": 0}, "devices 0; expected a positive whole number"),
    ({"devices": []}, r"devices \[\]; expected a positive count, 'auto' or a list of device indices"),
    ({"num_nodes": 0}, "num_nodes 0; expected a positive whole number"),
    ({"accumulate": 0}, "accumulate 0; expected a positive whole number"),
    ({"precision": "fp8"}, "precision 'fp8'; expected one of auto, 32-true"),
    ({"gradient_clip": -1.0}, r"gradient_clip -1.0; expected a number >= 0"),
    ({"accelerator": ""}, "accelerator ''; expected a name"),
])
def test_trainer_settings_name_the_bad_field(fields, message):
    with pytest.raises(BrainLMInputError, match=message):
        TrainerSettings(**{"max_epochs": 1, **fields})


def test_trainer_settings_come_from_the_run_settings_and_build_the_trainer(tmp_path):
    from brainlm.train.pretrain import PretrainSettings

    s = PretrainSettings("c", epochs=3, accumulate=2, clip=0.5, accelerator="cpu", precision="32-true")
    assert s.trainer_settings() == TrainerSettings(3, accelerator="cpu", precision="32-true", gradient_clip=0.5,
                                                   accumulate=2)
    assert TrainerSettings.on_device(2, "cpu") == TrainerSettings(2, accelerator="cpu", devices=1)
    assert TrainerSettings.on_device(2, "cuda:1") == TrainerSettings(2, accelerator="gpu", devices=[1])
    setup = make_trainer(s.trainer_settings(), best=BestEpoch("val/loss", keep="memory", patience=2),
                         logs=TrainerLogs(tmp_path, ("csv",), name="fit"), silent=True)
    trainer = setup.trainer
    assert (trainer.max_epochs, trainer.accumulate_grad_batches, trainer.gradient_clip_val) == (3, 2, 0.5)
    assert setup.best.patience == 2 and [type(lg).__name__ for lg in trainer.loggers] == ["CSVLogger"]
    with pytest.raises(BrainLMInputError, match="unknown logger"):
        TrainerLogs(tmp_path, ("wandb",))
    with pytest.raises(BrainLMInputError, match="patience and count_start stop early in memory only"):
        BestEpoch("val/loss", keep="checkpoint", checkpoint_dir=tmp_path, patience=3)
    with pytest.raises(BrainLMInputError, match="best 'disk'"):
        BestEpoch("val/loss", keep="disk")


def test_the_fresh_cohort_recipe_needs_a_per_recording_corpus_and_runs_from_the_cli(hcp, hcp_corpus, tmp_path, capsys):
    from brainlm.data.atlas import load_atlas
    from brainlm.train.pretrain import FRESH_COHORT, PretrainSettings

    with pytest.raises(BrainLMInputError, match="scaled with 'recording'.*field 'scaling' is 'pooled'.*--scaling recording"):
        PretrainSettings.recipe("fresh-cohort", hcp_corpus.path)
    assert main(["pretrain", hcp_corpus.path, "--recipe", "fresh-cohort", "--out", str(tmp_path / "no"),
                 "--quiet"]) == 2
    assert "--scaling recording" in capsys.readouterr().err and not (tmp_path / "no").exists()
    with pytest.raises(BrainLMInputError, match="recipe 'fresh'; expected one of"):
        PretrainSettings.recipe("fresh", hcp_corpus.path)
    corpus = prepare_corpus(hcp[:4], tmp_path / "c",
                            PrepareSettings.of(atlas=load_atlas("aal2"), min_trs=200,
                                               contract=PreprocessingContract(percent_signal_change=True, scaling="recording")))
    s = PretrainSettings.recipe("fresh-cohort", corpus.path, epochs=1, model_overrides={"window_trs": 200})
    assert s.spatial_prior and s.augment == FRESH_COHORT.settings["augment"] and s.preset == "small"
    assert s.model_overrides == {"prior_dropout": 0.5, "window_trs": 200}
    assert FRESH_COHORT.settings["model_overrides"] == {"prior_dropout": 0.5}  # the recipe itself is not changed
    run = tmp_path / "run"
    assert main(["pretrain", corpus.path, "--recipe", "fresh-cohort", "--augment", "gain", "--epochs", "1",
                 "--crops-per-recording", "2", "--out", str(run), "--quiet"]) == 0
    saved = json.loads((run / "run_config.json").read_text())
    assert saved["spatial_prior"] and saved["augment"] == ["gain"] and saved["model_overrides"] == {"prior_dropout": 0.5}
    model = load_pretrained(run / "model")
    assert model.config.spatial_prior_parcels == 94 and model.config.prior_dropout == 0.5
