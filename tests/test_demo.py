import json

from brainlm.cli import main


def test_demo_runs_on_embedded_data(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--jobs", "1", "--epochs", "2"]) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    hcp = summary["corpora"]["hcp7_aal2"]
    assert hcp["recordings"] == 7 and hcp["atlas"]["parcels"] == 94
    assert {k: v["subjects"] for k, v in hcp["splits"].items()} == {"train": 5, "val": 1, "test": 1}
    s100 = summary["corpora"]["schaefer100"]
    assert s100["source_trs_s"] == [2.0] and s100["tr_s"] == 0.72 and s100["n_trs"]["min"] == 403
    assert summary["windows"]["val_tiles"] == 6  # 1200 TRs -> 6 tiles of 200 for the val subject
    pre = summary["pretraining"]
    assert pre["epochs"] == 2 and set(pre["validation"]) >= {"val/masked_mse", "val/r2"}
    assert summary["embeddings"] == {"recordings": 7, "deterministic": True}
    assert (tmp_path / "demo" / "run-tiny" / "model" / "model.safetensors").is_file()
    assert "summary.json" in capsys.readouterr().out
