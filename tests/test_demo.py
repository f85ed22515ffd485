"""`brainlm demo --quick`: every step of the main job on the embedded data."""

import json
from dataclasses import replace

import numpy as np
import torch

from brainlm.demo import DemoSettings, command_line as _command


def test_demo_runs_every_step_on_embedded_data(demo_run):
    summary = json.loads((demo_run / "summary.json").read_text())
    hcp = summary["corpora"]["hcp7_aal2"]
    assert hcp["recordings"] == 7 and hcp["atlas"]["parcels"] == 94
    assert {k: v["subjects"] for k, v in hcp["splits"].items()} == {"train": 5, "val": 1, "test": 1}
    s100 = summary["corpora"]["schaefer100"]
    assert s100["source_trs_s"] == [2.0] and s100["tr_s"] == 0.72 and s100["n_trs"]["min"] == 403
    cohort = summary["corpora"]["synthetic_cohort"]
    assert cohort["subjects"] == 24 and {"age", "group", "null_score"} <= set(cohort["phenotypes"])
    assert len(cohort["source_trs_s"]) > 1 and cohort["tr_s"] == 0.72  # sites resampled to one TR
    pre = summary["pretraining"]
    assert pre["epochs"] == 2 and set(pre["validation"]) >= {"val/masked_mse", "val/r2"}
    assert pre["embeddings_deterministic"] and pre["embedded_recordings"] == 7
    assert (demo_run / "run-small" / "model" / "model.safetensors").is_file()
    assert pre["preset"] == "small" and pre["masking"] == {"strategy": "random", "ratio": 0.2, "future_trs": 20,
                                                          "ratio_max": 0.9}
    # The recipe for fresh cohorts (hcp-fresh's): per-recording scaling, the hybrid with prior
    # dropout, site augmentations; results say it is a hybrid and the forecast has its carry.
    pre_settings = summary["settings"]["pretraining"]
    assert pre_settings["spatial_prior"] and pre_settings["model_overrides"] == {"prior_dropout": 0.5}
    assert pre_settings["augment"] == ["reverse", "gain", "noise"]
    assert hcp["contract"]["scaling"] == summary["corpora"]["synthetic_cohort"]["contract"]["scaling"] == "recording"
    recon_labels = json.loads((demo_run / "results" / "reconstruction" / "reconstruction.json").read_text())
    assert recon_labels["method_labels"]["brainlm"].startswith("BrainLM hybrid")
    assert "ridge VAR carry" in json.dumps(summary["forecasting"])
    recon = json.loads((demo_run / "results" / "reconstruction" / "reconstruction.json").read_text())
    assert recon["split"] == "test" and recon["recordings"] == 1 and recon["windows"] == 6
    ex = np.load(demo_run / "results" / "reconstruction_example.npz")
    assert ex["target"].shape == ex["prediction"].shape == ex["mask"].shape == (200, 94)
    assert abs(ex["mask"].mean() - 0.75) < 0.01
    # On the unseen atlas the spatial comparators are the distance model of the pretraining
    # covariance and the in-recording fit, and the model is compared with the best of all.
    s100_recon = json.loads((demo_run / "results" / "reconstruction-schaefer100" / "reconstruction.json").read_text())
    assert {"spatial_distance", "spatial_in_recording"} <= set(s100_recon["methods"])
    zero_shot = summary["reconstruction"]["zero_shot_schaefer100"]
    assert set(zero_shot["spatial_r2_at_0.75"]) == {"spatial_distance", "spatial_in_recording"}
    # Measured on the real run: in-recording 0.73, distance model 0.62, zero 0.00, interpolation -0.64.
    assert zero_shot["best_baseline"] in ("spatial_distance", "spatial_in_recording")
    assert set(summary["step_seconds"]) >= {"data", "pretraining", "reconstruction", "prediction",
                                            "forecasting", "networks", "attention"}
    assert (demo_run / "report.html").is_file()
    assert summary["command"] == "brainlm demo --quick"
    # Tasks write numbers; the demo drew each step's figures from them into its results folder.
    for folder, png in (("forecasting", "forecast_error.png"), ("networks-hcp7_aal2", "networks_predicted.png"),
                        ("networks-schaefer100", "cls_attention_map.png"), ("attention", "t_map.png")):
        assert (demo_run / "results" / folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    training = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU threads"
    assert training in summary["device"] and training in pre["device"]


def test_summary_names_the_command_that_reproduces_the_run():
    assert _command(DemoSettings()) == "brainlm demo"
    assert _command(replace(DemoSettings(), epochs=7)) == "brainlm demo --epochs 7"
    assert _command(replace(DemoSettings.quick(), epochs=3)) == "brainlm demo --quick --epochs 3"
    custom = replace(DemoSettings(), cohort_subjects=11)
    assert _command(custom).startswith("brainlm.demo.run_demo(") and "cohort_subjects=11" in _command(custom)
